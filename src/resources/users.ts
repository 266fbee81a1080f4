import type { Selectable } from 'kysely';
import type { components } from '../../generated/api.js';
import type { UsersTable } from '../db/schema.js';
import type { Deps } from '../deps.js';
import type { OperationHandlers } from '../http/operation.js';
import { pageRequest, sendJsonText, sendObject, sendPage } from '../http/respond.js';
import { byId } from './by-id.js';

type User = components['schemas']['User'];
type UserRow = Selectable<UsersTable>;

export const toUser = (row: UserRow): User => ({
  id: row.id,
  name: row.name,
  email: row.email,
  created_at: row.created_at.toISOString(),
  updated_at: row.updated_at.toISOString(),
});

export const users = byId('users', 'user', toUser);

export function userHandlers({ cursors }: Deps) {
  return {
    async listUsers({ query, ctx, db }) {
      const page = pageRequest(cursors, query, 'id', 1);
      let q = db
        .selectFrom('users')
        .selectAll()
        .orderBy('id')
        .limit(page.limit + 1);
      if (page.after) q = q.where('id', '>', Number(page.after[0]));
      if (query.email !== undefined) {
        const email = query.email;
        q = q.where((eb) => eb(eb.fn('lower', ['email']), '=', eb.fn('lower', [eb.val(email)])));
      }
      sendPage(ctx, cursors, page, 'id', await q.execute(), toUser, (row) => [row.id]);
    },

    async createUser({ body, ctx, db }) {
      const row = await db.insertInto('users').values({ name: body.name, email: body.email }).returningAll().executeTakeFirstOrThrow();
      sendObject(ctx, 201, toUser(row), `/api/users/${row.id}`);
    },

    async getUser({ path, ctx, db }) {
      sendJsonText(ctx, 200, await users.getJson(db, path.id));
    },

    async updateUser({ path, body, ctx, db }) {
      sendObject(ctx, 200, toUser(await users.update(db, ctx, path.id, body)));
    },

    async replaceUser({ path, body, ctx, db }) {
      sendObject(ctx, 200, toUser(await users.update(db, ctx, path.id, { name: body.name, email: body.email })));
    },

    async deleteUser({ path, ctx, db }) {
      await users.delete(db, ctx, path.id);
      ctx.status = 204;
    },
  } satisfies Partial<OperationHandlers>;
}
