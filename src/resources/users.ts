import type { Selectable } from 'kysely';
import type { components } from '../../generated/api.js';
import type { UsersTable } from '../db/schema.js';
import { writeIfMatch } from '../db/conditional.js';
import type { Deps } from '../deps.js';
import type { OperationHandlers } from '../http/operation.js';
import { notFound } from '../http/problem.js';
import { pageRequest, sendObject, sendPage } from '../http/respond.js';

type User = components['schemas']['User'];
type UserRow = Selectable<UsersTable>;

export const toUser = (row: UserRow): User => ({
  id: row.id,
  name: row.name,
  email: row.email,
  created_at: row.created_at.toISOString(),
  updated_at: row.updated_at.toISOString(),
});

export function userHandlers({ db, cursors }: Deps): OperationHandlers {
  const lockUser = (id: number) => (trx: typeof db) =>
    trx.selectFrom('users').selectAll().where('id', '=', id).forUpdate().executeTakeFirst();

  return {
    async listUsers({ query, ctx }) {
      const page = pageRequest(cursors, query, 'id', 1);
      let q = db.selectFrom('users').selectAll().orderBy('id').limit(page.limit + 1);
      if (page.after) q = q.where('id', '>', Number(page.after[0]));
      if (query.email !== undefined) {
        const email = query.email;
        q = q.where((eb) => eb(eb.fn('lower', ['email']), '=', eb.fn('lower', [eb.val(email)])));
      }
      sendPage(ctx, cursors, page, 'id', await q.execute(), toUser, (row) => [row.id]);
    },

    async createUser({ body, ctx }) {
      const row = await db.insertInto('users').values({ name: body.name, email: body.email }).returningAll().executeTakeFirstOrThrow();
      sendObject(ctx, 201, toUser(row), `/api/users/${row.id}`);
    },

    async getUser({ path, ctx }) {
      const row = await db.selectFrom('users').selectAll().where('id', '=', path.id).executeTakeFirst();
      if (!row) throw notFound('user', path.id);
      sendObject(ctx, 200, toUser(row));
    },

    async updateUser({ path, body, ctx }) {
      const row = await writeIfMatch(db, ctx, {
        what: ['user', path.id],
        lockCurrent: lockUser(path.id),
        represent: toUser,
        write: (executor) =>
          Object.keys(body).length === 0
            ? executor.selectFrom('users').selectAll().where('id', '=', path.id).executeTakeFirst()
            : executor.updateTable('users').set(body).where('id', '=', path.id).returningAll().executeTakeFirst(),
      });
      sendObject(ctx, 200, toUser(row));
    },

    async replaceUser({ path, body, ctx }) {
      const row = await writeIfMatch(db, ctx, {
        what: ['user', path.id],
        lockCurrent: lockUser(path.id),
        represent: toUser,
        write: (executor) =>
          executor.updateTable('users').set({ name: body.name, email: body.email }).where('id', '=', path.id).returningAll().executeTakeFirst(),
      });
      sendObject(ctx, 200, toUser(row));
    },

    async deleteUser({ path, ctx }) {
      await writeIfMatch(db, ctx, {
        what: ['user', path.id],
        lockCurrent: lockUser(path.id),
        represent: toUser,
        write: (executor) => executor.deleteFrom('users').where('id', '=', path.id).returning('id').executeTakeFirst(),
      });
      ctx.status = 204;
    },
  };
}
