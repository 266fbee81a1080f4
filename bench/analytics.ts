/**
 * Analytics correctness under load: the maintained aggregates against plain SQL over the base
 * tables in one REPEATABLE READ snapshot, and the analytics triggers switched off for the insert
 * comparison, then on again with the aggregates rebuilt in the same transaction.
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

/** The statement-level analytics triggers on subscriptions (by their function, analytics_*), not set_updated_at. */
async function analyticsTriggers(database: DatabaseHandle): Promise<Array<{ name: string; enabled: string }>> {
  const { rows } = await database.pool.query<{ name: string; enabled: string }>(
    `SELECT t.tgname AS name, t.tgenabled AS enabled
       FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
      WHERE t.tgrelid = 'subscriptions'::regclass AND NOT t.tgisinternal AND p.proname LIKE 'analytics\\_%'
      ORDER BY t.tgname`,
  );
  return rows;
}

export interface AnalyticsTriggers {
  names: string[];
  disable(): Promise<void>;
  /** Enabled and rebuilt in one transaction (no insert lands between the two unmaintained), then checked. */
  enableAndRebuild(): Promise<{ rebuildSeconds: number; check: AnalyticsCheck }>;
}

/** Finds the triggers; enables any that an interrupted bench left disabled (the seed has just rebuilt the aggregates). */
export async function analyticsTriggerSwitch(database: DatabaseHandle, log: (line: string) => void): Promise<AnalyticsTriggers> {
  const found = await analyticsTriggers(database);
  const names = found.map((t) => t.name);
  if (names.length === 0) throw new Error('no analytics triggers on subscriptions in pg_trigger');
  const alter = (action: 'DISABLE' | 'ENABLE') => `ALTER TABLE subscriptions ${names.map((name) => `${action} TRIGGER ${quoteIdent(name)}`).join(', ')}`;
  if (found.some((t) => t.enabled === 'D')) {
    await database.pool.query(alter('ENABLE'));
    log('# analytics triggers were left disabled (an interrupted bench?): enabled again');
  }
  return {
    names,
    disable: async () => void (await database.pool.query(alter('DISABLE'))),
    enableAndRebuild: async () => {
      const started = performance.now();
      const client = await database.pool.connect();
      try {
        await client.query('BEGIN');
        await client.query(alter('ENABLE'));
        await client.query('SELECT analytics_rebuild()');
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK');
        throw err;
      } finally {
        client.release();
      }
      const rebuildSeconds = (performance.now() - started) / 1000;
      const still = (await analyticsTriggers(database)).filter((t) => t.enabled !== 'O');
      if (still.length) throw new Error(`analytics triggers not enabled again: ${still.map((t) => t.name).join(', ')}`);
      return { rebuildSeconds, check: await checkAnalytics(database, 'after analytics_rebuild()', performance.now()) };
    },
  };
}
