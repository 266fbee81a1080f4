import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { EventJsonFillSettings } from './history/json-cache.js';
import type { WebhookSettings } from './webhooks/worker.js';

/** The project's root folder (where package.json lives). */
export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** A non-negative integer setting from the environment, or the fallback when unset or empty. */
export function intFromEnv(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name} must be a non-negative integer, got "${raw}"`);
  return value;
}

/** Every setting of the service, read once from the environment, with documented defaults. */
export interface Config {
  port: number;
  host: string;
  /** Unset: start the embedded PostgreSQL 16 under dataDir. */
  databaseUrl: string | undefined;
  dataDir: string;
  embeddedPgPort: number;
  /** Seed the default dataset when the database has no users (make run sets it). */
  seedWhenEmpty: boolean;
  /** Largest accepted request body. */
  bodyLimitBytes: number;
  poolSize: number;
  statementTimeoutMs: number;
  /** Longest a request waits for a free database connection before answering 503. */
  connectionTimeoutMs: number;
  logLevel: string;
  /** Longest a client may take to send a whole request (Node's server.requestTimeout): slow senders are cut off. */
  requestTimeoutMs: number;
  /** Accepted API keys (API_KEYS, comma-separated); empty: one generated key kept under dataDir. */
  apiKeys: string[];
  /** How long shutdown waits for in-flight requests. */
  shutdownGraceMs: number;
  /** How long shutdown keeps serving with /readyz failing before it stops accepting (for load balancers). */
  shutdownDelayMs: number;
  /** Longest a request waits for another one holding its Idempotency-Key before answering 409. */
  idempotencyWaitMs: number;
  /** Worker processes serving the port (node:cluster); 1 serves from this process. */
  webConcurrency: number;
  /** Prometheus metrics collected and served at GET /metrics; METRICS=0 turns both off (no /metrics route). */
  metrics: boolean;
  /** GET /metrics without an API key (METRICS_PUBLIC=1); otherwise it needs one, as /api does. */
  metricsPublic: boolean;
  /** Requests per API key per minute, shared by every process and instance; 0 turns rate limiting off. */
  rateLimitPerMinute: number;
  /** The rate limit's fixed window: each window allows rateLimitPerMinute * windowSeconds / 60 requests. */
  rateLimitWindowSeconds: number;
  /** Origins allowed to call /api and read the spec from a browser (CORS_ORIGINS, comma-separated); empty: no CORS headers. */
  corsOrigins: string[];
  /** Webhook deliveries (WEBHOOK_*; docs/webhooks.md). */
  webhooks: WebhookSettings;
  /** The events' JSON cache filler (EVENT_JSON_FILL_MS, EVENT_JSON_FILL_BATCH; docs/events.md). */
  eventJsonFill: EventJsonFillSettings;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  return {
    port: intFromEnv(env, 'PORT', 3000),
    host: env.HOST || '127.0.0.1',
    databaseUrl: env.DATABASE_URL || undefined,
    dataDir: path.resolve(projectRoot, env.DATA_DIR || '.data'),
    embeddedPgPort: intFromEnv(env, 'PG_PORT', 54329),
    seedWhenEmpty: env.SEED_WHEN_EMPTY === '1',
    bodyLimitBytes: intFromEnv(env, 'BODY_LIMIT_BYTES', 64 * 1024),
    poolSize: intFromEnv(env, 'PG_POOL_SIZE', 10),
    statementTimeoutMs: intFromEnv(env, 'STATEMENT_TIMEOUT_MS', 10_000),
    connectionTimeoutMs: intFromEnv(env, 'PG_CONNECTION_TIMEOUT_MS', 5_000),
    logLevel: env.LOG_LEVEL || 'info',
    requestTimeoutMs: intFromEnv(env, 'REQUEST_TIMEOUT_MS', 30_000),
    shutdownGraceMs: intFromEnv(env, 'SHUTDOWN_GRACE_MS', 10_000),
    shutdownDelayMs: intFromEnv(env, 'SHUTDOWN_DELAY_MS', 0),
    idempotencyWaitMs: intFromEnv(env, 'IDEMPOTENCY_WAIT_MS', 10_000),
    webConcurrency: Math.max(1, intFromEnv(env, 'WEB_CONCURRENCY', 1)),
    apiKeys: (env.API_KEYS ?? '')
      .split(',')
      .map((k) => k.trim())
      .filter(Boolean),
    metrics: env.METRICS !== '0',
    metricsPublic: env.METRICS_PUBLIC === '1',
    rateLimitPerMinute: intFromEnv(env, 'RATE_LIMIT_PER_MINUTE', 600),
    rateLimitWindowSeconds: intFromEnv(env, 'RATE_LIMIT_WINDOW_SECONDS', 60),
    corsOrigins: (env.CORS_ORIGINS ?? '')
      .split(',')
      .map((o) => o.trim())
      .filter(Boolean),
    webhooks: {
      allowPrivate: env.WEBHOOK_ALLOW_PRIVATE === '1',
      timeoutMs: Math.max(1, intFromEnv(env, 'WEBHOOK_TIMEOUT_MS', 10_000)),
      retryBaseMs: intFromEnv(env, 'WEBHOOK_RETRY_BASE_MS', 5_000),
      retryMaxMs: intFromEnv(env, 'WEBHOOK_RETRY_MAX_MS', 3_600_000),
      retryForMs: intFromEnv(env, 'WEBHOOK_RETRY_FOR_MS', 86_400_000),
      concurrency: Math.max(1, intFromEnv(env, 'WEBHOOK_CONCURRENCY', 8)),
      pollMs: Math.max(1, intFromEnv(env, 'WEBHOOK_POLL_MS', 100)),
    },
    eventJsonFill: {
      intervalMs: intFromEnv(env, 'EVENT_JSON_FILL_MS', 200),
      batch: Math.max(1, intFromEnv(env, 'EVENT_JSON_FILL_BATCH', 5_000)),
    },
  };
}
