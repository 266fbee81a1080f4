/**
 * Loads the generated dataset of db/seed.sql: `make db-seed`, and `make run` on an empty database.
 *
 * One transaction, so an interrupted seed leaves nothing behind. Inside it the tables are truncated
 * (a fresh file: with wal_level=minimal the load then writes no WAL), their triggers, keys, indexes
 * and foreign keys are set aside (definitions read from the catalog, so nothing here repeats the
 * migrations), the rows are generated, and everything is rebuilt and re-validated over the loaded
 * rows, which is several times faster than maintaining it row by row.
 */
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import { projectRoot } from '../config.js';

export const seedSqlPath = path.join(projectRoot, 'db', 'seed.sql');

/** The tables the seed fills (and, with reset, empties). */
export const SEEDED_TABLES = ['users', 'features', 'subscriptions', 'subscription_features'] as const;
type SeededTable = (typeof SEEDED_TABLES)[number];
/** Where migration 0002 keeps the analytics aggregates, all derived from subscriptions. */
export const ANALYTICS_TABLES = ['analytics_status_totals', 'analytics_month_revenue', 'analytics_user_totals'];
/** Where migration 0010 keeps the aggregates of the history (MRR movements, analytics as of an instant). */
export const HISTORY_ANALYTICS_TABLES = ['history_status_changes', 'history_revenue_changes', 'history_user_months', 'history_mrr_movements'];

export interface SeedParameters {
  users: number;
  subscriptions: number;
  features: number;
  /** Same parameters, same seed and same `today`: identical rows. */
  seed: number;
  /** YYYY-MM-DD (UTC) that every generated date is relative to; default: today. */
  today?: string;
}

export const DEFAULT_SEED_PARAMETERS: SeedParameters = { users: 100_000, subscriptions: 500_000, features: 30, seed: 42 };

/** The dataset size from SEED_USERS, SEED_SUBSCRIPTIONS, SEED_FEATURES and SEED (make exports them). */
export function seedParametersFromEnv(env: NodeJS.ProcessEnv = process.env): SeedParameters {
  const read = (name: string, fallback: number) => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    const value = Number(raw);
    if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${name} must be a non-negative integer, got "${raw}"`);
    return value;
  };
  return {
    users: read('SEED_USERS', DEFAULT_SEED_PARAMETERS.users),
    subscriptions: read('SEED_SUBSCRIPTIONS', DEFAULT_SEED_PARAMETERS.subscriptions),
    features: read('SEED_FEATURES', DEFAULT_SEED_PARAMETERS.features),
    seed: read('SEED', DEFAULT_SEED_PARAMETERS.seed),
  };
}

function checkParameters(p: SeedParameters): void {
  for (const [name, value] of Object.entries({ users: p.users, subscriptions: p.subscriptions, features: p.features })) {
    if (!Number.isSafeInteger(value) || value < 0 || value > 1_000_000_000) throw new Error(`seed: ${name} must be an integer from 0 to 1e9, got ${value}`);
  }
  // The seed becomes part of a 64-bit hash key (seed * 64 + stream).
  if (!Number.isSafeInteger(p.seed) || p.seed < 0 || p.seed > 2 ** 31 - 1) throw new Error(`seed: SEED must be an integer from 0 to 2147483647, got ${p.seed}`);
  if (p.subscriptions > 0 && p.users === 0) throw new Error('seed: subscriptions need users (SEED_USERS is 0)');
  if (p.today !== undefined && !/^\d{4}-\d{2}-\d{2}$/.test(p.today)) throw new Error(`seed: today must be YYYY-MM-DD, got ${p.today}`);
}

/** The database already holds data and no reset was asked for. */
export class SeedRefusedError extends Error {
  constructor(readonly nonEmpty: string[]) {
    super(`the database is not empty (${nonEmpty.join(', ')} hold rows): not seeding; RESET=1 replaces all their data with the generated dataset`);
    this.name = 'SeedRefusedError';
  }
}

export interface SeedSummary {
  rows: Record<SeededTable, number>;
  totalRows: number;
  seconds: number;
  rowsPerSecond: number;
}

export interface SeedOptions {
  /** Truncate whatever the tables hold (RESTART IDENTITY) instead of refusing. */
  reset?: boolean;
  /** One line per phase. */
  log?: (line: string) => void;
}

/** The `-- phase: name` sections of db/seed.sql, in order. */
function readPhases(): Map<string, string> {
  const text = fs.readFileSync(seedSqlPath, 'utf8');
  const phases = new Map<string, string>();
  const parts = text.split(/^-- phase: (\w+)[ \t]*$/m);
  for (let i = 1; i < parts.length; i += 2) phases.set(parts[i]!, parts[i + 1]!);
  return phases;
}

// Every statement the seed needs to set aside and restore, read from the catalog: foreign keys from
// or to the seeded tables, their primary/unique/exclusion keys, their other indexes, their enabled
// user triggers. Identifiers come quoted by regclass and format('%I').
const SET_ASIDE = `
WITH seeded AS (SELECT unnest($1::regclass[]) AS oid)
SELECT 'foreign key' AS kind,
       format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname) AS drop_sql,
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid)) AS restore_sql
FROM pg_constraint c
WHERE c.contype = 'f' AND (c.conrelid IN (SELECT oid FROM seeded) OR c.confrelid IN (SELECT oid FROM seeded))
UNION ALL
SELECT 'key',
       format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname),
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
FROM pg_constraint c
WHERE c.contype IN ('p', 'u', 'x') AND c.conrelid IN (SELECT oid FROM seeded)
UNION ALL
SELECT 'index', format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
FROM pg_index i
WHERE i.indrelid IN (SELECT oid FROM seeded)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x'))
UNION ALL
SELECT 'trigger',
       format('ALTER TABLE %s DISABLE TRIGGER %I', t.tgrelid::regclass, t.tgname),
       format('ALTER TABLE %s ENABLE %s TRIGGER %I', t.tgrelid::regclass,
              CASE t.tgenabled WHEN 'A' THEN 'ALWAYS' WHEN 'R' THEN 'REPLICA' ELSE '' END, t.tgname)
