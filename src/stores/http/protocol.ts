/**
 * The wire side of the `http` participant protocol (DESIGN.md "The http participant
 * protocol"): one bounded POST to a participant, its answer sorted into what the protocol
 * distinguishes (accepted, refused, anything else), and the backoff between retries.
 * @module
 */
import { errorMessage } from '../../errors/core.ts';

/** The three endpoints of a participant. */
export type ParticipantPhase = 'try' | 'confirm' | 'cancel';

/** How one call ended, as the protocol sorts answers. */
export type CallOutcome =
  | { readonly kind: 'accepted'; readonly status: number }
  /** A `4xx`: at try only 409/422 are refusals; at confirm and cancel every 4xx is. */
  | { readonly kind: 'refused'; readonly status: number; readonly problem: Readonly<Record<string, unknown>> }
  /** Timeout, connection error, `5xx`, a redirect or any other answer: a passing failure. */
  | { readonly kind: 'failed'; readonly reason: string };

/** The most of a participant's answer commitd reads (its problem detail); the rest is dropped. */
const MAX_ANSWER_BYTES = 16 * 1024;

/** Problem members of a participant's answer kept for the worker, each shortened. */
const PROBLEM_MEMBERS = ['type', 'title', 'detail', 'code'] as const;
const MAX_MEMBER_CHARS = 1000;

/** What every call needs besides its body. */
export interface CallTarget {
  readonly baseUrl: URL;
  /** The operator's extra headers (never the protocol's own two). */
  readonly headers: Readonly<Record<string, string>>;
  readonly timeoutMs: number;
}

/** `{baseUrl}/{phase}`, keeping a path prefix of the base URL. */
export function endpointOf(baseUrl: URL, phase: ParticipantPhase): URL {
  const base = new URL(baseUrl.href);
  base.pathname = `${base.pathname.replace(/\/+$/, '')}/${phase}`;
  return base;
}

/**
 * One POST to a participant, bounded by `timeoutMs` from the request to the end of the
 * answer's body. Redirects are not followed: the protocol names exactly one URL per phase.
 */
export async function callParticipant(target: CallTarget, phase: ParticipantPhase, idempotencyKey: string, body: unknown): Promise<CallOutcome> {
  const signal = AbortSignal.timeout(target.timeoutMs);
  let response: Response;
  try {
    response = await fetch(endpointOf(target.baseUrl, phase), {
      method: 'POST',
      headers: { ...target.headers, 'content-type': 'application/json', 'idempotency-key': idempotencyKey },
      body: JSON.stringify(body),
      redirect: 'manual',
      signal,
    });
  } catch (err) {
    return { kind: 'failed', reason: signal.aborted ? `no answer within ${target.timeoutMs} ms` : errorMessage(err) };
  }
  let text: string;
  try {
    text = await readBounded(response);
  } catch (err) {
    return { kind: 'failed', reason: signal.aborted ? `no complete answer within ${target.timeoutMs} ms` : errorMessage(err) };
  }
  const { status } = response;
  if (status >= 200 && status < 300) return { kind: 'accepted', status };
  const refusal = phase === 'try' ? status === 409 || status === 422 : status >= 400 && status < 500;
  if (refusal) return { kind: 'refused', status, problem: problemOf(status, text) };
  return { kind: 'failed', reason: `answered ${status}${text ? `: ${text.slice(0, 200)}` : ''}` };
}

/** The answer's body as text, at most {@link MAX_ANSWER_BYTES}; a longer one is cut (and its stream cancelled). */
async function readBounded(response: Response): Promise<string> {
  if (!response.body) return '';
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.byteLength;
    if (size >= MAX_ANSWER_BYTES) {
      await reader.cancel();
      break;
    }
  }
  return Buffer.concat(chunks).subarray(0, MAX_ANSWER_BYTES).toString('utf8');
}

/** The participant's problem detail (RFC 9457 members, shortened) plus its status; a non-JSON answer becomes `detail`. */
function problemOf(status: number, text: string): Record<string, unknown> {
  const problem: Record<string, unknown> = { status };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) {
    for (const member of PROBLEM_MEMBERS) {
      const value = (parsed as Record<string, unknown>)[member];
      if (typeof value === 'string') problem[member] = value.slice(0, MAX_MEMBER_CHARS);
    }
  } else if (text.trim()) {
    problem.detail = text.trim().slice(0, MAX_MEMBER_CHARS);
  }
  return problem;
}

/** Exponential backoff with full jitter: the wait before retry `n` (from 1), at most `maxMs`. */
export function backoffMs(n: number, baseMs: number, maxMs: number, dice: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(n - 1, 20));
  return Math.round(ceiling / 2 + (dice() * ceiling) / 2);
}

/** Resolves after `ms` (a timer that does not keep the process alive). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
