/**
 * Idempotency keys: callers pass `string | Uint8Array`; the core works on bytes.
 * @module
 */

/** An idempotency key as callers give it. */
export type IdempotencyKey = string | Uint8Array;

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** The bytes of a key: UTF-8 for strings, the bytes themselves otherwise. */
export function keyBytes(key: IdempotencyKey): Uint8Array {
  return typeof key === 'string' ? utf8.encode(key) : key;
}

/** True when both keys hold the same bytes. */
export function sameKey(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/** A key for messages: its text when it is valid UTF-8, else `0x` + hex. */
export function describeKey(key: Uint8Array): string {
  try {
    return strictUtf8.decode(key);
  } catch {
    return `0x${Buffer.from(key).toString('hex')}`;
  }
}

/** Lower-case hex of some bytes. */
export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

/** Bytes of a lower-case or upper-case hex string. */
export function fromHex(hex: string): Uint8Array {
  return new Uint8Array(Buffer.from(hex, 'hex'));
}
