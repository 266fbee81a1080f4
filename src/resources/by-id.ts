import { sql, type Kysely, type Selectable, type Updateable } from 'kysely';
import type { Database } from '../db/schema.js';
import { batchedByKey, paddedKeys } from '../db/batched.js';
import { preparedQuery } from '../db/prepared.js';
import { NotFoundError } from '../errors.js';
import type { AppContext } from '../http/state.js';
import { writeIfMatch } from './conditional.js';

/** The tables whose objects are addressed as /<resource>/{id}. */
type ByIdTable = 'users' | 'features' | 'subscriptions';
type Row<T extends ByIdTable> = Selectable<Database[T]>;

/**
 * What every /<resource>/{id} does the same way: read one row (404 when missing), change it
 * (only the given columns; none given: the row as it is) or delete it, honouring If-Match
 * against the representation's ETag. A resource module adds only what is particular to it.
 */
export function byId<T extends ByIdTable>(table: T, what: string, represent: (row: Row<T>) => object) {
  // Kysely checks a query against one table, not a union: the queries are written for `users` (the
  // three tables share `id`) and their rows typed by T at this boundary.
  const name = table as ByIdTable as 'users';
  const find = (db: Kysely<Database>, id: number) => db.selectFrom(name).selectAll().where('id', '=', id);
  // The reads by id: built and planned once.
  const read = preparedQuery((db) => find(db, 0));
  const get = async (db: Kysely<Database>, id: number) => (await read(db, [id]))[0] as Row<T> | undefined;
  // GET's: the representation as JSON text, written by PostgreSQL (migration 0024's api_json, the
  // same text as JSON.stringify(represent(row))), for every id asked for in one turn of the event
  // loop at once (db/batched.ts), by one of a few prepared statements: `id IN ($1, ... $n)` for n a
  // power of two.
  const readJsonOf = new Map<number, (db: Kysely<Database>, ids: number[]) => Promise<Array<{ id: number; json: string }>>>();
  const readJson = batchedByKey(
    (db, ids) => {
      const padded = paddedKeys(ids);
      let read = readJsonOf.get(padded.length);
      if (!read) {
        const placeholders = padded.map(() => 0);
        readJsonOf.set(
          padded.length,
          (read = preparedQuery((db) =>
            db
              .selectFrom(name)
              .select(['id', sql<string>`api_json(${sql.table(name)})`.as('json')])
              .where('id', 'in', placeholders),
          )),
        );
      }
      return read(db, padded);
    },
    (row) => row.id,
  );
  const lockCurrent = (id: number) => (trx: Kysely<Database>) => find(trx, id).forUpdate().executeTakeFirst() as Promise<Row<T> | undefined>;

  return {
    async get(db: Kysely<Database>, id: number): Promise<Row<T>> {
      const row = await get(db, id);
      if (!row) throw new NotFoundError(what, id);
      return row;
    },

    /** GET: the representation as the JSON text to send (404 when missing). */
    async getJson(db: Kysely<Database>, id: number): Promise<string> {
      const row = await readJson(db, id);
      if (!row) throw new NotFoundError(what, id);
      return row.json;
    },

    /** PATCH and PUT: the given columns change (If-Match honoured); the row as it is afterwards. */
    update(db: Kysely<Database>, ctx: AppContext, id: number, changes: Updateable<Database[T]>): Promise<Row<T>> {
      return writeIfMatch(db, ctx, {
        what: [what, id],
        lockCurrent: lockCurrent(id),
        represent,
        write: (executor) =>
          Object.keys(changes).length === 0
            ? get(executor, id)
            : (executor
                .updateTable(name)
                .set(changes as Updateable<Database['users']>)
                .where('id', '=', id)
                .returningAll()
                .executeTakeFirst() as Promise<Row<T> | undefined>),
      });
    },

    async delete(db: Kysely<Database>, ctx: AppContext, id: number): Promise<void> {
      await writeIfMatch(db, ctx, {
        what: [what, id],
        lockCurrent: lockCurrent(id),
        represent,
        write: (executor) => executor.deleteFrom(name).where('id', '=', id).returning('id').executeTakeFirst(),
      });
    },
  };
}
