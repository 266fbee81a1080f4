import type { Kysely } from 'kysely';
import type { Database } from './schema.js';

interface Waiter<Row> {
  resolve: (row: Row | undefined) => void;
  reject: (err: unknown) => void;
}

/** The most keys one statement asks for; more waiting keys go out in further statements. */
export const MAX_BATCH = 64;

/**
 * Reads of one row by key that requests make in the same turn of the event loop, sent to
 * PostgreSQL together as one statement once the turn's I/O callbacks have run (setImmediate), as
 * DataLoader does. Each request still gets the row as of a snapshot taken after it arrived (the
 * statement is sent after every read it answers was asked for), so a client reads its own writes;
 * a key with no row is undefined; a failed statement fails every read it answered. Under load the
 * requests parsed in one turn share one round trip, one pool checkout and one execution, instead
 * of each paying its own; alone, a read waits only for the end of its turn.
 *
 * `read` is given 1 to MAX_BATCH distinct keys and returns their rows (in any order).
 */
export function batchedByKey<Row>(read: (db: Kysely<Database>, keys: number[]) => Promise<Row[]>, keyOf: (row: Row) => number) {
  /** Per database instance (a transaction is another): the keys asked for in this turn. */
  const pending = new Map<Kysely<Database>, Map<number, Array<Waiter<Row>>>>();

  function send(db: Kysely<Database>, waiting: Map<number, Array<Waiter<Row>>>): void {
    // A read that throws before its promise fails these reads too, not the process (this runs in a setImmediate callback).
    new Promise<Row[]>((resolve) => resolve(read(db, [...waiting.keys()]))).then(
      (rows) => {
        const byKey = new Map<number, Row>();
        for (const row of rows) byKey.set(keyOf(row), row);
        for (const [key, waiters] of waiting) for (const waiter of waiters) waiter.resolve(byKey.get(key));
      },
      (err: unknown) => {
        for (const waiters of waiting.values()) for (const waiter of waiters) waiter.reject(err);
      },
    );
  }

  function flush(): void {
    for (const [db, keys] of pending) {
      pending.delete(db);
      let batch = new Map<number, Array<Waiter<Row>>>();
      for (const [key, waiters] of keys) {
        batch.set(key, waiters);
        if (batch.size === MAX_BATCH) {
          send(db, batch);
          batch = new Map();
        }
      }
      if (batch.size > 0) send(db, batch);
    }
  }

  return (db: Kysely<Database>, key: number): Promise<Row | undefined> =>
    new Promise((resolve, reject) => {
      if (pending.size === 0) setImmediate(flush);
      let keys = pending.get(db);
      if (!keys) pending.set(db, (keys = new Map<number, Array<Waiter<Row>>>()));
      const waiters = keys.get(key);
      if (waiters) waiters.push({ resolve, reject });
      else keys.set(key, [{ resolve, reject }]);
    });
}

/**
 * A batch's keys as the statement is sent with them: as many as the next power of two at or above
 * their number, so that each table has a handful of prepared statements (1, 2, 4, ... MAX_BATCH
 * keys) and PostgreSQL settles on one generic plan for each; padded by repeating the last key.
 */
export function paddedKeys(keys: number[]): number[] {
  let size = 1;
  while (size < keys.length) size *= 2;
  const padded = keys.slice();
  while (padded.length < size) padded.push(keys[keys.length - 1]!);
  return padded;
}
