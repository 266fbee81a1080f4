import type { Server } from 'node:http';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import type { Config } from './config.js';
import { assertPostgres16, openDatabase, type DatabaseHandle } from './db/database.js';
import { ensureDatabase, startEmbeddedPostgres, type RunningPostgres } from './db/embedded.js';
import { migrateToLatest } from './db/migrate.js';
import { seedIfEmpty, seedParametersFromEnv } from './db/seed.js';
import { createApp } from './http/app.js';
import { ApiKeys, loadOrCreateKeyFile } from './http/auth.js';
import { pruneIdempotencyKeys } from './http/idempotency.js';
import { CursorCodec } from './http/cursor.js';
import { WebhookWorker } from './webhooks/worker.js';
import { EventJsonFiller } from './history/json-cache.js';

export const EMBEDDED_DATABASE = 'subscriptions';

/** Server settings for the embedded cluster: sized for a 500k-5M row dataset on a small machine. */
export const embeddedSettings = {
  shared_buffers: '512MB',
  work_mem: '16MB',
  maintenance_work_mem: '512MB',
  max_wal_size: '4GB',
  checkpoint_timeout: '15min',
  // Nothing replicates from the embedded cluster: with minimal WAL, tables truncated and indexes built
  // in the same transaction (the seed) skip WAL entirely. Measured: the 500k seed about 15% faster.
  wal_level: 'minimal',
  max_wal_senders: 0,
};

export interface RunningService {
  url: string;
  databaseUrl: string;
  postgresVersion: string;
  /** The key from DATA_DIR/api-key when API_KEYS was not given. */
  generatedApiKey: string | undefined;
  database: DatabaseHandle;
  log: Logger;
  stop(): Promise<void>;
}

/** Where the database comes from: DATABASE_URL, or the embedded PostgreSQL 16 under DATA_DIR. */
export async function provideDatabase(config: Config, log: Logger): Promise<{ url: string; embedded?: RunningPostgres }> {
  if (config.databaseUrl) return { url: config.databaseUrl };
  const embedded = await startEmbeddedPostgres({
    dataDir: path.join(config.dataDir, 'pg16'),
    port: config.embeddedPgPort,
    settings: embeddedSettings,
    log: (line) => log.debug({ postgres: line }),
  });
  await ensureDatabase(embedded.adminUrl, EMBEDDED_DATABASE);
  return { url: embedded.urlFor(EMBEDDED_DATABASE), embedded };
}

/** Checks the server is PostgreSQL 16+, applies pending migrations, seeds when asked and empty. */
async function readyDatabase(database: DatabaseHandle, config: Config, log: Logger): Promise<string> {
  const postgresVersion = await assertPostgres16(database.pool);
  const applied = await migrateToLatest(database.db);
  log.info({ applied }, applied.length ? `applied migrations: ${applied.join(', ')}` : 'database schema is up to date');
  if (config.seedWhenEmpty) await seedIfEmpty(database.pool, seedParametersFromEnv(), (line) => log.info(line));
  return postgresVersion;
}

export interface PreparedDatabase {
  url: string;
  postgresVersion: string;
  embedded?: RunningPostgres;
}

/**
 * What the primary of several workers does once, before forking them (main.ts): provides the
 * database (the embedded one stays the primary's), migrates and seeds it.
 */
export async function prepareDatabase(config: Config, log: Logger): Promise<PreparedDatabase> {
  const { url, embedded } = await provideDatabase(config, log);
  const database = openDatabase(url, { max: 2, statementTimeoutMs: config.statementTimeoutMs, connectionTimeoutMs: config.connectionTimeoutMs });
  try {
    return { url, embedded, postgresVersion: await readyDatabase(database, config, log) };
  } catch (err) {
    await embedded?.stop();
    throw err;
  } finally {
    await database.close();
  }
}

