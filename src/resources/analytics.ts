import { sql, type CompiledQuery, type InferResult, type Kysely, type RawBuilder } from 'kysely';
import type { components } from '../../generated/api.js';
import { runPrepared } from '../db/prepared.js';
import type { Database, SubscriptionStatus } from '../db/schema.js';
import type { Deps } from '../deps.js';
import type { OperationHandlers } from '../http/operation.js';
import { sendJsonText } from '../http/respond.js';
import { documentKey, keptDocuments } from './kept.js';
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

/** A money value (numeric, or nothing for an empty sum) as the API writes it: two-decimal text. */
const money = (value: RawBuilder<unknown>) => sql<string>`coalesce(${value}, 0)::numeric(30, 2)::text`;
/** The rows' JSON elements joined as one compact JSON array (json_agg would add blanks and line breaks). */
const jsonArray = (element: RawBuilder<unknown>, orderBy: RawBuilder<unknown>) => sql`('[' || coalesce(string_agg(${element}::text, ',' ORDER BY ${orderBy}), '') || ']')::json`;

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
      // Every scalar metric in one pass over the (at most six) per-status rows.
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
          ];
        }),
      )
      // The response body itself, in its field order (the handler sends it as it is): row_to_json
      // writes compact JSON named by the columns and by migration 0019's element types; money as
      // two-decimal text (a JSON number would become a float in JavaScript), by_status in the
      // spec's status order with a zero for a status no subscription has.
      .selectFrom((eb) =>
        eb
          .selectFrom(['bounds', 'summary'])
          .select([
            sql<string>`to_char(bounds.as_of AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`.as('as_of'),
            money(sql.ref('summary.total_recurring_revenue')).as('total_recurring_revenue'),
            money(sql.ref('summary.average_subscription_cost')).as('average_subscription_cost'),
            sql<string>`(SELECT ${jsonArray(
              sql`row_to_json(ROW(to_char(month.month, 'YYYY-MM'), ${money(sql.ref('month_totals.revenue'))})::history_json_month)`,
              sql`month.month`,
            )}
              FROM generate_series(bounds.first_month, bounds.last_month, interval '1 month') AS month (month)
              LEFT JOIN month_totals ON month_totals.month = month.month::date)`.as('monthly_revenue'),
            sql<string>`(SELECT ${jsonArray(
              sql`row_to_json(ROW(user_totals.user_id, users.name, users.email, ${money(sql.ref('user_totals.total'))})::history_json_top_user)`,
              sql`user_totals.total DESC, user_totals.user_id`,
            )}
              FROM user_totals JOIN users ON users.id = user_totals.user_id)`.as('top_users'),
            sql<string>`summary.subscription_count::bigint`.as('subscription_count'),
            sql<string>`summary.active_subscription_count::bigint`.as('active_subscription_count'),
            sql<string>`(SELECT ${jsonArray(
              sql`row_to_json(ROW(s.status, coalesce(t.subscription_count, 0)::bigint, ${money(sql.ref('t.revenue'))})::history_json_status)`,
              sql`s.position`,
            )}
              FROM unnest(ARRAY[${sql.join(STATUSES.map((status) => sql.lit(status)))}]::text[]) WITH ORDINALITY AS s (status, position)
              LEFT JOIN status_totals t ON t.status = s.status)`.as('by_status'),
            money(sql.ref('summary.mrr')).as('mrr'),
            money(sql.ref('summary.arr')).as('arr'),
          ])
          .as('d'),
      )
      .select([
        sql<string>`row_to_json(d)::text`.as('document'),
        // What a later request compares to send this document again (kept.ts), read in the same snapshot.
        documentKey.as('key'),
      ])
  );
}

type AnalyticsRow = InferResult<ReturnType<typeof analyticsQuery>>[number];
/** The query takes no input: built and compiled once per source, then prepared on each connection. */
const compiled = new Map<AnalyticsSource, CompiledQuery<AnalyticsRow>>();

/** All metrics in one statement (one round trip, one snapshot), read from `source`: the response body as JSON text, and its key (kept.ts). */
async function computeAnalytics(db: Kysely<Database>, source: AnalyticsSource): Promise<AnalyticsRow> {
  let query = compiled.get(source);
  // Parsing and planning this many CTEs costs several times running them on the aggregates: prepared.
  if (!query) compiled.set(source, (query = analyticsQuery(db, source).compile()));
  const [row] = await runPrepared<AnalyticsRow>(db, query.sql, query.parameters);
  if (!row) throw new Error('the analytics query returned no row');
  return row;
}

export async function readAnalyticsJson(db: Kysely<Database>, source: AnalyticsSource): Promise<string> {
  return (await computeAnalytics(db, source)).document;
}

export async function readAnalytics(db: Kysely<Database>, source: AnalyticsSource): Promise<Analytics> {
  return JSON.parse(await readAnalyticsJson(db, source)) as Analytics;
}

export function analyticsHandlers(deps: Deps) {
  // One document: it has no parameters.
  const fromAggregates = keptDocuments(
    deps.db,
    (db) => computeAnalytics(db, 'aggregates'),
    () => '',
    1,
  );
  return {
    async getAnalytics({ query, ctx, db }) {
      const source = query.source ?? 'aggregates';
      if (query.as_of === undefined) sendJsonText(ctx, 200, source === 'aggregates' ? await fromAggregates(db, undefined) : await readAnalyticsJson(db, source));
      else sendJsonText(ctx, 200, await readAnalyticsAsOfJson(db, query.as_of, source));
    },
  } satisfies Partial<OperationHandlers>;
}
