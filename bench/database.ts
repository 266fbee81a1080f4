/**
 * The bench's own database (bench_<size>, beside the service's, never instead of it): started,
 * migrated, seeded, and left quiet (VACUUM ANALYZE done, no autovacuum running) before any load.
 */
import path from 'node:path';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { assertPostgres16, openDatabase, type DatabaseHandle } from '../src/db/database.js';
import { ensureDatabase, startEmbeddedPostgres } from '../src/db/embedded.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { seedDatabase, type SeedSummary } from '../src/db/seed.js';
import { freePort } from '../src/free-port.js';
import { embeddedSettings } from '../src/service.js';
import type { BenchSettings } from './settings.js';

export interface BenchDatabase {
  /** The server's superuser URL, without a database name. */
  serverUrl: string;
  name: string;
  url: string;
  /** The bench's own pool (statement timeout off). */
  handle: DatabaseHandle;
  postgresVersion: string;
  stop(): Promise<void>;
}

const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Dropped and created again on every run: the seed replaces all the data anyway, and a database
 * migrated by an earlier version of a migration file (edited since) would keep its old schema.
 */
async function recreateDatabase(serverUrl: string, name: string): Promise<void> {
  const admin = new pg.Client({ connectionString: `${serverUrl}/postgres` });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
  await ensureDatabase(serverUrl, name);
}

/** The embedded PostgreSQL 16 under DATA_DIR/bench-pg16, or the DATABASE_URL server; migrated. */
export async function openBenchDatabase(settings: BenchSettings): Promise<BenchDatabase> {
  const config = loadConfig();
  const embedded = config.databaseUrl
    ? undefined
    : await startEmbeddedPostgres({
        dataDir: path.join(config.dataDir, 'bench-pg16'),
        port: await freePort(),
        settings: settings.statements ? { ...embeddedSettings, shared_preload_libraries: 'pg_stat_statements' } : embeddedSettings,
      });
  const serverUrl = embedded ? embedded.adminUrl : Object.assign(new URL(config.databaseUrl!), { pathname: '' }).toString().replace(/\/$/, '');
  const name = `bench_${settings.size}`;
  try {
    await recreateDatabase(serverUrl, name);
    const url = `${serverUrl}/${name}`;
    const handle = openDatabase(url, { statementTimeoutMs: 0 });
    const bench: BenchDatabase = {
      serverUrl,
      name,
      url,
      handle,
      postgresVersion: '',
      stop: async () => {
        await bench.handle.close();
        await embedded?.stop();
      },
    };
    try {
      bench.postgresVersion = await assertPostgres16(handle.pool);
      await migrateToLatest(handle.db);
      if (settings.statements) await handle.pool.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    } catch (err) {
      await bench.stop();
      throw err;
    }
    return bench;
  } catch (err) {
    await embedded?.stop().catch(() => {});
    throw err;
  }
}

/** Replaces the data (the seed ends with VACUUM ANALYZE), then waits until no autovacuum runs. */
export async function seedBenchDatabase(bench: BenchDatabase, settings: BenchSettings, log: (line: string) => void): Promise<SeedSummary> {
  log(`# PostgreSQL ${bench.postgresVersion}; seeding ${settings.size.toLocaleString('en-US')} subscriptions, ${settings.users.toLocaleString('en-US')} users`);
  const seed = await seedDatabase(
    bench.handle.pool,
    { users: settings.users, subscriptions: settings.size, features: 30, seed: 42 },
    { reset: true, log: (line) => log(`#   ${line}`) },
  );
  await waitForQuiet(bench.handle.pool, log);
  return seed;
}

/** Autovacuum may start on the freshly loaded tables: no load runs until it is done (at most 5 minutes). */
async function waitForQuiet(pool: pg.Pool, log: (line: string) => void): Promise<void> {
  const started = performance.now();
  for (let said = false; performance.now() - started < 300_000; said = true) {
    const { rows } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND datname = current_database()`);
    if (rows[0]!.n === 0) return;
    if (!said) log('# waiting for autovacuum to finish before the first scenario');
    await sleep(1_000);
  }
  log('# autovacuum still running after 5 minutes: measuring anyway');
}

/** The migrations this database has applied (Kysely's bookkeeping table). */
export async function appliedMigrations(bench: BenchDatabase): Promise<string[]> {
  const { rows } = await bench.handle.pool.query<{ name: string }>('SELECT name FROM kysely_migration ORDER BY name');
  return rows.map((r) => r.name);
}

/**
 * A copy of the seeded database for an older checkout whose migrations are a subset of ours: Kysely
 * refuses to start on a database that applied migrations it does not know, so the copy forgets
 * those (their tables stay, unused by the older code). The bench's pool is closed for the copy
 * (CREATE DATABASE ... TEMPLATE needs the source idle) and opened again.
 */
export async function copyForOlderCheckout(bench: BenchDatabase, knownMigrations: string[]): Promise<string> {
  const copy = `${bench.name}_baseline`;
  await bench.handle.close();
  const admin = new pg.Client({ connectionString: `${bench.serverUrl}/postgres` });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${ident(copy)}`);
    await admin.query(`CREATE DATABASE ${ident(copy)} TEMPLATE ${ident(bench.name)} STRATEGY FILE_COPY`);
  } finally {
    await admin.end();
    bench.handle = openDatabase(bench.url, { statementTimeoutMs: 0 });
  }
  const copied = new pg.Client({ connectionString: `${bench.serverUrl}/${copy}` });
  await copied.connect();
  try {
    await copied.query('DELETE FROM kysely_migration WHERE NOT (name = ANY($1))', [knownMigrations]);
  } finally {
    await copied.end();
  }
  return `${bench.serverUrl}/${copy}`;
}

export interface StatementFigures {
  calls: number;
  totalMs: number;
  meanMs: number;
  rows: number;
  query: string;
}

/**
 * pg_stat_statements around one timed run (BENCH_STATEMENTS=1): reset before, the top statements
 * by total execution time after, over every database of the server (the services', the bench's).
 */
export const statementProbe = (pool: pg.Pool, top = 8) => ({
  reset: async () => void (await pool.query('SELECT pg_stat_statements_reset()')),
  read: async (): Promise<StatementFigures[]> =>
    (
      await pool.query<StatementFigures>(
        `SELECT calls::float8 AS calls, round(total_exec_time::numeric, 1)::float8 AS "totalMs", round(mean_exec_time::numeric, 3)::float8 AS "meanMs",
                rows::float8 AS rows, left(regexp_replace(query, '\\s+', ' ', 'g'), 400) AS query
           FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT $1`,
        [top],
      )
    ).rows,
});
