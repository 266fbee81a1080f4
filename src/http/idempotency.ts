import { createHash } from 'node:crypto';
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import type Koa from 'koa';
import type { Database } from '../db/schema.js';
import { isApiPath } from './auth.js';
import { toApiError } from './pg-errors.js';
import { ApiError, badRequest, conflict } from './problem.js';

/** How long a stored response is replayed. */
const RETENTION = "interval '24 hours'";
/** A claim older than this belongs to a request that died mid-way; a retry may take it over. */
const ABANDONED_AFTER = "interval '60 seconds'";
/** Response headers a replay repeats. */
const REPLAYED_HEADERS = ['location', 'etag', 'content-type'];

/**
 * Idempotency-Key on POST, as Stripe designed it: the first request with a key claims it; its
 * response (2xx or 4xx, never a 5xx) is stored with a hash of the request and replayed to
 * every retry for 24 hours, so a retry creates nothing new. The same key with another request is
 * a 422; a retry while the first is still running is a 409. Keys are scoped to the API key.
 */
export function idempotency(db: Kysely<Database>): Koa.Middleware {
  return async (ctx, next) => {
    const key = ctx.get('Idempotency-Key');
    if (ctx.method !== 'POST' || !key || !isApiPath(ctx.path)) return next();
    if (key.length > 255) {
      throw badRequest('Idempotency-Key is longer than 255 characters', [{ parameter: 'Idempotency-Key', message: 'must be 1 to 255 characters' }]);
    }
    // Set by authenticate(), which runs first: only a caller with a valid key gets this far.
    const client = ctx.state.client as string;
    const path = ctx.path.replace(/\/+$/, '');
    const requestHash = createHash('sha256').update(`${path}\n${JSON.stringify(ctx.request.body ?? null)}`).digest('hex');
    const mine = db.selectFrom('idempotency_keys').where('client', '=', client).where('key', '=', key);

    // Expired and abandoned claims make way for this one.
    await db
      .deleteFrom('idempotency_keys')
      .where('client', '=', client)
      .where('key', '=', key)
      .where((eb) =>
        eb.or([
          eb('created_at', '<', sql<Date>`now() - ${sql.raw(RETENTION)}`),
          eb.and([eb('status', 'is', null), eb('created_at', '<', sql<Date>`now() - ${sql.raw(ABANDONED_AFTER)}`)]),
        ]),
      )
      .execute();
    const claimed = await db
      .insertInto('idempotency_keys')
      .values({ client, key, request_hash: requestHash, status: null, response_headers: null, response_body: null })
      .onConflict((oc) => oc.columns(['client', 'key']).doNothing())
      .returning('key')
      .executeTakeFirst();

    if (!claimed) {
      const earlier = await mine.select(['request_hash', 'status', 'response_headers', 'response_body']).executeTakeFirst();
      if (!earlier) throw conflict('a request with this Idempotency-Key just finished or expired; retry');
      if (earlier.request_hash !== requestHash) {
        throw new ApiError(422, 'this Idempotency-Key was already used with a different request; use a new key', [
          { parameter: 'Idempotency-Key', message: 'was used with a different request' },
        ]);
      }
      if (earlier.status === null) throw conflict('a request with this Idempotency-Key is still in progress; retry later');
      ctx.status = earlier.status;
      for (const [name, value] of Object.entries(earlier.response_headers ?? {})) ctx.set(name, value);
      ctx.set('Idempotent-Replayed', 'true');
      if (earlier.response_body !== null) {
        ctx.body = earlier.response_body;
        ctx.type = earlier.response_headers?.['content-type'] ?? 'application/json';
      }
      return;
    }

    const store = (status: number, headers: Record<string, string>, body: unknown) =>
      db
        .updateTable('idempotency_keys')
        .set({ status, response_headers: JSON.stringify(headers), response_body: body === undefined ? null : JSON.stringify(body) })
        .where('client', '=', client)
        .where('key', '=', key)
        .execute();
    const forget = () => db.deleteFrom('idempotency_keys').where('client', '=', client).where('key', '=', key).execute();

    try {
      await next();
    } catch (err) {
      const known = toApiError(err);
      if (known && known.status < 500) {
        await store(known.status, { 'content-type': 'application/problem+json' }, known.toProblem(ctx.state.requestId as string));
      } else {
        // Nothing was decided: the client may retry with the same key.
        await forget().catch(() => {});
      }
      throw err;
    }
    if (ctx.status >= 500) {
      await forget();
      return;
    }
    const headers: Record<string, string> = {};
    for (const name of REPLAYED_HEADERS) {
      const value = ctx.response.get(name);
      if (value) headers[name] = value;
    }
    await store(ctx.status, headers, ctx.body);
  };
}

/** Deletes stored responses older than 24 hours; run periodically. */
export async function pruneIdempotencyKeys(db: Kysely<Database>): Promise<number> {
  const result = await db
    .deleteFrom('idempotency_keys')
    .where('created_at', '<', sql<Date>`now() - ${sql.raw(RETENTION)}`)
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}
