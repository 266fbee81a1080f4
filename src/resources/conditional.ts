import type { Kysely } from 'kysely';
import type { Database } from '../db/schema.js';
import { inTransaction } from '../db/transaction.js';
import { NotFoundError } from '../errors.js';
import { checkIfMatch, hasIfMatch } from '../http/respond.js';
import type { AppContext } from '../http/state.js';

export interface ConditionalWrite<Row, Result> {
  /** Names the object in a 404, e.g. ['user', 42]. */
  what: [string, number | string];
  /** Reads the current row FOR UPDATE (only when the request has If-Match). */
  lockCurrent: (trx: Kysely<Database>) => Promise<Row | undefined>;
  /** The representation the client's ETag was computed from. */
  represent: (row: Row) => object;
  /** The change itself; undefined when the row does not exist. */
  write: (db: Kysely<Database>) => Promise<Result | undefined>;
}

/**
 * Runs a PATCH/PUT/DELETE honouring If-Match: with the header, the row is locked, compared and
 * changed in one transaction (412 when stale); without it, the change is a single statement.
 */
export async function writeIfMatch<Row, Result>(db: Kysely<Database>, ctx: AppContext, op: ConditionalWrite<Row, Result>): Promise<Result> {
  const missing = () => new NotFoundError(...op.what);
  if (!hasIfMatch(ctx)) {
    const result = await op.write(db);
    if (result === undefined) throw missing();
    return result;
  }
  return inTransaction(db, async (trx) => {
    const current = await op.lockCurrent(trx);
    if (current === undefined) throw missing();
    checkIfMatch(ctx, op.represent(current));
    const result = await op.write(trx);
    if (result === undefined) throw missing();
    return result;
  });
}
