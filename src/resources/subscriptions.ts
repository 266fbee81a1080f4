import type { Kysely, Selectable, SelectQueryBuilder } from 'kysely';
import type { components, operations } from '../../generated/api.js';
import type { Database, SubscriptionsTable } from '../db/schema.js';
import { inTransaction } from '../db/transaction.js';
import type { Deps } from '../deps.js';
import type { OperationHandlers } from '../http/operation.js';
import { pageRequest, sendJsonText, sendObject, sendPage } from '../http/respond.js';
import type { AppContext } from '../http/state.js';
import { formatMoney, parseMoney } from '../money.js';
import { byId } from './by-id.js';
import { assertFeaturesExist } from './features.js';
import { users } from './users.js';

type Subscription = components['schemas']['Subscription'];
type SubscriptionRow = Selectable<SubscriptionsTable>;
type ListQuery = NonNullable<operations['listSubscriptions']['parameters']['query']>;
type SortName = NonNullable<ListQuery['sort']>;

export const toSubscription = (row: SubscriptionRow): Subscription => ({
  id: row.id,
  user_id: row.user_id,
  status: row.status,
  plan_name: row.plan_name,
  plan_cost: formatMoney(row.plan_cost),
  billing_period: row.billing_period,
  start_date: row.start_date,
  end_date: row.end_date,
  created_at: row.created_at.toISOString(),
  updated_at: row.updated_at.toISOString(),
});

const subscriptions = byId('subscriptions', 'subscription', toSubscription);

/** Every stored field of a full representation (POST, PUT): omitted optional fields take their defaults. */
const storedFields = (body: components['schemas']['SubscriptionInput']) => ({
  user_id: body.user_id,
  status: body.status,
  plan_name: body.plan_name ?? null,
  plan_cost: parseMoney(body.plan_cost, '/plan_cost'),
  billing_period: body.billing_period ?? 'month',
  start_date: body.start_date,
  end_date: body.end_date ?? null,
});

/**
 * Each sort is a keyset over (column, id): every one has an index ending in id
 * (db/migrations/0001_schema.sql), so a page is an index range scan from the cursor on.
 */
const SORTS: Record<SortName, { column: 'id' | 'start_date' | 'plan_cost'; descending: boolean }> = {
  id: { column: 'id', descending: false },
  '-id': { column: 'id', descending: true },
  start_date: { column: 'start_date', descending: false },
  '-start_date': { column: 'start_date', descending: true },
  plan_cost: { column: 'plan_cost', descending: false },
  '-plan_cost': { column: 'plan_cost', descending: true },
};

type SubscriptionQuery = SelectQueryBuilder<Database, 'subscriptions', SubscriptionRow>;

/** Where an id-sorted page starts: ids after (or, descending, before) this one. */
interface IdBound {
  op: '>' | '<';
  id: number;
}

/** Filters combine with AND; each is a plain predicate the planner can match to an index. */
function applyFilters(q: SubscriptionQuery, filters: Omit<ListQuery, 'limit' | 'cursor' | 'sort'>, idBound?: IdBound): SubscriptionQuery {
  const { status, user_id, feature_id, start_date_from, start_date_to, plan_cost_min, plan_cost_max } = filters;
  if (status !== undefined) q = q.where('status', 'in', status);
  if (user_id !== undefined) q = q.where('user_id', '=', user_id);
  if (start_date_from !== undefined) q = q.where('start_date', '>=', start_date_from);
  if (start_date_to !== undefined) q = q.where('start_date', '<=', start_date_to);
  if (plan_cost_min !== undefined) q = q.where('plan_cost', '>=', plan_cost_min);
  if (plan_cost_max !== undefined) q = q.where('plan_cost', '<=', plan_cost_max);
  if (feature_id !== undefined) {
    // A semi-join: walked along (feature_id, subscription_id) for the id sorts, probed through the
    // primary key for the others. The planner does not carry `id > x` over to the junction by
    // itself, and without it a merge join reads the feature's links from the start on every page.
    q = q.where(({ exists, selectFrom, lit }) => {
      let links = selectFrom('subscription_features')
        .select(lit(1).as('one'))
        .whereRef('subscription_features.subscription_id', '=', 'subscriptions.id')
        .where('subscription_features.feature_id', '=', feature_id);
      if (idBound) links = links.where('subscription_features.subscription_id', idBound.op, idBound.id);
      return exists(links);
    });
  }
  return q;
}

