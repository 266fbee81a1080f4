/**
 * `/webhook-endpoints`: where events are delivered (src/webhooks/ delivers them), and each
 * endpoint's delivery log with its retry operation. docs/webhooks.md tells the whole story.
 */
import { randomBytes } from 'node:crypto';
import { sql, type Kysely, type Selectable } from 'kysely';
import type { components } from '../../generated/api.js';
import type { Database } from '../db/schema.js';
import type { Deps } from '../deps.js';
import { ConflictError, NotFoundError } from '../errors.js';
import type { OperationHandlers } from '../http/operation.js';
import { badRequest } from '../http/problem.js';
import { pageRequest, sendObject, sendPage } from '../http/respond.js';
import type { AppContext } from '../http/state.js';
import { checkTargetUrl, RefusedTargetError, type TargetPolicy } from '../webhooks/targets.js';
import type { WebhookEndpointsTable } from '../webhooks/tables.js';
import { writeIfMatch } from './conditional.js';

type WebhookEndpoint = components['schemas']['WebhookEndpoint'];
type WebhookDelivery = components['schemas']['WebhookDelivery'];
type EndpointRow = Pick<Selectable<WebhookEndpointsTable>, (typeof endpointColumns)[number]>;

const endpointColumns = ['id', 'url', 'event_types', 'description', 'enabled', 'created_at', 'updated_at'] as const;

const toEndpoint = (row: EndpointRow): WebhookEndpoint => ({
  id: row.id,
  url: row.url,
  event_types: row.event_types as WebhookEndpoint['event_types'],
  description: row.description,
  enabled: row.enabled,
  created_at: row.created_at.toISOString(),
  updated_at: row.updated_at.toISOString(),
});

/** A new signing secret: whsec_ + base64 of 32 random bytes (Standard Webhooks' form). */
const newSecret = () => `whsec_${randomBytes(32).toString('base64')}`;

/** 400 naming /url when the target is not an http(s) URL of a public host. */
async function checkUrl(url: string, policy: TargetPolicy): Promise<void> {
  try {
    await checkTargetUrl(url, policy);
  } catch (err) {
    if (err instanceof RefusedTargetError) throw badRequest(`url is not an allowed webhook target: ${err.message}`, [{ pointer: '/url', message: err.message }]);
    throw err;
  }
}

const findEndpoint = (db: Kysely<Database>, id: number) => db.selectFrom('webhook_endpoints').select(endpointColumns).where('id', '=', id);

async function getEndpoint(db: Kysely<Database>, id: number): Promise<EndpointRow> {
  const row = await findEndpoint(db, id).executeTakeFirst();
  if (!row) throw new NotFoundError('webhook endpoint', id);
  return row;
}

/** A delivery with its attempts, oldest first, as one JSON value per row. */
function deliveriesQuery(db: Kysely<Database>, endpointId: number) {
  return db
    .selectFrom('webhook_deliveries as d')
    .select([
      'd.id',
      'd.endpoint_id',
      'd.event_id',
      'd.event_type',
      'd.status',
      'd.attempt_count',
      'd.next_attempt_at',
      'd.created_at',
      sql<WebhookDelivery['attempts']>`coalesce((
        SELECT json_agg(json_build_object(
                 'attempt', a.attempt, 'trigger', a.trigger,
                 'attempted_at', to_char(a.attempted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                 'succeeded', coalesce(a.status_code BETWEEN 200 AND 299 AND a.error IS NULL, false),
                 'status_code', a.status_code, 'duration_ms', a.duration_ms, 'error', a.error)
               ORDER BY a.attempt)
        FROM webhook_attempts a WHERE a.delivery_id = d.id), '[]'::json)`.as('attempts'),
    ])
    .where('d.endpoint_id', '=', endpointId);
}
type DeliveryRow = Awaited<ReturnType<ReturnType<typeof deliveriesQuery>['executeTakeFirstOrThrow']>>;

const toDelivery = (row: DeliveryRow): WebhookDelivery => ({
  id: row.id,
  endpoint_id: row.endpoint_id,
  event_id: row.event_id,
  event_type: row.event_type,
  status: row.status,
  attempt_count: row.attempt_count,
  next_attempt_at: row.next_attempt_at?.toISOString() ?? null,
  created_at: row.created_at.toISOString(),
  attempts: row.attempts,
});

