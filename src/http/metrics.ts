import cluster from 'node:cluster';
import type Router from '@koa/router';
import type pg from 'pg';
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { ApiKeys, unauthorized } from './auth.js';
import type { ContractOperation } from './contract.js';
import { unavailable } from './problem.js';
import type { AppContext, AppMiddleware, RequestState } from './state.js';

/** What a worker asks the primary for, and the primary answers, over the cluster's IPC channel. */
const AGGREGATE_REQUEST = 'subscriptions-api:metrics-request';
const AGGREGATE_RESPONSE = 'subscriptions-api:metrics-response';
/** prom-client's own limit for collecting from every worker is 5 s; ours covers it and the round trip. */
const AGGREGATE_TIMEOUT_MS = 6_000;

interface AggregateRequest {
  type: typeof AGGREGATE_REQUEST;
  id: number;
}
interface AggregateResponse {
  type: typeof AGGREGATE_RESPONSE;
  id: number;
  text?: string;
  error?: string;
}

/**
 * The service's Prometheus metrics, on a registry of its own (several services can run in one
 * process, as the tests do). Requests are labelled by the spec's operationId, not the raw path,
 * so label sets stay bounded whatever clients send; routes outside the spec by their route name,
 * and anything no route matched as `unmatched`.
 */
export class ServiceMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'operation' | 'status'>;
  private readonly durations: Histogram<'operation' | 'status'>;
  private readonly inFlight: Gauge;
  private readonly replays: Counter;
  /** "GET /api/users/:id" -> getUser, from the spec's operations (HEAD is answered by the GET route). */
  private readonly operationByRoute = new Map<string, string>();

  constructor(operations: ContractOperation[], pool: pg.Pool) {
    for (const op of operations) this.operationByRoute.set(`${op.method} ${op.routePath}`, op.operationId);
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'http_requests_total',
      help: 'HTTP requests answered, by operation (the spec operationId, or the route name outside /api) and status code.',
      labelNames: ['operation', 'status'],
      registers,
    });
    this.durations = new Histogram({
      name: 'http_request_duration_seconds',
      help: 'Time from receiving a request to its answer being ready, by operation and status code.',
      labelNames: ['operation', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.inFlight = new Gauge({ name: 'http_requests_in_flight', help: 'Requests being served right now.', registers });
    this.replays = new Counter({
      name: 'idempotency_replays_total',
      help: 'POST requests answered from a stored response because their Idempotency-Key was seen before.',
      registers,
    });
    // Read from the pool when scraped; summed over workers in a cluster.
    new Gauge({
      name: 'db_pool_connections',
      help: 'Connections the database pool holds (idle and in use).',
      registers,
      collect() {
        this.set(pool.totalCount);
      },
    });
    new Gauge({
      name: 'db_pool_idle_connections',
      help: 'Connections of the pool that are idle.',
      registers,
      collect() {
        this.set(pool.idleCount);
      },
    });
    new Gauge({
      name: 'db_pool_waiting_requests',
      help: 'Queries waiting for a free connection of the pool.',
      registers,
      collect() {
        this.set(pool.waitingCount);
      },
    });
    collectDefaultMetrics({ register: this.registry });
    if (cluster.isWorker) {
      // The primary's AggregatorRegistry collects this registry from every worker.
      AggregatorRegistry.setRegistries([this.registry]);
      // Constructing one installs prom-client's worker-side listener that answers the primary.
      new AggregatorRegistry();
    }
  }

  /** For Idempotency's onReplay. */
  readonly countReplay = () => this.replays.inc();

  /**
   * The request's operation label, read when the answer is ready: the route @koa/router chose, or
   * for a request answered before routing (a 401, a preflight) the route it would have reached.
   */
  private operationOf(ctx: AppContext, router: Router<RequestState>): string {
    let route = (ctx as AppContext & { _matchedRoute?: string | RegExp })._matchedRoute;
    if (route === undefined)
      route = router
        .match(ctx.path, ctx.method)
        .pathAndMethod.filter((layer) => layer.methods.length > 0)
        .at(-1)?.path;
    if (typeof route !== 'string') return 'unmatched';
    const method = ctx.method === 'HEAD' ? 'GET' : ctx.method;
    const operationId = this.operationByRoute.get(`${method} ${route}`);
    if (operationId) return operationId;
    // A path of the spec with a method it does not have (405), or any other /api path.
    if (route === '/api' || route.startsWith('/api/')) return 'unmatched';
    return route.replace(/^\//, '') || 'root';
  }

  /**
   * The outermost middleware: it sees the status the client gets, problems included (the request
   * context below it turns every error into one).
   */
  middleware(router: Router<RequestState>): AppMiddleware {
    return async (ctx, next) => {
      const started = process.hrtime.bigint();
      this.inFlight.inc();
      try {
        await next();
      } finally {
        this.inFlight.dec();
        const labels = { operation: this.operationOf(ctx, router), status: String(ctx.status) };
        this.requests.inc(labels);
        this.durations.observe(labels, Number(process.hrtime.bigint() - started) / 1e9);
      }
    };
  }

  /** GET /metrics: this process's metrics, or in a cluster worker every worker's, aggregated by the primary. */
  route(apiKeys: ApiKeys, isPublic: boolean): AppMiddleware {
    return async (ctx) => {
      if (!isPublic && apiKeys.identify(ApiKeys.fromHeader(ctx.get('Authorization'))) === undefined) throw unauthorized();
      const text = cluster.isWorker
        ? await askPrimary().catch((err: unknown) => {
            ctx.state.log.warn({ err }, 'metrics aggregation failed');
            throw unavailable('the metrics of the other worker processes could not be collected; retry');
          })
        : await this.registry.metrics();
      ctx.set('Cache-Control', 'no-store');
      ctx.type = this.registry.contentType;
      ctx.body = text;
    };
  }
}

let nextRequestId = 0;
const pending = new Map<number, { resolve: (text: string) => void; reject: (err: Error) => void }>();
let listening = false;

/**
 * A worker's scrape: the worker asks the primary, which asks every worker (this one included)
 * for its registry through prom-client's AggregatorRegistry and answers the aggregate. So any
 * worker the shared port hands a scrape to answers for all of them, at the one URL.
 */
function askPrimary(): Promise<string> {
  if (!listening) {
    listening = true;
    process.on('message', (message: AggregateResponse) => {
      if (message?.type !== AGGREGATE_RESPONSE) return;
      const waiter = pending.get(message.id);
      pending.delete(message.id);
      if (message.error !== undefined) waiter?.reject(new Error(`metrics from the workers: ${message.error}`));
      else waiter?.resolve(message.text ?? '');
    });
  }
  const id = nextRequestId++;
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      pending.delete(id);
      reject(new Error('the primary did not answer the metrics request in time'));
    }, AGGREGATE_TIMEOUT_MS);
    pending.set(id, {
      resolve: (text) => (clearTimeout(timer), resolve(text)),
      reject: (err) => (clearTimeout(timer), reject(err)),
    });
    process.send!({ type: AGGREGATE_REQUEST, id } satisfies AggregateRequest);
  });
}

/**
 * The primary's side (main.ts, WEB_CONCURRENCY > 1): answers a worker's metrics request with the
 * sum over all workers (prom-client's per-metric aggregators: counters and histograms summed,
 * gauges summed unless a default metric says otherwise).
 */
export function serveClusterMetrics(): void {
  const aggregator = new AggregatorRegistry();
  cluster.on('message', (worker, message: AggregateRequest) => {
    if (message?.type !== AGGREGATE_REQUEST) return;
    const reply = (answer: Omit<AggregateResponse, 'type' | 'id'>) => {
      if (worker.isConnected()) worker.send({ type: AGGREGATE_RESPONSE, id: message.id, ...answer } satisfies AggregateResponse);
    };
    aggregator.clusterMetrics().then(
      (text) => reply({ text }),
      (err: unknown) => reply({ error: err instanceof Error ? err.message : String(err) }),
    );
  });
}