FROM pg_trigger t
WHERE t.tgrelid IN (SELECT oid FROM seeded) AND NOT t.tgisinternal AND t.tgenabled <> 'D'`;

// Identity sequences continue after the highest loaded id.
const IDENTITY_SEQUENCES = `
SELECT format('SELECT setval(%L, coalesce(max(%I), 0) + 1, false) FROM %s',
              pg_get_serial_sequence(a.attrelid::regclass::text, a.attname), a.attname, a.attrelid::regclass) AS sql
FROM pg_attribute a
WHERE a.attrelid = ANY ($1::regclass[]) AND a.attidentity <> '' AND NOT a.attisdropped`;

type SetAside = { kind: 'foreign key' | 'key' | 'index' | 'trigger'; drop_sql: string; restore_sql: string };

const seconds = (since: number) => (performance.now() - since) / 1000;
const fmt = (n: number) => n.toLocaleString('en-US');

/**
 * Generates the dataset into the seeded tables in one transaction. Refuses (SeedRefusedError) when
 * any of them holds rows, unless `reset`. Two seeds at once queue on an advisory lock.
 */
export async function seedDatabase(pool: pg.Pool, parameters: SeedParameters, options: SeedOptions = {}): Promise<SeedSummary> {
  const params = { ...parameters, today: parameters.today ?? new Date().toISOString().slice(0, 10) };
  checkParameters(params);
  const log = options.log ?? (() => {});
  const phases = readPhases();
  const started = performance.now();
  const client = await pool.connect();
  const rows = { users: 0, features: 0, subscriptions: 0, subscription_features: 0 } satisfies Record<SeededTable, number>;
  let step = performance.now();
  /** Whether migration 0006 is there: then the seed also writes the history its rows imply. */
  let recordsHistory = false;
  const done = (what: string) => {
    log(`seed: ${what} in ${seconds(step).toFixed(2)} s`);
    step = performance.now();
  };
  try {
    // The pool's statement timeout is for requests, not for a bulk load.
    await client.query('SET statement_timeout = 0');
    await client.query('BEGIN');
    await client.query(`SELECT pg_advisory_xact_lock(hashtext('subscriptions-api seed'))`);
    const {
      rows: [counts],
    } = await client.query<Record<SeededTable, boolean>>(`SELECT ${SEEDED_TABLES.map((t) => `EXISTS (SELECT FROM ${t}) AS ${t}`).join(', ')}`);
    const nonEmpty = SEEDED_TABLES.filter((t) => counts?.[t]);
    if (nonEmpty.length && !options.reset) throw new SeedRefusedError(nonEmpty);
    // Losing the last moment of a seed to an OS crash is harmless; the load never waits on a flush.
    // Memory for sorting the indexes and for the hash joins that validate the foreign keys.
    await client.query(`SET LOCAL synchronous_commit = off; SET LOCAL maintenance_work_mem = '1GB'; SET LOCAL work_mem = '256MB'`);
    await client.query(
      `SELECT set_config('seed.users', $1, true), set_config('seed.subscriptions', $2, true), set_config('seed.features', $3, true),
              set_config('seed.seed', $4, true), set_config('seed.today', $5, true)`,
      [params.users, params.subscriptions, params.features, params.seed, params.today].map(String),
    );
    log(
      `seed: ${fmt(params.users)} users, ${fmt(params.subscriptions)} subscriptions, ${fmt(params.features)} features, ` +
        `SEED ${params.seed}, dates up to ${params.today}${nonEmpty.length ? ` (replacing the data in ${nonEmpty.join(', ')})` : ''}`,
    );

    const { rows: setAside } = await client.query<SetAside>(SET_ASIDE, [SEEDED_TABLES]);
    const ofKind = (...kinds: SetAside['kind'][]) => setAside.filter((s) => kinds.includes(s.kind));
    // The analytics aggregates (migration 0002) are recomputed from the loaded rows below. Emptied
    // with the tables and without their keys until then: analytics_rebuild()'s DELETE would leave
    // the old rows as dead index entries for every insert to check (measured 1.9 s vs 0.8 s).
    const {
      rows: [analytics],
    } = await client.query<{ present: boolean }>(`SELECT to_regprocedure('analytics_rebuild()') IS NOT NULL AS present`);
    const analyticsTables = analytics?.present ? ANALYTICS_TABLES : [];
    const { rows: analyticsKeys } = await client.query<SetAside>(SET_ASIDE, [analyticsTables]);
    // The history (migration 0006) is replaced by the history the generated rows imply, written
    // into the emptied events table before its keys are rebuilt (as for the aggregates).
    const {
      rows: [history],
    } = await client.query<{ present: boolean }>(`SELECT to_regprocedure('history_record_implied()') IS NOT NULL AS present`);
    recordsHistory = history?.present === true;
    const { rows: historyKeys } = await client.query<SetAside>(SET_ASIDE, [recordsHistory ? ['events'] : []]);
    // The old history goes first, with whatever refers to it (its deliveries), while the foreign
    // keys still say what that is. Event ids go on from where they were: never reused.
    if (recordsHistory) await client.query('TRUNCATE events CASCADE');
    // The history's aggregates (migration 0010): emptied with it, recomputed from the implied history below.
    const {
      rows: [historyAnalytics],
    } = await client.query<{ present: boolean }>(`SELECT to_regprocedure('history_analytics_rebuild(boolean)') IS NOT NULL AS present`);
    const historyAnalyticsTables = recordsHistory && historyAnalytics?.present ? HISTORY_ANALYTICS_TABLES : [];
    const { rows: historyAnalyticsKeys } = await client.query<SetAside>(SET_ASIDE, [historyAnalyticsTables]);
    // Foreign keys first: they depend on the keys they reference.
    for (const s of [...ofKind('trigger', 'foreign key'), ...ofKind('key', 'index'), ...analyticsKeys, ...historyKeys, ...historyAnalyticsKeys]) {
      await client.query(s.drop_sql);
    }
    await client.query(`TRUNCATE ${[...SEEDED_TABLES, ...analyticsTables, ...historyAnalyticsTables].join(', ')} RESTART IDENTITY`);
    done(
      `set aside ${ofKind('key', 'index').length + analyticsKeys.length} keys and indexes, ${ofKind('foreign key').length} foreign keys, ` +
        `${ofKind('trigger').length} triggers; truncated`,
    );

    await client.query(phases.get('helpers')!);
    for (const table of ['features', 'users', 'subscriptions', 'subscription_features'] as const) {
      const result = await client.query(phases.get(table)!);
      rows[table] = result.rowCount ?? 0;
      done(`${table}: ${fmt(rows[table])} rows`);
    }
    if (recordsHistory) {
      const {
        rows: [written],
      } = await client.query<{ events: string }>(phases.get('history')!);
      done(`history: ${fmt(Number(written?.events ?? 0))} events`);
    }
    await client.query(phases.get('cleanup')!);

    let slowest = { sql: '', seconds: 0 };
    for (const s of ofKind('key', 'index')) {
      const t0 = performance.now();
      await client.query(s.restore_sql);
      if (seconds(t0) > slowest.seconds) slowest = { sql: s.restore_sql, seconds: seconds(t0) };
    }
    done(`keys and indexes: ${ofKind('key', 'index').length} built (slowest ${slowest.seconds.toFixed(2)} s: ${slowest.sql})`);
    const { rows: sequences } = await client.query<{ sql: string }>(IDENTITY_SEQUENCES, [SEEDED_TABLES]);
    for (const s of sequences) await client.query(s.sql);
    // The aggregates the analytics triggers would have maintained row by row, computed in one pass.
    if (analytics?.present) {
      await client.query('SELECT analytics_rebuild()');
      for (const s of analyticsKeys) await client.query(s.restore_sql);
      done(`analytics_rebuild() and ${analyticsKeys.length} keys and indexes`);
    }
    if (historyAnalyticsTables.length) {
      // From the subscriptions, as the implied history records them (the events just written say the same).
      await client.query('SELECT history_analytics_rebuild(true)');
      for (const s of historyAnalyticsKeys) await client.query(s.restore_sql);
      done(`history_analytics_rebuild() and ${historyAnalyticsKeys.length} keys and indexes`);
    }
    if (historyKeys.length) {
      // Its keys before the foreign keys that reference them, its triggers last.
      const order: SetAside['kind'][] = ['key', 'index', 'foreign key', 'trigger'];
      for (const s of historyKeys.sort((a, b) => order.indexOf(a.kind) - order.indexOf(b.kind))) await client.query(s.restore_sql);
      done(`history: ${historyKeys.filter((s) => s.kind !== 'trigger').length} keys and indexes`);
    }
    for (const s of ofKind('foreign key')) await client.query(s.restore_sql);
    done(`foreign keys: ${ofKind('foreign key').length} validated`);
    for (const s of ofKind('trigger')) await client.query(s.restore_sql);
    // A running service's kept analytics document (migration 0023) is not the answer any more: the
    // triggers that would have said so were set aside with the tables.
    await client.query(`UPDATE analytics_versions SET version = version + 1 WHERE slot = -1`);
    await client.query('COMMIT');
    done('commit');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    await client.query('RESET statement_timeout').catch(() => {});
    client.release();
  }

  // Outside the transaction: statistics for the planner and the visibility map for index-only scans.
  const vacuum = await pool.connect();
  try {
    await vacuum.query('SET statement_timeout = 0');
    await vacuum.query(`VACUUM (ANALYZE) ${SEEDED_TABLES.join(', ')}`);
    // Statistics for every other table the seed filled or rebuilt: the events (the feed's filters) and
    // the aggregates (their triggers' per-row statements planned a sequential scan of history_user_months
    // until autovacuum came by: 52 ms for a single-row insert instead of 2.7 ms). Nothing reads them by
    // index only on a hot path, so no VACUUM.
    const others = await vacuum.query<{ name: string }>(
      "SELECT format('%I', tablename) AS name FROM pg_tables WHERE schemaname = current_schema() AND tablename <> ALL($1::text[]) ORDER BY tablename",
      [SEEDED_TABLES],
    );
    if (others.rows.length) await vacuum.query(`ANALYZE ${others.rows.map((r) => r.name).join(', ')}`);
  } finally {
    await vacuum.query('RESET statement_timeout').catch(() => {});
    vacuum.release();
  }
  done('VACUUM ANALYZE');

  const totalRows = Object.values(rows).reduce((a, b) => a + b, 0);
  const elapsed = seconds(started);
  const summary: SeedSummary = { rows, totalRows, seconds: elapsed, rowsPerSecond: Math.round(totalRows / elapsed) };
  log(`seed: done: ${SEEDED_TABLES.map((t) => `${fmt(rows[t])} ${t}`).join(', ')}; ` + `${fmt(totalRows)} rows in ${elapsed.toFixed(2)} s (${fmt(summary.rowsPerSecond)} rows/s)`);
  return summary;
}

/** Seeds when none of the seeded tables holds a row (make run); otherwise says so and does nothing. */
export async function seedIfEmpty(pool: pg.Pool, parameters: SeedParameters, log: (line: string) => void): Promise<SeedSummary | undefined> {
  try {
    return await seedDatabase(pool, parameters, { log });
  } catch (err) {
    if (!(err instanceof SeedRefusedError)) throw err;
    log(`seed: the database already holds data (${err.nonEmpty.join(', ')}): not seeding`);
    return undefined;
  }
}