export function webhookEndpointHandlers({ cursors, webhookTargets }: Deps) {
  const update = (db: Kysely<Database>, ctx: AppContext, id: number, changes: Partial<Pick<EndpointRow, 'url' | 'event_types' | 'enabled' | 'description'>>) =>
    writeIfMatch(db, ctx, {
      what: ['webhook endpoint', id],
      lockCurrent: (trx) => findEndpoint(trx, id).forUpdate().executeTakeFirst(),
      represent: toEndpoint,
      write: (executor) =>
        Object.keys(changes).length === 0
          ? findEndpoint(executor, id).executeTakeFirst()
          : executor.updateTable('webhook_endpoints').set(changes).where('id', '=', id).returning(endpointColumns).executeTakeFirst(),
    });

  return {
    async listWebhookEndpoints({ query, ctx, db }) {
      const page = pageRequest(cursors, query, 'webhook_endpoints:id', 1);
      let q = db
        .selectFrom('webhook_endpoints')
        .select(endpointColumns)
        .orderBy('id')
        .limit(page.limit + 1);
      if (page.after) q = q.where('id', '>', Number(page.after[0]));
      sendPage(ctx, cursors, page, 'webhook_endpoints:id', await q.execute(), toEndpoint, (row) => [row.id]);
    },

    async createWebhookEndpoint({ body, ctx, db }) {
      await checkUrl(body.url, webhookTargets);
      const row = await db
        .insertInto('webhook_endpoints')
        .values({ url: body.url, event_types: body.event_types, description: body.description ?? null, secret: newSecret() })
        .returning([...endpointColumns, 'secret'])
        .executeTakeFirstOrThrow();
      sendObject(ctx, 201, { ...toEndpoint(row), secret: row.secret }, `/api/webhook-endpoints/${row.id}`);
    },

    async getWebhookEndpoint({ path, ctx, db }) {
      sendObject(ctx, 200, toEndpoint(await getEndpoint(db, path.id)));
    },

    async updateWebhookEndpoint({ path, body, ctx, db }) {
      if (body.url !== undefined) await checkUrl(body.url, webhookTargets);
      const changes = Object.fromEntries(Object.entries(body).filter(([, value]) => value !== undefined));
      sendObject(ctx, 200, toEndpoint(await update(db, ctx, path.id, changes)));
    },

    async deleteWebhookEndpoint({ path, ctx, db }) {
      await writeIfMatch(db, ctx, {
        what: ['webhook endpoint', path.id],
        lockCurrent: (trx) => findEndpoint(trx, path.id).forUpdate().executeTakeFirst(),
        represent: toEndpoint,
        write: (executor) => executor.deleteFrom('webhook_endpoints').where('id', '=', path.id).returning('id').executeTakeFirst(),
      });
      ctx.status = 204;
    },

    async listWebhookDeliveries({ path, query, ctx, db }) {
      await getEndpoint(db, path.id);
      const sort = `webhook_deliveries:${query.status ?? ''}:${query.event_id ?? ''}`;
      const page = pageRequest(cursors, query, sort, 1);
      let q = deliveriesQuery(db, path.id)
        .orderBy('d.id', 'desc')
        .limit(page.limit + 1);
      if (page.after) q = q.where('d.id', '<', Number(page.after[0]));
      if (query.status !== undefined) q = q.where('d.status', '=', query.status);
      if (query.event_id !== undefined) q = q.where('d.event_id', '=', query.event_id);
      sendPage(ctx, cursors, page, sort, await q.execute(), toDelivery, (row) => [row.id]);
    },

    async retryWebhookDelivery({ path, ctx, db }) {
      const endpoint = await getEndpoint(db, path.id);
      if (!endpoint.enabled) throw new ConflictError(`webhook endpoint ${path.id} is disabled: enable it first (PATCH enabled: true)`);
      // Due now; the worker makes the attempt (off the request path) at its next look, within WEBHOOK_POLL_MS.
      const retried = await db
        .updateTable('webhook_deliveries')
        .set({ retry_requested: true, next_attempt_at: sql<Date>`now()` })
        .where('id', '=', path.delivery_id)
        .where('endpoint_id', '=', path.id)
        .returning('id')
        .executeTakeFirst();
      if (!retried) throw new NotFoundError(`delivery of webhook endpoint ${path.id}:`, path.delivery_id);
      const row = await deliveriesQuery(db, path.id).where('d.id', '=', retried.id).executeTakeFirstOrThrow();
      ctx.status = 202;
      ctx.body = JSON.stringify(toDelivery(row));
      ctx.type = 'application/json';
    },
  } satisfies Partial<OperationHandlers>;
}
