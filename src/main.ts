/**
 * The server entry: read the config, wire and start commitd, listen, and shut down cleanly
 * on SIGTERM/SIGINT. `npm start` runs this file.
 * @module
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { pino, type Logger } from 'pino';
import { CommitdError } from './errors/core.ts';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { createService, type Service } from './service.ts';

/** Exit codes: 2 for configuration a human must fix, 1 for anything else that stops start-up. */
const EXIT_CONFIG = 2;

/** Secrets never reach the log: pino removes them by path. */
const REDACT = [
  'token',
  'config.token',
  'req.headers.authorization',
  'headers.authorization',
  'options.connectionString',
  'options.url',
  '*.connectionString',
  'stores[*].options.connectionString',
  'stores[*].options.url',
];

/**
 * pino-pretty is a devDependency: after `npm ci --omit=dev` (the Docker image) it is absent,
 * and pino would fail to load its transport. Pretty output only on a TTY and only when it
 * resolves; JSON lines otherwise.
 */
function prettyTransportAvailable(): boolean {
  try {
    createRequire(import.meta.url).resolve('pino-pretty');
    return true;
  } catch {
    return false;
  }
}

function createLogger(config: Pick<Config, 'logLevel'>): Logger {
  const pretty = process.stdout.isTTY && prettyTransportAvailable() ? { transport: { target: 'pino-pretty', options: { colorize: true } } } : {};
  return pino({ name: 'commitd', level: config.logLevel, redact: { paths: REDACT, censor: '[redacted]' }, ...pretty });
}

/** Starts commitd; resolves once it listens. Exits the process on fatal start-up errors. */
export async function main(env: NodeJS.ProcessEnv = process.env): Promise<Service> {
  let config: Config;
  try {
    config = loadConfig(env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`commitd: ${err.message}\n`);
    process.exit(EXIT_CONFIG);
  }
  const logger = createLogger(config);
  let service: Service;
  try {
    service = await createService(config, logger);
    await service.app.listen({ host: config.host, port: config.port });
  } catch (err) {
    const message = err instanceof Error ? err.message.split('\n')[0] : String(err);
    logger.fatal({ err }, 'commitd could not start');
    process.stderr.write(`commitd: ${message}\n`);
    const configurable = err instanceof CommitdError && err.code !== 'UNAVAILABLE';
    process.exit(configurable ? EXIT_CONFIG : 1);
  }
  logger.info(
    {
      url: `http://${config.host}:${config.port}`,
      kv: config.etcd ? 'etcd' : 'embedded',
      instance: service.coordinator.instanceId,
      stores: service.registry.list(),
    },
    'commitd listening',
  );
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down: no new requests, cancelling open sessions');
    service.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  followLauncher(env, () => stop('launcher exited'));
  return service;
}

/** How often a commitd started through npm checks that its launcher still runs. */
const LAUNCHER_POLL_MS = 500;

/**
 * `npx commitd serve` (and any npm script without `exec`) runs commitd under `sh -c`, and
 * dash does not pass SIGTERM on to its child: npm forwards the signal to the shell, the shell
 * dies, and commitd would be left running as an orphan. So when npm started this process
 * (`npm_command` is set), its parent going away counts as SIGTERM.
 */
function followLauncher(env: NodeJS.ProcessEnv, onGone: () => void): void {
  if (env.npm_command === undefined) return;
  const launcher = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === launcher) return;
    clearInterval(timer);
    onGone();
  }, LAUNCHER_POLL_MS);
  timer.unref();
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
