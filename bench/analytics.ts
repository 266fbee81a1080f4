/**
 * Analytics correctness under load: the maintained aggregates against plain SQL over the base
 * tables in one REPEATABLE READ snapshot; and every trigger that maintains aggregates or history
 * switched off for the insert comparison, then the rows inserted meanwhile deleted and the triggers
 * on again, checked by the analytics check, and by history_analytics_reconcile() after the load.
 */
import type { DatabaseHandle } from '../src/db/database.js';
import { readAnalytics } from '../src/resources/analytics.js';

export interface AnalyticsCheck {
  label: string;
  /** When it began and ended, ms after the start of the measured run it ran beside (if any). */
  startedAtMs: number;
  finishedAtMs: number;
  /** subscription_count of the snapshot both answers were read in. */
  subscriptionCount: number;
  mismatches: string[];
  error?: string;
}

/** Leaf paths where two JSON values differ. */
export function differences(a: unknown, b: unknown, at = ''): string[] {
  if (Array.isArray(a) && Array.isArray(b)) {
    return Array.from({ length: Math.max(a.length, b.length) }, (_, i) => differences(a[i], b[i], `${at}/${i}`)).flat();
  }
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => differences((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], `${at}/${k}`));
  }
  return Object.is(a, b) ? [] : [`${at || '/'}: ${JSON.stringify(a)} (aggregates) vs ${JSON.stringify(b)} (base tables)`];
}

/** The service's aggregates answer and the plain answer over the base tables, in one REPEATABLE READ snapshot. */
export async function checkAnalytics(database: DatabaseHandle, label: string, since: number): Promise<AnalyticsCheck> {
  const startedAtMs = Math.round(performance.now() - since);
  try {
    return await database.db
      .transaction()
      .setIsolationLevel('repeatable read')
      .setAccessMode('read only')
      .execute(async (trx) => {
        const aggregates = await readAnalytics(trx, 'aggregates');
        const baseTables = await readAnalytics(trx, 'base_tables');
        const mismatches = differences(aggregates, baseTables);
        return { label, startedAtMs, finishedAtMs: Math.round(performance.now() - since), subscriptionCount: aggregates.subscription_count, mismatches };
      });
  } catch (err) {
    return { label, startedAtMs, finishedAtMs: Math.round(performance.now() - since), subscriptionCount: -1, mismatches: [], error: String(err) };
  }
}

const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;

/** The tables a POST /api/subscriptions writes, itself or through triggers (its links, its events). */
const TOUCHED_TABLES = ['subscriptions', 'subscription_features', 'events'];

interface FoundTrigger {
  table: string;
  name: string;
  fn: string;
  enabled: string;
}

/**
 * Every trigger that maintains aggregates or history on those tables, found in pg_trigger by its
 * function's name (analytics_*, history_*: the analytics aggregates, the history of events, and the
 * MRR aggregates kept from the events); not set_updated_at, not constraint (foreign key) triggers,
 * not history_append_only (a guard that refuses updates of events; it maintains nothing).
 */
async function maintenanceTriggers(database: DatabaseHandle): Promise<FoundTrigger[]> {
  const { rows } = await database.pool.query<FoundTrigger>(
    `SELECT c.relname AS table, t.tgname AS name, p.proname AS fn, t.tgenabled AS enabled
       FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_class c ON c.oid = t.tgrelid
      WHERE c.relname = ANY($1) AND c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal AND t.tgconstraint = 0
        AND (p.proname LIKE 'analytics\\_%' OR p.proname LIKE 'history\\_%') AND p.proname <> 'history_append_only'
      ORDER BY c.relname, t.tgname`,
    [TOUCHED_TABLES],
  );
  return rows;
}

export interface RestoreResult {
  /** Rows inserted while the triggers were off, deleted before they were enabled again. */
  deleted: number;
  restoreSeconds: number;
  check: AnalyticsCheck;
}

export interface HistoryReconcile {
  /** Rows of history_analytics_reconcile() (each an aggregate that differs from the history); -1 when it is missing. */
  differences: number;
  seconds: number;
  /** The first few rows, for the report. */
  sample: Array<Record<string, unknown>>;
}

/**
 * The MRR and history aggregates against the history they are kept from, by
 * history_analytics_reconcile() (which rebuilds them when any differs: a difference fails the bench
 * all the same). 25-40 s at 500k on a loaded machine: run once after the load, not after each run.
 */
