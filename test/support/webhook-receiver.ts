/** A webhook receiver for tests: an HTTP server on 127.0.0.1 that records every request it gets. */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Received {
  /** webhook-id etc., lower-case names. */
  headers: Record<string, string>;
  body: string;
  /** performance.now() when the whole body was in. */
  at: number;
  path: string;
}

/** How to answer one request: a status, or never (the connection is left hanging until closed). */
export type Answer = number | 'hang';

export interface Receiver {
  url: string;
  port: number;
  received: Received[];
  /** Decides each answer (default 200); sees the request before it is recorded. */
  answer: (request: Received) => Answer;
  /** Requests left hanging right now. */
  hanging(): number;
  close(): Promise<void>;
}

export async function startReceiver(): Promise<Receiver> {
  const hangingResponses = new Set<http.ServerResponse>();
  const receiver: Receiver = {
    url: '',
    port: 0,
    received: [],
    answer: () => 200,
    hanging: () => hangingResponses.size,
    close: async () => {
      for (const response of hangingResponses) response.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(request.headers)) if (typeof value === 'string') headers[name] = value;
      const got: Received = { headers, body: Buffer.concat(chunks).toString('utf8'), at: performance.now(), path: request.url ?? '/' };
      const answer = receiver.answer(got);
      receiver.received.push(got);
      if (answer === 'hang') {
        hangingResponses.add(response);
        response.on('close', () => hangingResponses.delete(response));
        return;
      }
      response.writeHead(answer, { 'content-type': 'text/plain' });
      response.end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  receiver.port = (server.address() as AddressInfo).port;
  receiver.url = `http://127.0.0.1:${receiver.port}`;
  return receiver;
}

/** The event ids of the requests received, in order of receipt. */
export const eventIdsOf = (received: Received[]): number[] => received.map((r) => (JSON.parse(r.body) as { id: number }).id);
