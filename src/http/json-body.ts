/**
 * Parses a request body as JSON that commitd keeps exactly or refuses (DESIGN.md "The
 * boundary", point 4): the bytes must be UTF-8, every number must survive as a double,
 * no object may name a member twice, and no member may reach a prototype.
 * @module
 */
import { parse, type NumberNode, type ValueNode } from '@humanwhocodes/momoa';

/** Why a body is refused: a sentence that says what is wrong and where. */
export class JsonBodyError extends Error {
  constructor(detail: string) {
    super(detail);
    this.name = 'JsonBodyError';
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A lone surrogate: with the `u` flag a well-formed pair is one code point and does not match. */
const LONE_SURROGATE = /\p{Cs}/u;

/** A JSON number's text (or a double's, which may spell its exponent with `+`). */
const NUMBER_TEXT = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/;

/**
 * The plain value of `body` (`undefined` for an empty one); throws {@link JsonBodyError}.
 * momoa's AST shows every member, duplicates included, and each number's source text,
 * so one parse and one walk check everything. That AST costs more than the rest of a
 * one-shot's request handling together, so a body that a scan shows to be plain takes
 * the native parser instead ({@link quickValue}); the walk decides, and words, the rest.
 */
export function parseJsonBody(body: Buffer): unknown {
  if (body.length === 0) return undefined;
  // RFC 8259 §8.1: a BOM must not be sent; refusing it beats guessing what it means.
  if (body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf)
    throw new JsonBodyError('the body starts with a UTF-8 byte order mark (EF BB BF), which JSON must not carry');
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    throw new JsonBodyError(`the body is not valid UTF-8: the bytes from offset ${invalidUtf8Offset(body)} are not a UTF-8 character`);
  }
  const quick = quickValue(text);
  if (quick !== undefined) return quick;
  try {
    return plainValue(parse(text, { mode: 'json' }).body, text, '$');
  } catch (err) {
    if (err instanceof JsonBodyError) throw err;
    if (err instanceof RangeError) throw new JsonBodyError('the body is nested too deeply to parse');
    throw new JsonBodyError(`the body is not valid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** Deeper bodies are left to the walk, whose own limit decides (and words) what is too deep. */
const MAX_QUICK_DEPTH = 64;

/** An escape that may spell a lone surrogate (or part of a pair): the walk decides which. */
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;

/**
 * `JSON.parse(text)` when the text certainly passes every rule of {@link plainValue}: valid
 * JSON, no member name twice in an object, no `__proto__` or `constructor` member, no
 * escape that may be a surrogate, every number kept exactly, nesting within
 * {@link MAX_QUICK_DEPTH}. `undefined` (which JSON never parses to) otherwise, refused or
 * not: the walk then gives the answer it always gave. The scan relies on the text being
 * valid JSON, so it runs after the native parser accepted it.
 */
function quickValue(text: string): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  return isPlainJson(text) ? value : undefined;
}

/** The scan of {@link quickValue}; `text` is valid JSON. */
function isPlainJson(text: string): boolean {
  // Per open container, innermost last: an object's member names so far, or null for an array.
  const containers: (Set<string> | null)[] = [];
  let expectName = false;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code === 0x22 /* " */) {
      const end = closingQuote(text, i);
      const raw = text.slice(i + 1, end);
      const escaped = raw.includes('\\');
      if (escaped && SURROGATE_ESCAPE.test(raw)) return false;
      if (expectName) {
        const name = escaped ? (JSON.parse(text.slice(i, end + 1)) as string) : raw;
        const names = containers[containers.length - 1] as Set<string>;
        if (names.has(name) || name === '__proto__' || name === 'constructor') return false;
        names.add(name);
        expectName = false;
      }
      i = end;
    } else if (code === 0x7b /* { */ || code === 0x5b /* [ */) {
      if (containers.length === MAX_QUICK_DEPTH) return false;
      containers.push(code === 0x7b ? new Set() : null);
      expectName = code === 0x7b;
    } else if (code === 0x7d /* } */ || code === 0x5d /* ] */) {
      containers.pop();
    } else if (code === 0x2c /* , */) {
      expectName = containers[containers.length - 1] != null;
    } else if (code === 0x2d /* - */ || (code >= 0x30 && code <= 0x39)) {
      let end = i + 1;
      let integer = true;
      for (; end < text.length; end++) {
        const next = text.charCodeAt(end);
        if (next >= 0x30 && next <= 0x39) continue;
        if (next !== 0x2e /* . */ && next !== 0x65 /* e */ && next !== 0x45 /* E */ && next !== 0x2b /* + */ && next !== 0x2d) break;
        integer = false;
      }
      // Up to 15 digits an integer is always a double exactly.
      if (!integer || end - i > 15) {
        const source = text.slice(i, end);
        if (!keptExactly(source, Number(source))) return false;
      }
      i = end - 1;
    }
    // Whitespace, `:` and the letters of true, false and null need nothing.
  }
  return true;
}

/** The index of the quote that closes the string opening at `open`: the first not escaped. */
function closingQuote(text: string, open: number): number {
  let end = text.indexOf('"', open + 1);
  for (;;) {
    let backslashes = 0;
    while (text.charCodeAt(end - 1 - backslashes) === 0x5c /* \ */) backslashes++;
    if (backslashes % 2 === 0) return end;
    end = text.indexOf('"', end + 1);
  }
}

function plainValue(node: ValueNode, text: string, path: string): unknown {
  switch (node.type) {
    case 'Object': {
      const object: Record<string, unknown> = {};
      const seen = new Set<string>();
      for (const member of node.members) {
        const name = member.name.type === 'String' ? member.name.value : member.name.name;
        const memberPath = pathTo(path, name);
        if (seen.has(name))
          throw new JsonBodyError(`the body names the member ${memberPath} twice (${at(member.name.loc.start)}); commitd refuses duplicate member names`);
        seen.add(name);
        if (name === '__proto__') throw new JsonBodyError('the body has a member named __proto__, which commitd refuses');
        if (
          name === 'constructor' &&
          member.value.type === 'Object' &&
          member.value.members.some((inner) => inner.name.type === 'String' && inner.name.value === 'prototype')
        )
          throw new JsonBodyError('the body has a member named constructor.prototype, which commitd refuses');
        checkString(name, memberPath, member.name.loc.start, 'member name');
        object[name] = plainValue(member.value, text, memberPath);
      }
      return object;
    }
    case 'Array':
      return node.elements.map((element, index) => plainValue(element.value, text, `${path}[${index}]`));
    case 'String':
      checkString(node.value, path, node.loc.start, 'string');
      return node.value;
    case 'Number':
      return exactNumber(node, text, path);
    case 'Boolean':
      return node.value;
    case 'Null':
      return null;
    default:
      // NaN and Infinity exist in momoa's JSON5 mode only.
      throw new JsonBodyError(`the body has a value JSON does not allow at ${path}`);
  }
}

/** A lone surrogate (from a `\uD800` escape) would be stored as U+FFFD: refused instead. */
function checkString(value: string, path: string, start: { line: number; column: number }, what: string): void {
  if (LONE_SURROGATE.test(value))
    throw new JsonBodyError(`the ${what} at ${path} (${at(start)}) has an unpaired UTF-16 surrogate escape, which no store can keep`);
}

/**
 * The rule: nothing is silently rounded. A number is kept when the double it parses to
 * prints back (shortest round-trip text, `String(n)`) to the same decimal value as the
 * text sent, compared normalised (sign, significant digits, exponent): `0.1`, `1e3`,
 * `12.50`, `-0` and 2^53 are kept; 2^53+1, `1.00000000000000000001`, `1e400` (overflow)
 * and `1e-400` (underflow) are refused. So is a double's full binary expansion written
 * out beyond its shortest text, though exact: clients send the shortest text.
 */
function exactNumber(node: NumberNode, text: string, path: string): number {
  const source = text.slice(node.loc.start.offset, node.loc.end.offset);
  const value = node.value;
  if (!keptExactly(source, value))
    throw new JsonBodyError(
      `the number ${source} at ${path} (${at(node.loc.start)}) cannot be kept exactly as a double (it would become ${String(value)}); send it as a string`,
    );
  return value;
}

/** The rule of {@link exactNumber}: `value`, parsed from `source`, prints back to the same decimal value. */
function keptExactly(source: string, value: number): boolean {
  return Number.isFinite(value) && (value === 0 ? !/[1-9]/.test(source.replace(/[eE].*$/, '')) : normalised(String(value)) === normalised(source));
}

/** `sign digits e exponent` with no leading or trailing zeros in the digits: `12.50` and `1.25e1` both give `+125e-1`. */
function normalised(numberText: string): string {
  const match = NUMBER_TEXT.exec(numberText);
  if (match === null) return numberText;
  const [, sign = '', whole = '', fraction = '', exponent = '0'] = match;
  let digits = `${whole}${fraction}`.replace(/^0+/, '');
  let scale = Number(exponent) - fraction.length;
  const trailing = /0+$/.exec(digits)?.[0].length ?? 0;
  digits = digits.slice(0, digits.length - trailing);
  scale += trailing;
  return `${sign === '-' ? '-' : '+'}${digits}e${scale}`;
}

/** `$.changes.main[0]`, or `$["odd name"]` when the name is not an identifier. */
function pathTo(path: string, name: string): string {
  return /^[A-Za-z_$][\w$]*$/.test(name) ? `${path}.${name}` : `${path}[${JSON.stringify(name)}]`;
}

function at(location: { line: number; column: number }): string {
  return `line ${location.line}, column ${location.column}`;
}

/**
 * The offset where the first malformed UTF-8 sequence starts (error path only): the
 * longest prefix a streaming decoder accepts ends inside or just before it, and the
 * sequence starts where the last complete character before that ends.
 */
function invalidUtf8Offset(body: Buffer): number {
  let good = 0;
  let bad = body.length;
  while (bad - good > 1) {
    const middle = (good + bad) >>> 1;
    if (decodes(body.subarray(0, middle), true)) good = middle;
    else bad = middle;
  }
  let start = good;
  while (start > 0 && !decodes(body.subarray(0, start), false)) start--;
  return start;
}

function decodes(bytes: Uint8Array, stream: boolean): boolean {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes, { stream });
    return true;
  } catch {
    return false;
  }
}
