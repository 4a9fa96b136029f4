/**
 * The `commitd` executable (run through `bin/commitd.mjs`): wires `run` to the process.
 * @module
 */
import { run } from './run.ts';

process.exitCode = await run(process.argv.slice(2), {
  env: process.env,
  stdout: (text) => process.stdout.write(`${text}\n`),
  stderr: (text) => process.stderr.write(`${text}\n`),
  // Loaded only here, so operator commands do not pay for the server's dependencies.
  serve: async () => {
    await (await import('../main.ts')).main();
  },
});