export async function reconcileHistory(database: DatabaseHandle): Promise<HistoryReconcile> {
  const started = performance.now();
  const exists = (await database.pool.query(`SELECT to_regprocedure('history_analytics_reconcile()') IS NOT NULL AS ok`)).rows[0].ok as boolean;
  if (!exists) return { differences: -1, seconds: 0, sample: [] };
  const { rows } = await database.pool.query('SELECT * FROM history_analytics_reconcile()');
  return { differences: rows.length, seconds: (performance.now() - started) / 1000, sample: rows.slice(0, 10) as Array<Record<string, unknown>> };
}

export interface MaintenanceTriggers {
  /** table.trigger (function) of each trigger switched. */
  names: string[];
  /** Disables them all, and notes the last subscription id maintained with them on. */
  disable(): Promise<void>;
  /**
   * Deletes the rows inserted while they were off (no events, never counted in any aggregate: the
   * database is then as if they had never been), enables them, and checks the analytics aggregates
   * (the history's, slower, are checked once after the load: reconcileHistory).
   */
  restore(): Promise<RestoreResult>;
}

/**
 * Finds the triggers; enables any that an interrupted bench left disabled (after a run whose
 * restore never came, the analytics and the history aggregates are rebuilt too).
 */
export async function maintenanceTriggerSwitch(database: DatabaseHandle, log: (line: string) => void): Promise<MaintenanceTriggers> {
  const found = await maintenanceTriggers(database);
  if (!found.some((t) => t.table === 'subscriptions' && t.fn.startsWith('analytics_')) || !found.some((t) => t.table === 'subscriptions' && t.fn.startsWith('history_'))) {
    throw new Error(`no analytics or no history triggers on subscriptions in pg_trigger (found: ${found.map((t) => t.name).join(', ') || 'none'})`);
  }
  const byTable = new Map<string, string[]>();
  for (const t of found) byTable.set(t.table, [...(byTable.get(t.table) ?? []), t.name]);
  const alter = (action: 'DISABLE' | 'ENABLE') =>
    [...byTable].map(([table, names]) => `ALTER TABLE ${quoteIdent(table)} ${names.map((name) => `${action} TRIGGER ${quoteIdent(name)}`).join(', ')}`).join('; ');
  if (found.some((t) => t.enabled === 'D')) {
    await database.pool.query(alter('ENABLE'));
    await database.pool.query('SELECT analytics_rebuild()');
    await database.pool.query('SELECT history_analytics_rebuild()');
    log('# maintenance triggers were left disabled (an interrupted bench?): enabled again, aggregates rebuilt');
  }
  let lastMaintainedId: string | undefined;
  const inTransaction = async <T>(work: (q: (text: string, values?: unknown[]) => Promise<{ rows: Array<Record<string, unknown>>; rowCount: number | null }>) => Promise<T>) => {
    const client = await database.pool.connect();
    try {
      await client.query('BEGIN');
      const result = await work((text, values) => client.query(text, values));
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK');
      throw err;
    } finally {
      client.release();
    }
  };
  return {
    names: found.map((t) => `${t.table}.${t.name} (${t.fn})`),
    disable: async () => {
      // ALTER TABLE ... DISABLE TRIGGER locks subscriptions (SHARE ROW EXCLUSIVE) until COMMIT: every
      // insert before it has committed (maintained), none runs until the commit, and every later one
      // gets an id above the max read here.
      lastMaintainedId = await inTransaction(async (q) => {
        await q(alter('DISABLE'));
        return String((await q('SELECT coalesce(max(id), 0) AS max FROM subscriptions')).rows[0]!.max);
      });
    },
    restore: async () => {
      if (lastMaintainedId === undefined) throw new Error('restore() without disable()');
      const started = performance.now();
      const deleted = await inTransaction(async (q) => {
        // No insert between the delete and the enable (the last requests of the run have had their grace).
        await q('LOCK TABLE subscriptions IN SHARE ROW EXCLUSIVE MODE');
        const { rowCount } = await q('DELETE FROM subscriptions WHERE id > $1', [lastMaintainedId]);
        await q(alter('ENABLE'));
        return rowCount ?? 0;
      });
      const restoreSeconds = (performance.now() - started) / 1000;
      const still = (await maintenanceTriggers(database)).filter((t) => t.enabled !== 'O');
      if (still.length) throw new Error(`triggers not enabled again: ${still.map((t) => t.name).join(', ')}`);
      const check = await checkAnalytics(database, 'after the triggers-off run was deleted and the triggers enabled', performance.now());
      return { deleted, restoreSeconds, check };
    },
  };
}
