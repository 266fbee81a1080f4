import type { Kysely } from 'kysely';
import type { Database } from './schema.js';

/**
 * Runs `work` in a transaction: a new one, or the one `db` already is (a request with an
 * Idempotency-Key runs inside the transaction that also stores its answer), so a handler's
 * statements that belong together stay together either way.
 */
export function inTransaction<T>(db: Kysely<Database>, work: (trx: Kysely<Database>) => Promise<T>): Promise<T> {
  return db.isTransaction ? work(db) : db.transaction().execute(work);
}
