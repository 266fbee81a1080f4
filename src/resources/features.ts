import type { Kysely, Selectable } from 'kysely';
import type { components } from '../../generated/api.js';
import type { Database, FeaturesTable } from '../db/schema.js';
import { writeIfMatch } from '../db/conditional.js';
import type { Deps } from '../deps.js';
import type { OperationHandlers } from '../http/operation.js';
import { badRequest, notFound, type FieldError } from '../http/problem.js';
import { pageRequest, sendObject, sendPage } from '../http/respond.js';

type Feature = components['schemas']['Feature'];
type FeatureRow = Selectable<FeaturesTable>;

export const toFeature = (row: FeatureRow): Feature => ({
  id: row.id,
  name: row.name,
  description: row.description,
  created_at: row.created_at.toISOString(),
  updated_at: row.updated_at.toISOString(),
});

/** `q` is matched literally: LIKE's own wildcards and its escape character lose their meaning. */
const escapeLike = (text: string) => text.replace(/[\\%_]/g, (c) => `\\${c}`);

/**
 * A 400 naming where each feature id of a request body that does not exist was sent (a missing
 * object referenced from the body is the client's input error, not a missing URL). The features
 * found stay locked FOR KEY SHARE until the transaction ends, so none can be deleted before the
 * links to them are written.
 */
export async function assertFeaturesExist(trx: Kysely<Database>, ids: number[], pointerOf: (index: number) => string): Promise<void> {
  if (ids.length === 0) return;
  const found = await trx.selectFrom('features').select('id').where('id', 'in', ids).forKeyShare().execute();
  const existing = new Set(found.map((row) => row.id));
  const missingByPointer = new Map<string, number[]>();
  ids.forEach((id, index) => {
    if (existing.has(id)) return;
    const pointer = pointerOf(index);
    missingByPointer.set(pointer, [...(missingByPointer.get(pointer) ?? []), id]);
  });
  if (missingByPointer.size === 0) return;
  const errors: FieldError[] = [...missingByPointer].map(([pointer, missing]) => ({
    pointer,
    message: `refers to feature ${missing.join(', ')}, which does not exist`,
  }));
  const all = [...missingByPointer.values()].flat();
  throw badRequest(`feature ${all.join(', ')} does not exist`, errors);
}

/** The page query of the feature list (exported for EXPLAIN): `q` is served by the trigram index of migration 0005. */
export function featurePageQuery(db: Kysely<Database>, cursors: Deps['cursors'], query: { limit?: number; cursor?: string; q?: string }) {
  const page = pageRequest(cursors, query, 'id', 1);
  let q = db.selectFrom('features').selectAll().orderBy('id').limit(page.limit + 1);
  if (page.after) q = q.where('id', '>', Number(page.after[0]));
  if (query.q !== undefined) q = q.where('name', 'ilike', `%${escapeLike(query.q)}%`);
  return { q, page };
}

export function featureHandlers({ db, cursors }: Deps): OperationHandlers {
  const lockFeature = (id: number) => (trx: Kysely<Database>) =>
    trx.selectFrom('features').selectAll().where('id', '=', id).forUpdate().executeTakeFirst();
  const what = (id: number): [string, number] => ['feature', id];

  return {
    async listFeatures({ query, ctx }) {
      const { q, page } = featurePageQuery(db, cursors, query);
      sendPage(ctx, cursors, page, 'id', await q.execute(), toFeature, (row) => [row.id]);
    },

    async createFeature({ body, ctx }) {
      const row = await db
        .insertInto('features')
        .values({ name: body.name, description: body.description ?? null })
        .returningAll()
        .executeTakeFirstOrThrow();
      sendObject(ctx, 201, toFeature(row), `/api/features/${row.id}`);
    },

    async getFeature({ path, ctx }) {
      const row = await db.selectFrom('features').selectAll().where('id', '=', path.id).executeTakeFirst();
      if (!row) throw notFound('feature', path.id);
      sendObject(ctx, 200, toFeature(row));
    },

    async updateFeature({ path, body, ctx }) {
      const row = await writeIfMatch(db, ctx, {
        what: what(path.id),
        lockCurrent: lockFeature(path.id),
        represent: toFeature,
        write: (executor) =>
          Object.keys(body).length === 0
            ? executor.selectFrom('features').selectAll().where('id', '=', path.id).executeTakeFirst()
            : executor.updateTable('features').set(body).where('id', '=', path.id).returningAll().executeTakeFirst(),
      });
      sendObject(ctx, 200, toFeature(row));
    },

    async replaceFeature({ path, body, ctx }) {
      const row = await writeIfMatch(db, ctx, {
        what: what(path.id),
        lockCurrent: lockFeature(path.id),
        represent: toFeature,
        write: (executor) =>
          executor
            .updateTable('features')
            .set({ name: body.name, description: body.description ?? null })
            .where('id', '=', path.id)
            .returningAll()
            .executeTakeFirst(),
      });
      sendObject(ctx, 200, toFeature(row));
    },

    async deleteFeature({ path, ctx }) {
      // While a subscription includes the feature, the RESTRICT foreign key refuses: a 409 (pg-errors.ts).
      await writeIfMatch(db, ctx, {
        what: what(path.id),
        lockCurrent: lockFeature(path.id),
        represent: toFeature,
        write: (executor) => executor.deleteFrom('features').where('id', '=', path.id).returning('id').executeTakeFirst(),
      });
      ctx.status = 204;
    },
  };
}