/** Opens the database, checks it is PostgreSQL 16+, migrates it, and serves the API. */
export async function startService(config: Config, log: Logger = pino({ level: config.logLevel })): Promise<RunningService> {
  const { url: databaseUrl, embedded } = await provideDatabase(config, log);
  const database = openDatabase(databaseUrl, {
    max: config.poolSize,
    statementTimeoutMs: config.statementTimeoutMs,
    connectionTimeoutMs: config.connectionTimeoutMs,
    onError: (err) => log.warn({ err }, 'idle database connection lost'),
  });
  let server: Server | undefined;
  // Set first on shutdown, so /readyz fails before the listener closes.
  let draining = false;
  try {
    const postgresVersion = await readyDatabase(database, config, log);
    const generatedApiKey = config.apiKeys.length ? undefined : loadOrCreateKeyFile(config.dataDir);
    const apiKeys = generatedApiKey ? [generatedApiKey] : config.apiKeys;
    const secret = await database.db.selectFrom('service_secrets').select('value').where('name', '=', 'cursor_hmac_key').executeTakeFirstOrThrow();
    const app = await createApp(
      { db: database.db, cursors: new CursorCodec(secret.value), log, webhookTargets: { allowPrivate: config.webhooks.allowPrivate, lookupTimeoutMs: config.webhooks.timeoutMs } },
      {
        bodyLimitBytes: config.bodyLimitBytes,
        apiKeys: new ApiKeys(apiKeys),
        idempotencyWaitMs: config.idempotencyWaitMs,
        isReady: async () => !draining && (await database.pool.query('SELECT 1')).rowCount === 1,
        pool: database.pool,
        metrics: config.metrics,
        metricsPublic: config.metricsPublic,
        rateLimit: { perMinute: config.rateLimitPerMinute, windowSeconds: config.rateLimitWindowSeconds },
        corsOrigins: config.corsOrigins,
      },
    );
    server = await new Promise<Server>((resolve, reject) => {
      const s = app.listen(config.port, config.host, () => resolve(s));
      s.once('error', reject);
    });
    const pruning = setInterval(() => {
      pruneIdempotencyKeys(database.db).catch((err: unknown) => log.warn({ err }, 'pruning idempotency keys failed'));
    }, 10 * 60_000);
    pruning.unref();
    // Webhook deliveries, off the request path, on a pool of their own: one connection per endpoint
    // served at once and one to look for work (none is held while a receiver answers).
    const webhookDatabase = openDatabase(databaseUrl, {
      max: config.webhooks.concurrency + 1,
      statementTimeoutMs: config.statementTimeoutMs,
      connectionTimeoutMs: config.connectionTimeoutMs,
      onError: (err) => log.warn({ err }, 'idle webhook database connection lost'),
    });
    const webhooks = new WebhookWorker(webhookDatabase.db, config.webhooks, log);
    webhooks.start();
    // The events' JSON cache (docs/events.md), filled in the background on one connection of its own.
    const eventJsonDatabase = openDatabase(databaseUrl, {
      max: 1,
      statementTimeoutMs: config.statementTimeoutMs,
      connectionTimeoutMs: config.connectionTimeoutMs,
      onError: (err) => log.warn({ err }, 'idle event JSON cache connection lost'),
    });
    const eventJsonFiller = new EventJsonFiller(eventJsonDatabase.pool, config.eventJsonFill, log);
    eventJsonFiller.start();
    // A client must send its whole request in time (slowloris); handlers are bounded by the
    // statement and pool timeouts instead.
    server.requestTimeout = config.requestTimeoutMs;
    server.headersTimeout = Math.min(config.requestTimeoutMs, 20_000);
    const address = server.address();
    const port = typeof address === 'object' && address ? address.port : config.port;
    const listening = server;
    return {
      url: `http://${config.host}:${port}`,
      databaseUrl,
      postgresVersion,
      generatedApiKey,
      database,
      log,
      /**
       * Graceful: readiness fails, requests are still served for SHUTDOWN_DELAY_MS (so a load
       * balancer polling /readyz stops sending), the listener stops accepting, in-flight requests finish (idle
       * keep-alive sockets are closed; stragglers are cut after the grace period), the pool
       * drains, then the embedded database stops.
       */
      async stop() {
        draining = true;
        clearInterval(pruning);
        // No new attempts from now on; those under way finish (bounded by their timeout) and are recorded.
        const webhooksStopped = webhooks.stop();
        if (config.shutdownDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, config.shutdownDelayMs));
        const closed = new Promise<void>((resolve) => listening.close(() => resolve()));
        listening.closeIdleConnections();
        const grace = setTimeout(() => listening.closeAllConnections(), config.shutdownGraceMs);
        await closed;
        clearTimeout(grace);
        await webhooksStopped;
        await eventJsonFiller.stop();
        await eventJsonDatabase.close();
        await webhookDatabase.close();
        await database.close();
        await embedded?.stop();
      },
    };
  } catch (err) {
    server?.close();
    await database.close();
    await embedded?.stop();
    throw err;
  }
}
