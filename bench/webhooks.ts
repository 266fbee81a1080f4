/**
 * Webhook delivery latency (issue 12): a receiver in the bench process on 127.0.0.1, one endpoint
 * registered through the API for subscription.created, and POST /api/subscriptions sent from here
 * at a steady rate. Each delivery's latency is its receipt time minus the event's occurred_at (the
 * writing transaction's now(), which is a little before its commit: the figure errs long), and,
 * beside it, minus the time the producing POST's answer was in (which is after the commit: it errs
 * short). Every event of the run must be received exactly once with a valid signature; the endpoint
 * is deleted at the end of the run, so later comparisons deliver nothing.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook } from 'standardwebhooks';
import { median } from './rounds.js';
import type { LoadResult } from './load.js';
import type { DriverResult } from './rounds.js';
import { requestHeaders } from './servers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/**
 * Wall-clock ms, read from the system clock at each call as PostgreSQL's now() is. Not
 * performance.timeOrigin + performance.now(): that is monotonic from the process start and missed
 * a step of this VM's clock in the run of 04:39 (every occurred_at-to-receipt figure was -64.5 s).
 */
const wallNow = () => Date.now();

interface Receipt {
  at: number;
  headers: Record<string, string>;
  body: string;
}

async function startReceiver(): Promise<{ url: string; receipts: Receipt[]; close: () => Promise<void> }> {
  const receipts: Receipt[] = [];
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const at = wallNow();
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(request.headers)) if (typeof value === 'string') headers[name] = value;
      receipts.push({ at, headers, body: Buffer.concat(chunks).toString('utf8') });
      response.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    receipts,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const percentile = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]! : Number.NaN);

export interface WebhookRunOptions {
  serverUrl: string;
  /** POSTs per second, sent at even intervals whatever the answers' speed. */
  rate: number;
  seconds: number;
  /** How long to wait after the last answer for deliveries still to come. */
  drainSeconds: number;
  /** The body of one POST /api/subscriptions. */
  body: () => string;
  /** Register an endpoint and receive (else the same POSTs with no endpoint, for the CPU they cost alone). */
  deliver: boolean;
}

type Api = (method: string, p: string, body?: unknown) => Promise<Response>;

interface Answer {
  ok: boolean;
  status: number;
  ms: number;
  /** Wall-clock time when the whole answer was in. */
  answeredAt: number;
  /** The subscription created. */
  id?: string;
  bytes: number;
}

/** One POST every 1000/rate ms for the run's seconds, each awaited on its own (a slow answer does not delay the next). */
async function produce(options: WebhookRunOptions, api: Api): Promise<{ done: Answer[]; load: LoadResult }> {
  const { rate, seconds } = options;
  const total = Math.max(1, Math.round(rate * seconds));
  const answers: Array<Promise<Answer>> = [];
  const started = performance.now();
  for (let i = 0; i < total; i++) {
    await sleep(Math.max(0, started + (i * 1000) / rate - performance.now()));
    const sent = performance.now();
    answers.push(
      api('POST', '/api/subscriptions', options.body()).then(
        async (r) => {
          const text = await r.text();
          const answeredAt = wallNow();
          const id = r.status === 201 ? String((JSON.parse(text) as { id: number }).id) : undefined;
          return { ok: r.status === 201, status: r.status, ms: performance.now() - sent, answeredAt, ...(id ? { id } : {}), bytes: text.length };
        },
        () => ({ ok: false, status: 0, ms: performance.now() - sent, answeredAt: wallNow(), bytes: 0 }),
      ),
    );
  }
  const done = await Promise.all(answers);
  const producedSeconds = (performance.now() - started) / 1000;
  const latencies = done.map((d) => d.ms).sort((a, b) => a - b);
  return {
    done,
    load: {
      requests: done.length,
      seconds: producedSeconds,
      requestsPerSecond: done.length / producedSeconds,
      p50Ms: median(latencies),
      p99Ms: percentile(latencies, 99),
      meanMs: latencies.reduce((a, b) => a + b, 0) / latencies.length,
      maxMs: latencies.at(-1) ?? 0,
      errors: done.filter((d) => !d.ok).length,
      errorDetail: { status: done.filter((d) => d.status !== 0 && !d.ok).length, connect: done.filter((d) => d.status === 0).length },
      bytesPerRequest: done.reduce((n, d) => n + d.bytes, 0) / done.length,
    },
  };
}

