/**
 * NATS subjects for the `nats` store type: which subjects a change may publish to (a
 * literal subject, no wildcards), which belong to a stream (its subject filters, with NATS
 * wildcards `*` and `>`), and which are commitd's or the server's own.
 * @module
 */

/** Why a subject cannot be published to, or undefined when it can. */
export function publishSubjectProblem(subject: string): string | undefined {
  if (subject.length === 0) return 'it is empty';
  // Space, tab, CR, LF and other controls end a subject on the wire; DEL is not printable.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this refuses
  if (/[\u0000-\u0020\u007f]/.test(subject)) return 'it contains whitespace or a control character';
  const tokens = subject.split('.');
  if (tokens.some((token) => token.length === 0)) return 'it has an empty token (a leading, trailing or doubled ".")';
  if (tokens.some((token) => token === '*' || token === '>')) return 'it contains a wildcard ("*" or ">"): a message is published to one literal subject';
  return undefined;
}

/**
 * True when the literal `subject` matches the filter `pattern`: `*` matches exactly one
 * token, `>` (only as the last token) one or more.
 */
export function subjectMatches(pattern: string, subject: string): boolean {
  const want = pattern.split('.');
  const have = subject.split('.');
  for (let i = 0; i < want.length; i++) {
    const token = want[i];
    if (token === '>') return i === want.length - 1 && have.length > i;
    if (i >= have.length) return false;
    if (token !== '*' && token !== have[i]) return false;
  }
  return want.length === have.length;
}

/** The subjects a change may never publish to, and the rule each breaks (DESIGN "The boundary", point 1). */
export function reservedSubjectRule(subject: string, markerBucket: string): { rule: string; what: string } | undefined {
  if (subject.startsWith(`$KV.${markerBucket}.`)) return { rule: 'marker-bucket', what: `the marker bucket ${markerBucket} ($KV.${markerBucket}.>)` };
  // `$JS.`, `$KV.`, `$O.`, `$SYS.`, …: the server's and JetStream's own APIs and buckets; `_INBOX.`: replies.
  if (subject.startsWith('$') || subject.startsWith('_INBOX.')) {
    return { rule: 'reserved-subject', what: 'a subject reserved for NATS itself ($JS.*, $KV.*, $SYS.*, any $-subject, _INBOX.*)' };
  }
  return undefined;
}
