/**
 * Metrics from history (migrations 0010 and 0019): GET /api/analytics/mrr, and GET /api/analytics?as_of=.
 * Both read aggregates the database keeps in the same transaction as every change (a few hundred
 * small rows whatever the table size), or, with source=base_tables, compute the same answer from
 * the events table alone. The SQL lives in the migration as functions (the top-users threshold
 * scan is a loop); here it is called once per request through a statement prepared on each connection.
 */
import { sql, type Kysely } from 'kysely';
import type { components } from '../../generated/api.js';
import { preparedQuery } from '../db/prepared.js';
import type { Database } from '../db/schema.js';
import type { Deps } from '../deps.js';
import { InvalidInputError } from '../errors.js';
import type { OperationHandlers } from '../http/operation.js';
import { sendJsonText } from '../http/respond.js';
import type { AnalyticsSource } from './analytics.js';
import { documentKey, keptDocuments } from './kept.js';

type Analytics = components['schemas']['Analytics'];
type MrrReport = components['schemas']['MrrReport'];

/** The longest report one request may ask for. */
const MAX_MONTHS = 120;

/**
 * Migration 0019: both documents as the JSON text the API sends, written by PostgreSQL in the
 * response's field order (the service neither parses nor serializes them), from either source.
 * Built by Kysely once with placeholder values, then prepared and run with each request's.
 */
const reportDocument = preparedQuery((db) =>
  db.selectNoFrom([
    sql<string | null>`history_mrr_report_text(${'2000-01-01'}::date, ${'2000-01-01'}::date, ${false}::boolean)`.as('document'),
    // What a later request compares to send this document again (kept.ts), read in the same snapshot.
    documentKey.as('key'),
  ]),
);
const asOfDocument = preparedQuery((db) =>
  db.selectNoFrom(sql<string | null>`history_analytics_text(${'2000-01-01T00:00:00.000Z'}::timestamptz, ${false}::boolean)`.as('document')),
);

/** `YYYY-MM` as a month index (months since year 0), and back. */
const monthIndex = (ym: string) => Number(ym.slice(0, 4)) * 12 + Number(ym.slice(5, 7)) - 1;
const monthText = (index: number) => `${String(Math.floor(index / 12)).padStart(4, '0')}-${String((index % 12) + 1).padStart(2, '0')}`;

/** The months asked for: defaults, and the 400s for a range that is reversed, too long or in the future. */
export function reportMonths(query: { from?: string; to?: string }, now = new Date()): { from: string; to: string } {
  const current = now.getUTCFullYear() * 12 + now.getUTCMonth();
  const to = query.to === undefined ? current : monthIndex(query.to);
  const from = query.from === undefined ? to - 11 : monthIndex(query.from);
  if (to > current) throw new InvalidInputError('to is after the current month', [{ parameter: 'to', message: `must not be after ${monthText(current)}` }]);
  if (from > to) throw new InvalidInputError('from is after to', [{ parameter: 'from', message: 'must not be after to' }]);
  if (to - from + 1 > MAX_MONTHS) {
    throw new InvalidInputError(`at most ${MAX_MONTHS} months per report`, [{ parameter: 'from', message: `must be at most ${MAX_MONTHS - 1} months before to` }]);
  }
  return { from: `${monthText(from)}-01`, to: `${monthText(to)}-01` };
}

/** The statement's one row, whose document is there. */
async function documentRow<Row extends { document: string | null }>(rows: Promise<Row[]>, what: string): Promise<Row & { document: string }> {
  const [row] = await rows;
  if (!row?.document) throw new Error(`${what} returned no document`);
  return row as Row & { document: string };
}

/** The report of these months (first days) from `source`, as JSON text, and its key (kept.ts). */
async function computeReport(db: Kysely<Database>, months: { from: string; to: string }, source: AnalyticsSource): Promise<{ document: string; key: string }> {
  return documentRow(reportDocument(db, [months.from, months.to, source === 'base_tables']), 'history_mrr_report_text');
}

/** GET /api/analytics/mrr's body, as JSON text. */
export async function readMrrReportJson(db: Kysely<Database>, query: { from?: string; to?: string }, source: AnalyticsSource): Promise<string> {
  return (await computeReport(db, reportMonths(query), source)).document;
}

export async function readMrrReport(db: Kysely<Database>, query: { from?: string; to?: string }, source: AnalyticsSource): Promise<MrrReport> {
  return JSON.parse(await readMrrReportJson(db, query, source)) as MrrReport;
}

/** GET /api/analytics?as_of='s body, as JSON text: every field as the history says it stood at `asOf` (ms precision, not in the future). */
export async function readAnalyticsAsOfJson(db: Kysely<Database>, asOf: string, source: AnalyticsSource): Promise<string> {
  const instant = new Date(asOf);
  if (Number.isNaN(instant.getTime()) || instant.getTime() > Date.now()) {
    throw new InvalidInputError('as_of is in the future', [{ parameter: 'as_of', message: 'must be an instant not after now' }]);
  }
  return (await documentRow(asOfDocument(db, [instant.toISOString(), source === 'base_tables']), 'history_analytics_text')).document;
}

export async function readAnalyticsAsOf(db: Kysely<Database>, asOf: string, source: AnalyticsSource): Promise<Analytics> {
  return JSON.parse(await readAnalyticsAsOfJson(db, asOf, source)) as Analytics;
}

export function mrrHandlers(deps: Deps) {
  // A report per range of months; a few ranges are asked for again and again (the last 12 months, most).
  const fromAggregates = keptDocuments(
    deps.db,
    (db, months: { from: string; to: string }) => computeReport(db, months, 'aggregates'),
    (m) => `${m.from} ${m.to}`,
    32,
  );
  return {
    async getMrrReport({ query, ctx, db }) {
      const months = reportMonths(query);
      const source = query.source ?? 'aggregates';
      sendJsonText(ctx, 200, source === 'aggregates' ? await fromAggregates(db, months) : (await computeReport(db, months, source)).document);
    },
  } satisfies Partial<OperationHandlers>;
}
