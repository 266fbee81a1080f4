import type { Kysely } from 'kysely';
import type { components } from '../../generated/api.js';
import type { Database } from '../db/schema.js';
import { inTransaction } from '../db/transaction.js';
import type { Deps } from '../deps.js';
import { InvalidInputError, NotFoundError, type FieldError } from '../errors.js';
import type { OperationHandlers } from '../http/operation.js';
import { checkIfMatch, etagOf, hasIfMatch, pageRequest, sendObject, sendPage } from '../http/respond.js';
import { writeIfMatch } from './conditional.js';
import { assertFeaturesExist } from './features.js';

type SubscriptionFeature = components['schemas']['SubscriptionFeature'];

interface LinkRow {
  subscription_id: number;
  feature_id: number;
  feature_name: string;
  usage_limit: number | null;
  added_at: Date;
  updated_at: Date;
}

const toLink = (row: LinkRow): SubscriptionFeature => ({
  subscription_id: row.subscription_id,
  feature_id: row.feature_id,
  feature_name: row.feature_name,
  usage_limit: row.usage_limit,
  added_at: row.added_at.toISOString(),
  updated_at: row.updated_at.toISOString(),
});

/** Links with their feature's name, the shape every answer of this resource has. */
const links = (executor: Kysely<Database>) =>
  executor
    .selectFrom('subscription_features')
    .innerJoin('features', 'features.id', 'subscription_features.feature_id')
    .select([
      'subscription_features.subscription_id',
      'subscription_features.feature_id',
      'features.name as feature_name',
      'subscription_features.usage_limit',
      'subscription_features.added_at',
      'subscription_features.updated_at',
    ]);

const link = (executor: Kysely<Database>, subscriptionId: number, featureId: number) =>
  links(executor).where('subscription_features.subscription_id', '=', subscriptionId).where('subscription_features.feature_id', '=', featureId);

/**
 * Locks the subscription against other changes to its set of features (attach and replace take
 * this lock, so a PUT of the whole set is never interleaved with an attach); 404 when it is missing.
 * FOR NO KEY UPDATE still lets foreign-key checks (KEY SHARE) through.
 */
async function lockSubscriptionSet(trx: Kysely<Database>, id: number): Promise<void> {
  const found = await trx.selectFrom('subscriptions').select('id').where('id', '=', id).forNoKeyUpdate().executeTakeFirst();
  if (!found) throw new NotFoundError('subscription', id);
}

/** The whole set of a subscription's links, as PUT returns it; its ETag is what If-Match on PUT compares. */
async function currentSet(executor: Kysely<Database>, id: number): Promise<{ data: SubscriptionFeature[] }> {
  const rows = await links(executor).where('subscription_features.subscription_id', '=', id).orderBy('subscription_features.feature_id').execute();
  return { data: rows.map(toLink) };
}

/** Each feature at most once in a replacement set: later repeats are named. */
function assertNoDuplicates(featureIds: number[]): void {
  const seen = new Set<number>();
  const errors: FieldError[] = [];
  featureIds.forEach((id, index) => {
    if (seen.has(id)) errors.push({ pointer: `/features/${index}/feature_id`, message: `repeats feature ${id}; each feature may appear once` });
    seen.add(id);
  });
  if (errors.length) throw new InvalidInputError('a feature appears more than once in the set', errors);
}

