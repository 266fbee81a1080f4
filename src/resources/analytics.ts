import { sql, type CompiledQuery, type InferResult, type Kysely } from 'kysely';
import { jsonArrayFrom, jsonBuildObject } from 'kysely/helpers/postgres';
import type { components } from '../../generated/api.js';
import { runPrepared } from '../db/prepared.js';
import type { Database, SubscriptionStatus } from '../db/schema.js';
import type { Deps } from '../deps.js';
import { formatMoney } from '../money.js';
import type { OperationHandlers } from '../http/operation.js';
import { sendJsonText, sendObject } from '../http/respond.js';
import { readAnalyticsAsOfJson } from './mrr.js';

type Analytics = components['schemas']['Analytics'];
export type AnalyticsSource = 'aggregates' | 'base_tables';

/** by_status lists every status in the spec's enum order; a status missing here fails to compile. */
const STATUSES = Object.keys({
  active: 0,
  trialing: 0,
  past_due: 0,
  paused: 0,
  canceled: 0,
  expired: 0,
} satisfies Record<SubscriptionStatus, 0>) as SubscriptionStatus[];

/**
 * The three inputs every metric is derived from, from either source, each a small CTE: count and
 * plan_cost sums per status (all, monthly plans, yearly plans); plan_cost sum per start month in
 * the 12-month window; the 5 users with the highest plan_cost sum. What is built on top of them is
 * the same for both sources, so both answers come from the same arithmetic. Constants are
 * literals, not parameters, so the prepared statement gets one generic plan.
 */
export function analyticsQuery(db: Kysely<Database>, source: AnalyticsSource) {
  const fromAggregates = source === 'aggregates';
  return (
    db
      // Bounds computed once, in UTC, from the statement's now(): the answer is true as of that instant.
      .with('bounds', (qc) =>
        qc.selectNoFrom([
          sql<Date>`now()`.as('as_of'),
          sql<string>`(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '11 months')::date`.as('first_month'),
          sql<string>`date_trunc('month', now() AT TIME ZONE 'UTC')::date`.as('last_month'),
          sql<string>`(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month')::date`.as('end_month'),
        ]),
      )
      .with('status_totals', (qc) =>
        fromAggregates
          ? qc
              .selectFrom('analytics_status_totals')
              .select((eb) => [
                'status',
                eb.fn.sum<string>('subscription_count').as('subscription_count'),
                eb.fn.sum<string>('plan_cost_sum').as('revenue'),
                eb.fn.sum<string>('plan_cost_sum').filterWhere('billing_period', '=', sql.lit('month')).as('monthly_plans'),
                eb.fn.sum<string>('plan_cost_sum').filterWhere('billing_period', '=', sql.lit('year')).as('yearly_plans'),
              ])
              .groupBy('status')
          : qc
              .selectFrom('subscriptions')
              .select((eb) => [
                'status',
                eb.fn.countAll<string>().as('subscription_count'),
                eb.fn.sum<string>('plan_cost').as('revenue'),
                eb.fn.sum<string>('plan_cost').filterWhere('billing_period', '=', sql.lit('month')).as('monthly_plans'),
                eb.fn.sum<string>('plan_cost').filterWhere('billing_period', '=', sql.lit('year')).as('yearly_plans'),
              ])
              .groupBy('status'),
      )
      .with('month_totals', (qc) =>
        fromAggregates
          ? qc
              .selectFrom(['analytics_month_revenue as r', 'bounds'])
              .whereRef('r.month', '>=', 'bounds.first_month')
              .whereRef('r.month', '<', 'bounds.end_month')
              .select((eb) => ['r.month', eb.fn.sum<string>('r.plan_cost_sum').as('revenue')])
              .groupBy('r.month')
          : qc
              .selectFrom(['subscriptions as s', 'bounds'])
              // A range on start_date: an index range scan over the window, not the whole table.
              .whereRef('s.start_date', '>=', 'bounds.first_month')
              .whereRef('s.start_date', '<', 'bounds.end_month')
              .select((eb) => [sql<string>`date_trunc('month', s.start_date)::date`.as('month'), eb.fn.sum<string>('s.plan_cost').as('revenue')])
              .groupBy(sql`1`),
      )
      .with('user_totals', (qc) =>
        fromAggregates
          ? qc.selectFrom('analytics_user_totals').select(['user_id', 'plan_cost_sum as total']).orderBy('plan_cost_sum', 'desc').orderBy('user_id').limit(sql.lit(5))
          : qc
              .selectFrom('subscriptions')
              .select((eb) => ['user_id', eb.fn.sum<string>('plan_cost').as('total')])
              .groupBy('user_id')
              .orderBy('total', 'desc')
              .orderBy('user_id')
              .limit(sql.lit(5)),
      )
      // MRR as the contract defines it: each active subscription's MRR (yearly plans round(plan_cost / 12, 2) each),
      // summed; from the history's aggregates (migration 0010), every month's changes of active subscriptions.
      .with('mrr_total', (qc) =>
        fromAggregates
          ? qc
              .selectFrom('history_status_changes')
              .where('span', '=', sql.lit('month'))
              .where('status', '=', sql.lit('active'))
              .select(sql<string>`coalesce(sum(mrr_sum), 0)`.as('total'))
          : qc
              .selectFrom('subscriptions')
              .where('status', '=', sql.lit('active'))
              .select(sql<string>`coalesce(sum(CASE billing_period WHEN 'year' THEN round(plan_cost / 12, 2) ELSE plan_cost END), 0)`.as('total')),
      )
      // Every scalar metric and by_status in one pass over the (at most six) per-status rows.
      .with('summary', (qc) =>
        qc.selectFrom('status_totals').select((eb) => {
          const active = eb('status', '=', sql.lit('active'));
          const activeSum = (column: 'monthly_plans' | 'yearly_plans') => eb.fn.coalesce(eb.fn.sum<string>(column).filterWhere(active), sql<string>`0`);
          return [
            eb.fn.coalesce(eb.fn.sum<string>('subscription_count'), sql<string>`0`).as('subscription_count'),
            eb.fn.coalesce(eb.fn.sum<string>('subscription_count').filterWhere(active), sql<string>`0`).as('active_subscription_count'),
            eb.fn.sum<string>('revenue').filterWhere(active).as('total_recurring_revenue'),
            // sum / count is exactly how PostgreSQL's avg(numeric) divides, so this equals round(avg(plan_cost), 2).
            sql<string | null>`round(sum(revenue) / nullif(sum(subscription_count), 0), 2)`.as('average_subscription_cost'),
            sql<string>`(SELECT total FROM mrr_total)`.as('mrr'),
            sql<string>`${activeSum('monthly_plans')} * 12 + ${activeSum('yearly_plans')}`.as('arr'),
            // Money crosses into JSON as text: a JSON number would become a float in JavaScript.
            eb.fn
              .coalesce(
                eb.fn.agg<Array<{ status: SubscriptionStatus; count: number; revenue: string }>>('json_agg', [
                  jsonBuildObject({
                    status: eb.ref('status'),
                    count: eb.cast<number>('subscription_count', 'bigint'),
                    revenue: eb.cast<string>('revenue', 'text'),
                  }),
                ]),
                sql<[]>`'[]'`,
              )
              .as('by_status'),
          ];
        }),
      )
      .selectFrom(['bounds', 'summary'])
      .select((eb) => [
        'bounds.as_of',
        eb.cast<string>('summary.subscription_count', 'bigint').as('subscription_count'),
        eb.cast<string>('summary.active_subscription_count', 'bigint').as('active_subscription_count'),
        eb.cast<string | null>('summary.total_recurring_revenue', 'text').as('total_recurring_revenue'),
        eb.cast<string | null>('summary.average_subscription_cost', 'text').as('average_subscription_cost'),
        eb.cast<string>('summary.mrr', 'text').as('mrr'),
        eb.cast<string>('summary.arr', 'text').as('arr'),
        'summary.by_status',
        jsonArrayFrom(
          eb
            .selectFrom(sql<{ month: string }>`generate_series(bounds.first_month, bounds.last_month, interval '1 month')`.as('month'))
            .leftJoin('month_totals', (join) => join.onRef('month_totals.month', '=', sql`month.month::date`))
            .select([sql<string>`to_char(month.month, 'YYYY-MM')`.as('month'), sql<string | null>`month_totals.revenue::text`.as('revenue')])
            .orderBy('month.month'),
        ).as('monthly_revenue'),
        jsonArrayFrom(
          eb
            .selectFrom('user_totals')
            .innerJoin('users', 'users.id', 'user_totals.user_id')
            .select(['user_totals.user_id', 'users.name', 'users.email', sql<string>`user_totals.total::text`.as('total_value')])
            .orderBy('user_totals.total', 'desc')
            .orderBy('user_totals.user_id'),
        ).as('top_users'),
      ])
  );
}

