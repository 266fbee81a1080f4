import type { Kysely, Selectable } from 'kysely';
import type { components } from '../../generated/api.js';
import type { Database, FeaturesTable } from '../db/schema.js';
import type { Deps } from '../deps.js';
import { InvalidInputError, type FieldError } from '../errors.js';
import type { OperationHandlers } from '../http/operation.js';
import { pageRequest, sendJsonText, sendObject, sendPage } from '../http/respond.js';
import { byId } from './by-id.js';

type Feature = components['schemas']['Feature'];
type FeatureRow = Selectable<FeaturesTable>;

export const toFeature = (row: FeatureRow): Feature => ({
  id: row.id,
  name: row.name,
  description: row.description,
  created_at: row.created_at.toISOString(),
  updated_at: row.updated_at.toISOString(),
});

const features = byId('features', 'feature', toFeature);

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
  throw new InvalidInputError(`feature ${all.join(', ')} does not exist`, errors);
}

/** The page query of the feature list (exported for EXPLAIN): `q` is served by the trigram index of migration 0005. */
export function featurePageQuery(db: Kysely<Database>, cursors: Deps['cursors'], query: { limit?: number; cursor?: string; q?: string }) {
  const page = pageRequest(cursors, query, 'id', 1);
  let q = db
    .selectFrom('features')
    .selectAll()
    .orderBy('id')
    .limit(page.limit + 1);
  if (page.after) q = q.where('id', '>', Number(page.after[0]));
  if (query.q !== undefined) q = q.where('name', 'ilike', `%${escapeLike(query.q)}%`);
  return { q, page };
}

export function featureHandlers({ cursors }: Deps) {
  return {
    async listFeatures({ query, ctx, db }) {
      const { q, page } = featurePageQuery(db, cursors, query);
      sendPage(ctx, cursors, page, 'id', await q.execute(), toFeature, (row) => [row.id]);
    },

    async createFeature({ body, ctx, db }) {
      const row = await db
        .insertInto('features')
        .values({ name: body.name, description: body.description ?? null })
        .returningAll()
        .executeTakeFirstOrThrow();
      sendObject(ctx, 201, toFeature(row), `/api/features/${row.id}`);
    },

    async getFeature({ path, ctx, db }) {
      sendJsonText(ctx, 200, await features.getJson(db, path.id));
    },

    async updateFeature({ path, body, ctx, db }) {
      sendObject(ctx, 200, toFeature(await features.update(db, ctx, path.id, body)));
    },

    async replaceFeature({ path, body, ctx, db }) {
      sendObject(ctx, 200, toFeature(await features.update(db, ctx, path.id, { name: body.name, description: body.description ?? null })));
    },

    async deleteFeature({ path, ctx, db }) {
      // While a subscription includes the feature, the RESTRICT foreign key refuses: a 409 (pg-errors.ts).
      await features.delete(db, ctx, path.id);
      ctx.status = 204;
    },
  } satisfies Partial<OperationHandlers>;
}
