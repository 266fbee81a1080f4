/**
 * Metrics from history (migration 0010): GET /api/analytics/mrr, and GET /api/analytics?as_of=.
 * Both read aggregates the database keeps in the same transaction as every change (a few hundred
 * small rows whatever the table size), or, with source=base_tables, compute the same answer from
 * the events table alone. The SQL lives in the migration as functions (the top-users threshold
 * scan is a loop); here it is called once per request through a statement prepared on each connection.
 */
import { CompiledQuery, type Kysely } from 'kysely';
import type { components } from '../../generated/api.js';
import { prepareOnEachConnection } from '../db/prepared.js';
import type { Database } from '../db/schema.js';
import type { Deps } from '../deps.js';
import { InvalidInputError } from '../errors.js';
import { formatMoney } from '../money.js';
import type { OperationHandlers } from '../http/operation.js';
import { sendObject } from '../http/respond.js';
import type { AnalyticsSource } from './analytics.js';

type Analytics = components['schemas']['Analytics'];
type MrrReport = components['schemas']['MrrReport'];
type MrrMonth = components['schemas']['MrrMonth'];

/** The longest report one request may ask for. */
const MAX_MONTHS = 120;

interface MrrRow {
  month: string;
  starting_mrr: string;
  new: string;
  expansion: string;
  contraction: string;
  churn: string;
  reactivation: string;
  ending_mrr: string;
  starting_customers: string;
  customers: string;
  new_customers: string;
  reactivated_customers: string;
  churned_customers: string;
  customer_churn_rate: string | null;
  revenue_churn_rate: string | null;
  arpa: string;
  /** now() as toISOString() writes it (milliseconds, truncated as the driver's Date would be): text, not a Date parsed per row. */
  as_of: string;
}

const REPORT_COLUMNS = `to_char(r.month, 'YYYY-MM') AS month, r.starting_mrr::text, r.new::text, r.expansion::text, r.contraction::text,
  r.churn::text, r.reactivation::text, r.ending_mrr::text, r.starting_customers::text, r.customers::text, r.new_customers::text,
  r.reactivated_customers::text, r.churned_customers::text,
  round(r.churned_customers::numeric / nullif(r.starting_customers, 0), 4)::numeric(20, 4)::text AS customer_churn_rate,
  round((r.churn + r.contraction) / nullif(r.starting_mrr, 0), 4)::numeric(20, 4)::text AS revenue_churn_rate,
  coalesce(round(r.ending_mrr / nullif(r.customers, 0), 2), 0)::text AS arpa,
  to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS as_of`;

/** One statement per source, its text fixed: prepared on each connection at first use. */
const REPORT_SQL: Record<AnalyticsSource, string> = {
  aggregates: `SELECT ${REPORT_COLUMNS} FROM history_mrr_report($1::date, $2::date) r`,
  base_tables: `SELECT ${REPORT_COLUMNS} FROM history_mrr_report_plain($1::date, $2::date) r`,
};
const AS_OF_SQL = 'SELECT history_analytics_at($1::timestamptz, $2::boolean) AS document';
for (const text of [...Object.values(REPORT_SQL), AS_OF_SQL]) prepareOnEachConnection(text);

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

const count = (text: string) => Number(text);

export async function readMrrReport(db: Kysely<Database>, query: { from?: string; to?: string }, source: AnalyticsSource): Promise<MrrReport> {
  const { from, to } = reportMonths(query);
  const { rows } = await db.executeQuery(CompiledQuery.raw(REPORT_SQL[source], [from, to]) as CompiledQuery<MrrRow>);
  return {
    as_of: rows[0]?.as_of ?? new Date().toISOString(),
    months: rows.map((r): MrrMonth => ({
      month: r.month,
      starting_mrr: formatMoney(r.starting_mrr),
      new: formatMoney(r.new),
      expansion: formatMoney(r.expansion),
      contraction: formatMoney(r.contraction),
      churn: formatMoney(r.churn),
      reactivation: formatMoney(r.reactivation),
      ending_mrr: formatMoney(r.ending_mrr),
      starting_customers: count(r.starting_customers),
      customers: count(r.customers),
      new_customers: count(r.new_customers),
      reactivated_customers: count(r.reactivated_customers),
      churned_customers: count(r.churned_customers),
      customer_churn_rate: r.customer_churn_rate,
      revenue_churn_rate: r.revenue_churn_rate,
      arpa: formatMoney(r.arpa),
    })),
  };
}

/** Every /api/analytics field as the history says it stood at `asOf` (ms precision, not in the future). */
export async function readAnalyticsAsOf(db: Kysely<Database>, asOf: string, source: AnalyticsSource): Promise<Analytics> {
  const instant = new Date(asOf);
  if (Number.isNaN(instant.getTime()) || instant.getTime() > Date.now()) {
    throw new InvalidInputError('as_of is in the future', [{ parameter: 'as_of', message: 'must be an instant not after now' }]);
  }
  const { rows } = await db.executeQuery(CompiledQuery.raw(AS_OF_SQL, [instant.toISOString(), source === 'base_tables']) as CompiledQuery<{ document: Analytics }>);
  const d = rows[0]?.document;
  if (!d) throw new Error('history_analytics_at returned no row');
  // jsonb keeps keys in its own order: the fields are laid out as readAnalytics lays them out.
  return {
    as_of: d.as_of,
    total_recurring_revenue: d.total_recurring_revenue,
    average_subscription_cost: d.average_subscription_cost,
    monthly_revenue: d.monthly_revenue.map((m) => ({ month: m.month, revenue: m.revenue })),
    top_users: d.top_users.map((u) => ({ user_id: u.user_id, name: u.name, email: u.email, total_value: u.total_value })),
    subscription_count: d.subscription_count,
    active_subscription_count: d.active_subscription_count,
    by_status: d.by_status.map((b) => ({ status: b.status, count: b.count, revenue: b.revenue })),
    mrr: d.mrr,
    arr: d.arr,
  };
}

export function mrrHandlers(_deps: Deps) {
  return {
    async getMrrReport({ query, ctx, db }) {
      sendObject(ctx, 200, await readMrrReport(db, query, query.source ?? 'aggregates'));
    },
  } satisfies Partial<OperationHandlers>;
}