type AnalyticsRow = InferResult<ReturnType<typeof analyticsQuery>>[number];
/** The query takes no input: built and compiled once per source, then prepared on each connection. */
const compiled = new Map<AnalyticsSource, CompiledQuery<AnalyticsRow>>();

/** All metrics in one statement (one round trip, one snapshot), read from `source`. */
export async function readAnalytics(db: Kysely<Database>, source: AnalyticsSource): Promise<Analytics> {
  let query = compiled.get(source);
  // Parsing and planning this many CTEs costs several times running them on the aggregates: prepared.
  if (!query) compiled.set(source, (query = analyticsQuery(db, source).compile()));
  const [row] = await runPrepared<AnalyticsRow>(db, query.sql, query.parameters);
  if (!row) throw new Error('the analytics query returned no row');
  const byStatus = new Map(row.by_status.map((s) => [s.status, s]));
  return {
    as_of: row.as_of.toISOString(),
    total_recurring_revenue: formatMoney(row.total_recurring_revenue),
    average_subscription_cost: formatMoney(row.average_subscription_cost),
    monthly_revenue: row.monthly_revenue.map((m) => ({ month: m.month, revenue: formatMoney(m.revenue) })),
    top_users: row.top_users.map((u) => ({ user_id: u.user_id, name: u.name, email: u.email, total_value: formatMoney(u.total_value) })),
    subscription_count: Number(row.subscription_count),
    active_subscription_count: Number(row.active_subscription_count),
    by_status: STATUSES.map((status) => ({
      status,
      count: byStatus.get(status)?.count ?? 0,
      revenue: formatMoney(byStatus.get(status)?.revenue),
    })),
    mrr: formatMoney(row.mrr),
    arr: formatMoney(row.arr),
  };
}

export function analyticsHandlers(_deps: Deps) {
  return {
    async getAnalytics({ query, ctx, db }) {
      const source = query.source ?? 'aggregates';
      if (query.as_of === undefined) sendObject(ctx, 200, await readAnalytics(db, source));
      else sendJsonText(ctx, 200, await readAnalyticsAsOfJson(db, query.as_of, source));
    },
  } satisfies Partial<OperationHandlers>;
}
