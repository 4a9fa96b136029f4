/**
 * The server entry: read the config, wire and start commitd, listen, and shut down cleanly
 * on SIGTERM/SIGINT. `npm start` runs this file.
 * @module
 */
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

function createLogger(config: Pick<Config, 'logLevel'>): Logger {
  const pretty = process.stdout.isTTY ? { transport: { target: 'pino-pretty', options: { colorize: true } } } : {};
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
  return service;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