/**
 * One run: with `deliver`, an endpoint and its receiver, the POSTs, every delivery awaited and
 * checked; without, the same POSTs at the same rate and nothing registered (what the deliveries
 * cost is the difference in CPU per request between the two).
 */
export async function webhookRun(options: WebhookRunOptions): Promise<DriverResult> {
  const { serverUrl } = options;
  const api: Api = (method, p, body) =>
    fetch(`${serverUrl}${p}`, { method, headers: requestHeaders, ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }) });
  if (!options.deliver) {
    const { done, load } = await produce(options, api);
    await sleep(300); // as the delivering side waits for a duplicate
    return { ...load, figures: { events: done.filter((d) => d.ok).length } };
  }
  const receiver = await startReceiver();
  const registered = await api('POST', '/api/webhook-endpoints', {
    url: `${receiver.url}/bench`,
    event_types: ['subscription.created'],
    description: 'make bench: delivery latency',
  });
  if (registered.status !== 201) {
    await receiver.close();
    throw new Error(`registering the bench's webhook endpoint: ${registered.status} ${await registered.text()} (the service needs WEBHOOK_ALLOW_PRIVATE=1)`);
  }
  const endpoint = (await registered.json()) as { id: number; secret: string };
  try {
    return await measure(options, endpoint.secret, receiver, api);
  } finally {
    const deletedStatus = (await api('DELETE', `/api/webhook-endpoints/${endpoint.id}`)).status;
    await receiver.close();
    if (deletedStatus !== 204)
      console.error(`# deleting the bench's webhook endpoint ${endpoint.id} answered ${deletedStatus}: it stays registered, and the worker keeps trying a closed receiver`);
  }
}

async function measure(options: WebhookRunOptions, secret: string, receiver: { receipts: Receipt[] }, api: Api): Promise<DriverResult> {
  const { drainSeconds } = options;
  const { done, load } = await produce(options, api);
  const created = new Map(done.filter((d) => d.id !== undefined).map((d) => [d.id!, d]));

  // Deliveries still on their way: until every created subscription's event is in, or the drain time is up.
  const objectIdOf = (r: Receipt) => (JSON.parse(r.body) as { object_id: string }).object_id;
  const drainUntil = performance.now() + drainSeconds * 1000;
  while (performance.now() < drainUntil && new Set(receiver.receipts.map(objectIdOf).filter((id) => created.has(id))).size < created.size) await sleep(20);
  await sleep(300); // a duplicate would come right after
  const receipts = [...receiver.receipts];

  const webhook = new Webhook(secret);
  const seen = new Map<string, number>();
  const fromCommit: number[] = [];
  const fromAnswer: number[] = [];
  let badSignatures = 0;
  let foreign = 0;
  for (const r of receipts) {
    try {
      webhook.verify(r.body, r.headers);
    } catch {
      badSignatures++;
    }
    const event = JSON.parse(r.body) as { type: string; occurred_at: string; object_id: string };
    const answer = created.get(event.object_id);
    if (event.type !== 'subscription.created' || !answer) {
      foreign++;
      continue;
    }
    const times = (seen.get(event.object_id) ?? 0) + 1;
    seen.set(event.object_id, times);
    if (times > 1) continue;
    fromCommit.push(r.at - Date.parse(event.occurred_at));
    fromAnswer.push(r.at - answer.answeredAt);
  }
  fromCommit.sort((a, b) => a - b);
  fromAnswer.sort((a, b) => a - b);
  return {
    ...load,
    figures: {
      events: created.size,
      deliveryP50Ms: median(fromCommit),
      deliveryP99Ms: percentile(fromCommit, 99),
      deliveryMaxMs: fromCommit.at(-1) ?? Number.NaN,
      afterAnswerP50Ms: median(fromAnswer),
      lost: [...created.keys()].filter((id) => !seen.has(id)).length,
      duplicates: [...seen.values()].reduce((n, times) => n + times - 1, 0),
      badSignatures,
      foreign,
    },
  };
}