export function subscriptionFeatureHandlers({ cursors }: Deps) {
  const what = (id: number, featureId: number): [string, number] => [`link from subscription ${id} to feature`, featureId];

  return {
    async listSubscriptionFeatures({ path, query, ctx, db }) {
      const subscription = await db.selectFrom('subscriptions').select('id').where('id', '=', path.id).executeTakeFirst();
      if (!subscription) throw new NotFoundError('subscription', path.id);
      const page = pageRequest(cursors, query, 'feature_id', 1);
      // The junction's primary key (subscription_id, feature_id) gives this order and the keyset.
      let q = links(db)
        .where('subscription_features.subscription_id', '=', path.id)
        .orderBy('subscription_features.feature_id')
        .limit(page.limit + 1);
      if (page.after) q = q.where('subscription_features.feature_id', '>', Number(page.after[0]));
      const rows = await q.execute();
      // The first page carries the version of the whole set, for If-Match on PUT: when the page
      // holds the whole set (the usual two or three links), it is the set; otherwise read it all.
      if (!page.after) ctx.set('ETag', etagOf(rows.length <= page.limit ? { data: rows.map(toLink) } : await currentSet(db, path.id)));
      sendPage(ctx, cursors, page, 'feature_id', rows, toLink, (row) => [row.feature_id]);
    },

    async attachSubscriptionFeature({ path, body, ctx, db }) {
      // Attached twice: the primary key says 409; an unknown feature: its foreign key says 400 (pg-errors.ts).
      const row = await inTransaction(db, async (trx) => {
        await lockSubscriptionSet(trx, path.id);
        await trx
          .insertInto('subscription_features')
          .values({ subscription_id: path.id, feature_id: body.feature_id, usage_limit: body.usage_limit ?? null })
          .execute();
        return link(trx, path.id, body.feature_id).executeTakeFirstOrThrow();
      });
      sendObject(ctx, 201, toLink(row), `/api/subscriptions/${path.id}/features/${row.feature_id}`);
    },

    async replaceSubscriptionFeatures({ path, body, ctx, db }) {
      const featureIds = body.features.map((f) => f.feature_id);
      assertNoDuplicates(featureIds);
      const set = await inTransaction(db, async (trx) => {
        await lockSubscriptionSet(trx, path.id);
        // Every change to the set locks the subscription first, so the set compared is the set replaced.
        if (hasIfMatch(ctx)) checkIfMatch(ctx, await currentSet(trx, path.id));
        await assertFeaturesExist(trx, featureIds, (index) => `/features/${index}/feature_id`);
        let removal = trx.deleteFrom('subscription_features').where('subscription_id', '=', path.id);
        if (featureIds.length > 0) removal = removal.where('feature_id', 'not in', featureIds);
        await removal.execute();
        if (featureIds.length > 0) {
          await trx
            .insertInto('subscription_features')
            .values(body.features.map((f) => ({ subscription_id: path.id, feature_id: f.feature_id, usage_limit: f.usage_limit ?? null })))
            // Links that stay keep added_at; only a changed usage_limit touches them (and updated_at).
            .onConflict((oc) =>
              oc
                .columns(['subscription_id', 'feature_id'])
                .doUpdateSet({ usage_limit: (eb) => eb.ref('excluded.usage_limit') })
                .where(({ eb, ref }) => eb('subscription_features.usage_limit', 'is distinct from', ref('excluded.usage_limit'))),
            )
            .execute();
        }
        return currentSet(trx, path.id);
      });
      sendObject(ctx, 200, set);
    },

    async getSubscriptionFeature({ path, ctx, db }) {
      const row = await link(db, path.id, path.feature_id).executeTakeFirst();
      if (!row) throw new NotFoundError(...what(path.id, path.feature_id));
      sendObject(ctx, 200, toLink(row));
    },

    async updateSubscriptionFeature({ path, body, ctx, db }) {
      const row = await writeIfMatch(db, ctx, {
        what: what(path.id, path.feature_id),
        lockCurrent: (trx) => link(trx, path.id, path.feature_id).forUpdate('subscription_features').executeTakeFirst(),
        represent: toLink,
        write: (executor) =>
          body.usage_limit === undefined
            ? link(executor, path.id, path.feature_id).executeTakeFirst()
            : // One statement: the change and the representation it produced (with the feature's name).
              executor
                .with('changed', (w) =>
                  w
                    .updateTable('subscription_features')
                    .set({ usage_limit: body.usage_limit })
                    .where('subscription_id', '=', path.id)
                    .where('feature_id', '=', path.feature_id)
                    .returningAll(),
                )
                .selectFrom('changed')
                .innerJoin('features', 'features.id', 'changed.feature_id')
                .select(['changed.subscription_id', 'changed.feature_id', 'features.name as feature_name', 'changed.usage_limit', 'changed.added_at', 'changed.updated_at'])
                .executeTakeFirst(),
      });
      sendObject(ctx, 200, toLink(row));
    },

    async detachSubscriptionFeature({ path, ctx, db }) {
      await writeIfMatch(db, ctx, {
        what: what(path.id, path.feature_id),
        lockCurrent: (trx) => link(trx, path.id, path.feature_id).forUpdate('subscription_features').executeTakeFirst(),
        represent: toLink,
        write: (executor) =>
          executor.deleteFrom('subscription_features').where('subscription_id', '=', path.id).where('feature_id', '=', path.feature_id).returning('feature_id').executeTakeFirst(),
      });
      ctx.status = 204;
    },
  } satisfies Partial<OperationHandlers>;
}
