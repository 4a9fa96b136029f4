// The embedded KV's thread starts here: it registers tsx, then loads sqlite-worker.ts
// (Node 20 gives a worker neither the process's loaders nor an --import of its own).
import { register } from 'tsx/esm/api';

register();
await import('./sqlite-worker.ts');
