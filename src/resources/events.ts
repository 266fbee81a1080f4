/**
 * The history (db/migrations/0006_history.sql): `GET /events`, a feed a client can follow without
 * ever missing an event, and `GET /events/{id}`. docs/events.md explains why the feed never skips.
 */
import { createHash } from 'node:crypto';
import { sql, type ExpressionBuilder, type Kysely, type Selectable } from 'kysely';
import type Koa from 'koa';
import type { components, operations } from '../../generated/api.js';
import type { Database, EventsTable } from '../db/schema.js';
import type { Deps } from '../deps.js';
import { NotFoundError } from '../errors.js';
import type { OperationHandlers } from '../http/operation.js';
import { badRequest } from '../http/problem.js';
import { DEFAULT_LIMIT, sendObject } from '../http/respond.js';

type Event = components['schemas']['Event'];
/** An event as read: its columns, and its object's fields (row_to_json of its object column). */
type EventRow = Pick<Selectable<EventsTable>, 'id' | 'xid' | 'type' | 'occurred_at' | 'object_type' | 'object_id' | 'previous_attributes'> & {
  object: Record<string, unknown>;
};
type ListQuery = NonNullable<operations['listEvents']['parameters']['query']>;
type EventType = Event['type'];
type TypeFilter = NonNullable<ListQuery['type']>[number];

/**
 * The columns of an event, its object as JSON in the API's field order (the row types of migration
 * 0006 list the fields as the to* functions of the resource modules do), for any query on events.
 */
export const eventColumns = (eb: ExpressionBuilder<Database, 'events'>) =>
  [
    'events.id',
    'events.xid',
    'events.type',
    'events.occurred_at',
    'events.object_type',
    'events.object_id',
    'events.previous_attributes',
    eb.fn
      .coalesce(
        sql<Record<string, unknown>>`row_to_json(events.object_user)`,
        sql<Record<string, unknown>>`row_to_json(events.object_feature)`,
        sql<Record<string, unknown>>`row_to_json(events.object_subscription)`,
        sql<Record<string, unknown>>`row_to_json(events.object_subscription_feature)`,
      )
      .$notNull()
      .as('object'),
  ] as const;

/** The fields the database keeps as timestamps; the API writes them as toISOString() does. */
const TIMESTAMPS = new Set(['created_at', 'updated_at', 'added_at']);

/** Fields in the order of `order` (the object's, for previous_attributes), timestamps as the API writes them. */
function asShown(value: Record<string, unknown>, order: readonly string[]): Record<string, unknown> {
  const shown: Record<string, unknown> = {};
  for (const field of order) {
    if (!(field in value)) continue;
    const v = value[field];
    shown[field] = TIMESTAMPS.has(field) && typeof v === 'string' ? new Date(v).toISOString() : v;
  }
  return shown;
}

/** An event as GET /events shows it (and webhook deliveries send it). */
export function toEvent(row: EventRow): Event {
  const fields = Object.keys(row.object);
  return {
    id: row.id,
    type: row.type,
    occurred_at: row.occurred_at.toISOString(),
    object_type: row.object_type,
    object_id: row.object_id,
    data: {
      object: asShown(row.object, fields),
      previous_attributes: asShown(row.previous_attributes, fields),
    },
  } as Event;
}

/** Every event type, for expanding `subscription.*` and the like. */
const EVENT_TYPES: readonly EventType[] = [
  'user.created',
  'user.updated',
  'user.deleted',
  'subscription.created',
  'subscription.updated',
  'subscription.deleted',
  'feature.created',
  'feature.updated',
  'feature.deleted',
  'subscription_feature.attached',
  'subscription_feature.updated',
  'subscription_feature.detached',
];

/** `subscription.*` is every type of that object (the dot keeps subscription_feature.* out). */
const expandTypes = (filters: TypeFilter[]): EventType[] => EVENT_TYPES.filter((type) => filters.some((f) => (f.endsWith('.*') ? type.startsWith(f.slice(0, -1)) : type === f)));

/**
 * A position in the feed: after the event (xid, id). The feed's order is the writing transaction's
 * id, then the event's id; xid8 travels as a decimal string (it may pass 2^53).
 */
interface FeedPosition {
  xid: string;
  id: number;
}
const START: FeedPosition = { xid: '0', id: 0 };

/**
 * The filters of a request, in a canonical form: a cursor is bound to them (it may point past
 * events that did not match, so it must not continue a list with other filters).
 */
function filterKey(query: ListQuery): string {
  const { type, object_type, object_id, user_id, occurred_from, occurred_to } = query;
  const filters = { type: type ? expandTypes(type) : undefined, object_type, object_id, user_id, occurred_from, occurred_to };
  const present = Object.entries(filters).filter(([, value]) => value !== undefined);
  if (present.length === 0) return 'events';
  return `events:${createHash('sha256').update(JSON.stringify(present)).digest('base64url').slice(0, 16)}`;
}

