/**
 * A minimal keep-alive HTTP client for the load: `node:http` with a keep-alive agent of
 * one socket per in-flight session, so connection set-up is paid once per worker, not per
 * request. (undici is not resolvable in this repo; global fetch would be undici with
 * keep-alive too, but adds stream and Headers machinery to every request.)
 * @module
 */
import http from 'node:http';

export interface JsonReply {
  readonly status: number;
  readonly body: string;
}

/** A keep-alive client for one commitd. */
export class KeepAliveClient {
  readonly #agent: http.Agent;
  readonly #host: string;
  readonly #port: number;

  constructor(url: string, maxSockets: number) {
    const parsed = new URL(url);
    this.#host = parsed.hostname;
    this.#port = Number(parsed.port);
    this.#agent = new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets });
  }

  /** POSTs `body` as JSON; resolves with the status and the raw reply body. */
  post(path: string, body: unknown): Promise<JsonReply> {
    const payload = JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const request = http.request(
        {
          agent: this.#agent,
          host: this.#host,
          port: this.#port,
          method: 'POST',
          path,
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        },
        (response) => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
          response.on('error', reject);
        },
      );
      request.on('error', reject);
      request.end(payload);
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}
