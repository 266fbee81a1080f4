/**
 * One delivery attempt: a POST signed as the Standard Webhooks specification says, bounded by a
 * timeout from the start (name resolution included) to the end of the answer, to a checked address.
 */
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { Webhook } from 'standardwebhooks';
import { checkedAddresses, checkedLookup, RefusedTargetError, type TargetPolicy } from './targets.js';

export interface AttemptResult {
  /** A 2xx answer came in time. */
  succeeded: boolean;
  statusCode: number | null;
  durationMs: number;
  error: string | null;
}

export interface Message {
  url: string;
  secret: string;
  /** webhook-id: the same for every attempt of a delivery. */
  id: string;
  /** The exact bytes sent and signed. */
  payload: string;
}

/** The receiver's answer is read (and discarded) up to this size; more is not waited for. */
const MAX_ANSWER_BYTES = 64 * 1024;

export class WebhookSender {
  private readonly agents: { http: http.Agent; https: https.Agent };
  private readonly lookup: net.LookupFunction;

  constructor(
    private readonly policy: TargetPolicy,
    private readonly timeoutMs: number,
    maxSockets: number,
  ) {
    this.lookup = checkedLookup(policy);
    // Kept-alive sockets per receiver: a reused socket is connected to an address checked when it opened.
    const options = { keepAlive: true, maxSockets, lookup: this.lookup, timeout: timeoutMs };
    this.agents = { http: new http.Agent(options), https: new https.Agent(options) };
  }

  /** Headers for one attempt; the timestamp is the attempt's (a receiver rejects old ones). */
  static headers(message: Pick<Message, 'id' | 'secret' | 'payload'>, at: Date): Record<string, string> {
    return {
      'content-type': 'application/json',
      'user-agent': 'subscriptions-api-webhooks/1',
      'webhook-id': message.id,
      'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
      'webhook-signature': new Webhook(message.secret).sign(message.id, at, message.payload),
    };
  }

  async send(message: Message): Promise<AttemptResult> {
    const started = performance.now();
    const done = (statusCode: number | null, error: string | null): AttemptResult => ({
      succeeded: statusCode !== null && statusCode >= 200 && statusCode < 300,
      statusCode,
      durationMs: Math.round(performance.now() - started),
      error,
    });
    let url: URL;
    try {
      url = new URL(message.url);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new RefusedTargetError('must be an http or https URL');
      // An IP literal is connected to without a lookup: check it here (names are checked in the lookup).
      if (net.isIP(url.hostname.replace(/^\[|\]$/g, ''))) await checkedAddresses(url.hostname, this.policy);
    } catch (err) {
      return done(null, `refused target: ${(err as Error).message}`);
    }
    const body = Buffer.from(message.payload);
    const headers = { ...WebhookSender.headers(message, new Date()), 'content-length': String(body.length) };
    const client = url.protocol === 'https:' ? https : http;
    const agent = url.protocol === 'https:' ? this.agents.https : this.agents.http;
    return new Promise<AttemptResult>((resolve) => {
      let settled = false;
      const finish = (statusCode: number | null, error: string | null) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(done(statusCode, error));
      };
      const request = client.request(url, { method: 'POST', headers, agent }, (response) => {
        let received = 0;
        response.on('data', (chunk: Buffer) => {
          received += chunk.length;
          // The status is what counts; a receiver that keeps talking is not waited for.
          if (received > MAX_ANSWER_BYTES) {
            finish(response.statusCode ?? null, null);
            response.destroy();
          }
        });
        response.on('end', () => finish(response.statusCode ?? null, null));
        response.on('error', (err) => finish(response.statusCode ?? null, `answer cut off: ${err.message}`));
      });
      const timer = setTimeout(() => {
        finish(null, `timeout after ${this.timeoutMs} ms`);
        request.destroy();
      }, this.timeoutMs);
      request.on('error', (err: NodeJS.ErrnoException) => {
        const refused = err instanceof RefusedTargetError || err.name === 'RefusedTargetError';
        finish(null, refused ? `refused target: ${err.message}` : `${err.code ?? 'error'}: ${err.message}`);
      });
      request.end(body);
    });
  }

  close(): void {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }
}