/**
 * One page of the feed and the horizon it was read at, in ONE statement: the horizon must come from
 * the very snapshot the page is read with. Every transaction that can still commit has an xid at or
 * above pg_snapshot_xmin(pg_current_snapshot()), and every event below it that this snapshot does
 * not see was rolled back; so no event can ever appear before a position this page serves.
 * (Taken in a later statement, the horizon could pass events committed in between, unseen.)
 */
export function eventPageQuery(db: Kysely<Database>, query: ListQuery, after: FeedPosition | undefined, limit: number) {
  return db
    .with('horizon', (qb) => qb.selectNoFrom(sql<string>`pg_snapshot_xmin(pg_current_snapshot())`.as('xmin')))
    .selectFrom('horizon')
    .leftJoinLateral(
      (eb) => {
        let page = eb
          .selectFrom('events')
          .select(eventColumns)
          .where(sql<boolean>`events.xid < horizon.xmin`);
        // A row comparison: one range condition on the index (xid, id), or on (user_id | object_id, xid, id).
        if (after) page = page.where(sql<boolean>`(events.xid, events.id) > (${after.xid}::xid8, ${after.id}::bigint)`);
        if (query.type !== undefined) page = page.where('events.type', 'in', expandTypes(query.type));
        if (query.object_type !== undefined) page = page.where('events.object_type', '=', query.object_type);
        if (query.object_id !== undefined) page = page.where('events.object_id', '=', query.object_id);
        if (query.user_id !== undefined) page = page.where('events.user_id', '=', query.user_id);
        if (query.occurred_from !== undefined) page = page.where(sql<boolean>`events.occurred_at >= ${query.occurred_from}::timestamptz`);
        if (query.occurred_to !== undefined) page = page.where(sql<boolean>`events.occurred_at <= ${query.occurred_to}::timestamptz`);
        return page
          .orderBy('events.xid')
          .orderBy('events.id')
          .limit(limit + 1)
          .as('e');
      },
      (join) => join.onTrue(),
    )
    .select(['horizon.xmin as horizon', 'e.id', 'e.xid', 'e.type', 'e.occurred_at', 'e.object_type', 'e.object_id', 'e.object', 'e.previous_attributes'])
    .orderBy('e.xid')
    .orderBy('e.id');
}

function sendEventPage(ctx: Koa.Context, cursors: Deps['cursors'], sort: string, next: FeedPosition, events: Event[], hasMore: boolean): void {
  const nextCursor = cursors.encode(sort, [next.xid, next.id]);
  // Link rel="next" only when more events are there now; next_cursor is also where to poll.
  if (hasMore) {
    const params = new URLSearchParams(ctx.querystring);
    params.set('cursor', nextCursor);
    ctx.set('Link', `<${ctx.path}?${params.toString()}>; rel="next"`);
  }
  ctx.status = 200;
  ctx.body = { data: events, next_cursor: nextCursor };
}

export function eventHandlers({ db, cursors }: Deps) {
  return {
    async listEvents({ query, ctx }) {
      const limit = query.limit ?? DEFAULT_LIMIT;
      const sort = filterKey(query);
      let after: FeedPosition | undefined;
      if (query.cursor !== undefined) {
        const [xid, id] = cursors.decode(query.cursor, sort, 2);
        // Signed by us, so well-formed; checked anyway so that nothing odd reaches SQL.
        if (typeof xid !== 'string' || !/^[0-9]{1,20}$/.test(xid) || typeof id !== 'number' || !Number.isSafeInteger(id)) {
          throw badRequest('cursor is not a cursor this list issued', [{ parameter: 'cursor', message: 'is invalid' }]);
        }
        after = { xid, id };
      }
      const rows = await eventPageQuery(db, query, after, limit).execute();
      const found = rows.filter((row): row is typeof row & EventRow => row.id !== null);
      const hasMore = found.length > limit;
      const shown = hasMore ? found.slice(0, limit) : found;
      const last = shown.at(-1);
      let next: FeedPosition;
      if (hasMore || (last && sort === 'events')) next = { xid: last!.xid, id: last!.id };
      // A filtered page that is not full has seen every matching event below the horizon: the next
      // read starts there, so polling never scans the events that did not match again.
      else if (sort !== 'events') next = { xid: rows[0]!.horizon, id: 0 };
      // The unfiltered feed with nothing new: the same position (the same cursor) again.
      else next = after ?? START;
      sendEventPage(ctx, cursors, sort, next, shown.map(toEvent), hasMore);
    },

    async getEvent({ path, ctx }) {
      const row = await db.selectFrom('events').select(eventColumns).where('events.id', '=', path.id).executeTakeFirst();
      if (!row) throw new NotFoundError('event', path.id);
      sendObject(ctx, 200, toEvent(row));
    },
  } satisfies Partial<OperationHandlers>;
}
