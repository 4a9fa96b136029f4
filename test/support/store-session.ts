/** Driving one store's session directly, as the coordinator would: begin, apply, commit. */
import { keyBytes } from '../../src/core/keys.ts';
import type { Store, StoreSession, StoreSessionContext } from '../../src/stores/api.ts';

/** A session on `store` under `key`, begun, with `changes` applied. */
export async function begun<Change>(
  store: Store<Change>,
  key: string,
  changes: readonly Change[],
  context?: StoreSessionContext,
): Promise<StoreSession<Change>> {
  const session = store.session(context);
  await session.begin(keyBytes(key));
  for (const change of changes) await session.apply(change);
  return session;
}

/** Begins, applies `changes` and commits; returns the store ID. */
export async function commitOnce<Change>(store: Store<Change>, key: string, changes: readonly Change[], context?: StoreSessionContext): Promise<Uint8Array> {
  return (await begun(store, key, changes, context)).commit(keyBytes(key));
}