/** The page query of a subscription list: filters, keyset condition from the cursor, order, limit + 1 (exported for EXPLAIN). */
export function subscriptionPageQuery(db: Kysely<Database>, cursors: Deps['cursors'], query: ListQuery) {
  const sortName: SortName = query.sort ?? 'id';
  const { column, descending } = SORTS[sortName];
  const direction = descending ? 'desc' : 'asc';
  const after: IdBound['op'] = descending ? '<' : '>';
  const page = pageRequest(cursors, query, sortName, column === 'id' ? 1 : 2);
  const [first, second] = page.after ?? [];
  const idBound = page.after && column === 'id' ? { op: after, id: Number(first) } : undefined;
  let q = applyFilters(db.selectFrom('subscriptions').selectAll(), query, idBound);
  if (idBound) q = q.where('id', idBound.op, idBound.id);
  // Row comparison (col, id) > (a, b): one index range condition, unlike the OR-expanded form.
  else if (page.after) q = q.where(({ eb, refTuple, tuple }) => eb(refTuple(column, 'id'), after, tuple(String(first), Number(second))));
  if (column !== 'id') q = q.orderBy(column, direction);
  q = q.orderBy('id', direction).limit(page.limit + 1);
  const keysOf = (row: SubscriptionRow) => (column === 'id' ? [row.id] : [row[column], row.id]);
  return { q, page, sortName, keysOf };
}

async function sendSubscriptionPage(ctx: AppContext, db: Kysely<Database>, cursors: Deps['cursors'], query: ListQuery): Promise<void> {
  const { q, page, sortName, keysOf } = subscriptionPageQuery(db, cursors, query);
  sendPage(ctx, cursors, page, sortName, await q.execute(), toSubscription, keysOf);
}

export function subscriptionHandlers({ cursors }: Deps) {
  return {
    async listSubscriptions({ query, ctx, db }) {
      await sendSubscriptionPage(ctx, db, cursors, query);
    },

    async listUserSubscriptions({ path, query, ctx, db }) {
      await users.get(db, path.id);
      await sendSubscriptionPage(ctx, db, cursors, { ...query, user_id: path.id });
    },

    async createSubscription({ body, ctx, db }) {
      const values = storedFields(body);
      const featureIds = body.feature_ids ?? [];
      const insert = (executor: Kysely<Database>) => executor.insertInto('subscriptions').values(values).returningAll().executeTakeFirstOrThrow();
      // With features, the subscription and its links are stored together or not at all.
      const row =
        featureIds.length === 0
          ? await insert(db)
          : await inTransaction(db, async (trx) => {
              await assertFeaturesExist(trx, featureIds, () => '/feature_ids');
              const created = await insert(trx);
              await trx
                .insertInto('subscription_features')
                .values(featureIds.map((feature_id) => ({ subscription_id: created.id, feature_id })))
                .execute();
              return created;
            });
      sendObject(ctx, 201, toSubscription(row), `/api/subscriptions/${row.id}`);
    },

    async getSubscription({ path, ctx, db }) {
      sendJsonText(ctx, 200, await subscriptions.getJson(db, path.id));
    },

    async updateSubscription({ path, body, ctx, db }) {
      const { plan_cost, ...rest } = body;
      const changes = plan_cost === undefined ? rest : { ...rest, plan_cost: parseMoney(plan_cost, '/plan_cost') };
      sendObject(ctx, 200, toSubscription(await subscriptions.update(db, ctx, path.id, changes)));
    },

    async replaceSubscription({ path, body, ctx, db }) {
      sendObject(ctx, 200, toSubscription(await subscriptions.update(db, ctx, path.id, storedFields(body))));
    },

    async deleteSubscription({ path, ctx, db }) {
      await subscriptions.delete(db, ctx, path.id);
      ctx.status = 204;
    },
  } satisfies Partial<OperationHandlers>;
}
