import { createHash } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { toApiError } from './pg-errors.js';
import { ApiError, badRequest, conflict } from './problem.js';
import type { AppContext } from './state.js';

/** How long a stored response is replayed. */
const RETENTION = '24 hours';
/** Response headers a replay repeats. */
const REPLAYED_HEADERS = ['location', 'etag', 'content-type'];

interface StoredAnswer {
  status: number;
  response_headers: Record<string, string> | null;
  /** The JSON text that was sent, or null for an empty body. */
  response_body: string | null;
  request_hash: string;
}

/** The handler's outcome inside the transaction: its answer was set on ctx, or it refused with a 4xx. */
type Outcome = { kind: 'answered' } | { kind: 'refused'; error: unknown; problem: ApiError } | { kind: 'replay'; stored: StoredAnswer };

/** The key's lock was not free within the wait (lock_not_available): the first request is still running. */
function stillInProgress(err: unknown): never {
  if ((err as { code?: string }).code === '55P03') throw conflict('a request with this Idempotency-Key is still in progress; retry later');
  throw err;
}

class RolledBackRefusal extends Error {
  constructor(readonly outcome: Extract<Outcome, { kind: 'refused' }>) {
    super('the request was refused; its effect is rolled back');
  }
}

/**
 * Idempotency-Key on POST, exactly once (Stripe's promise, without a window): the request's
 * effect and its stored answer are written in one transaction, so they commit together or not
 * at all, whatever instant the process or the database dies at. While it runs, the request holds
 * its key's advisory lock (db/migrations/0007): a concurrent request with the same key waits for
 * it and replays its answer, and answers 409 only if the first is still running after
 * `waitMs`. After a crash the lock is gone with the connection: a retry needs nothing to expire.
 * A 4xx is stored too (its effect rolled back first); a 5xx stores nothing, so the client may retry.
 * Keys are scoped to the API key, and the same key with another request is a 422.
 */
export class Idempotency {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly waitMs: number,
    private readonly onReplay: () => void = () => {},
  ) {}

  /** Runs `effect` (the rest of the request) exactly once per key, with the executor it must write through. */
  async run(ctx: AppContext, effect: (db: Kysely<Database>) => Promise<void>): Promise<void> {
    const key = ctx.get('Idempotency-Key');
    if (!key) return effect(this.db);
    if (key.length > 255) {
      throw badRequest('Idempotency-Key is longer than 255 characters', [{ parameter: 'Idempotency-Key', message: 'must be 1 to 255 characters' }]);
    }
    // Set by authenticate(), which runs first: only a caller with a valid key gets this far.
    const client = ctx.state.client!;
    const requestHash = createHash('sha256')
      .update(`${ctx.path.replace(/\/+$/, '')}\n${JSON.stringify(ctx.request.body ?? null)}`)
      .digest('hex');

    let outcome: Outcome;
    try {
      outcome = await this.db.transaction().execute(async (trx) => {
        const stored = await this.begin(trx, client, key);
        if (stored) return { kind: 'replay', stored } as const;
        try {
          await effect(trx);
        } catch (err) {
          const problem = toApiError(err);
          // Nothing decided (a 5xx, the unexpected): everything rolls back, the key stays free.
          if (!problem || problem.status >= 500) throw err;
          throw new RolledBackRefusal({ kind: 'refused', error: err, problem });
        }
        if (ctx.status >= 500) throw new ApiError(ctx.status, 'the request failed; nothing was stored');
        await this.store(trx, client, key, requestHash, ctx.status, this.answerHeaders(ctx), ctx.body);
        return { kind: 'answered' } as const;
      });
    } catch (err) {
      if (err instanceof RolledBackRefusal) {
        // The effect is rolled back; the refusal is stored in a transaction of its own, unless a
        // concurrent request with this key answered meanwhile: then that answer is the key's.
        const { problem } = err.outcome;
        outcome = await this.db
          .transaction()
          .execute(async (trx) => {
            const stored = await this.begin(trx, client, key);
            if (stored) return { kind: 'replay', stored } as const;
            await this.store(trx, client, key, requestHash, problem.status, { 'content-type': 'application/problem+json' }, problem.toProblem(ctx.state.requestId));
            return err.outcome;
          })
          .catch(stillInProgress);
      } else {
        stillInProgress(err);
      }
    }

    if (outcome.kind === 'refused') throw outcome.error;
    if (outcome.kind === 'replay') this.replay(ctx, outcome.stored, requestHash);
  }

  /** Waits for the key's lock; the stored answer, if the key has one (expired ones are forgotten). */
  private async begin(trx: Kysely<Database>, client: string, key: string): Promise<StoredAnswer | undefined> {
    const { rows } = await sql<StoredAnswer>`
      SELECT status, response_headers, response_body, request_hash
      FROM idempotency_begin(${client}, ${key}, ${`${this.waitMs} milliseconds`}::interval, ${RETENTION}::interval)`.execute(trx);
    return rows[0];
  }

  private async store(trx: Kysely<Database>, client: string, key: string, requestHash: string, status: number, headers: Record<string, string>, body: unknown) {
    await trx
      .insertInto('idempotency_keys')
      .values({
        client,
        key,
        request_hash: requestHash,
        status,
        response_headers: JSON.stringify(headers),
        // Handlers send JSON text (respond.ts); problems are objects.
        response_body: body === undefined || body === null ? null : typeof body === 'string' ? body : JSON.stringify(body),
      })
      .execute();
  }

  private answerHeaders(ctx: AppContext): Record<string, string> {
    const headers: Record<string, string> = {};
    for (const name of REPLAYED_HEADERS) {
      const value = ctx.response.get(name);
      if (value) headers[name] = String(value);
    }
    return headers;
  }

  private replay(ctx: AppContext, stored: StoredAnswer, requestHash: string): void {
    if (stored.request_hash !== requestHash) {
      throw new ApiError(422, 'this Idempotency-Key was already used with a different request; use a new key', [
        { parameter: 'Idempotency-Key', message: 'was used with a different request' },
      ]);
    }
    this.onReplay();
    ctx.status = stored.status;
    for (const [name, value] of Object.entries(stored.response_headers ?? {})) ctx.set(name, value);
    ctx.set('Idempotent-Replayed', 'true');
    if (stored.response_body !== null) {
      ctx.body = stored.response_body;
      ctx.type = stored.response_headers?.['content-type'] ?? 'application/json';
    }
  }
}

/** Deletes stored responses older than 24 hours; run periodically. */
export async function pruneIdempotencyKeys(db: Kysely<Database>): Promise<number> {
  const result = await db
    .deleteFrom('idempotency_keys')
    .where('created_at', '<', sql<Date>`now() - ${RETENTION}::interval`)
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}
