/**
 * The history (db/migrations/0006_history.sql): `GET /events`, a feed a client can follow without
 * ever missing an event, and `GET /events/{id}`. docs/events.md explains why the feed never skips.
 */
import { createHash } from 'node:crypto';
import { sql, type Kysely, type Selectable } from 'kysely';
import type Koa from 'koa';
import type { components, operations } from '../../generated/api.js';
import { prepareOnEachConnection, preparedQuery } from '../db/prepared.js';
import type { Database, EventsTable } from '../db/schema.js';
import type { Deps } from '../deps.js';
import { NotFoundError } from '../errors.js';
import type { OperationHandlers } from '../http/operation.js';
import { badRequest } from '../http/problem.js';
import { DEFAULT_LIMIT, sendObject } from '../http/respond.js';

type Event = components['schemas']['Event'];
type ListQuery = NonNullable<operations['listEvents']['parameters']['query']>;
type EventType = Event['type'];
type TypeFilter = NonNullable<ListQuery['type']>[number];

/**
 * An event as the API's JSON text, rendered by PostgreSQL (migration 0011, history_event_json):
 * the one definition of an event's JSON, for the feed, GET /events/{id} and webhook payloads.
 * Node passes the text through, without parsing the row's typed objects or building objects.
 */
const eventJson = sql<string>`history_event_json(events.id, events.type, events.occurred_at, events.object_type, events.object_id,
  events.object_user, events.object_feature, events.object_subscription, events.object_subscription_feature, events.previous_attributes)`;

/** The columns of an event and its JSON text (`json`), for any query on events. */
export const eventColumns = ['events.id', 'events.xid', 'events.type', 'events.occurred_at', 'events.object_type', 'events.object_id', eventJson.as('json')] as const;

/** An event as read: its place in the feed, its type and its JSON text. */
type EventRow = Pick<Selectable<EventsTable>, 'id' | 'xid' | 'type'> & { json: string };

/** An event as GET /events shows it (and webhook deliveries send it): its JSON text, parsed. */
export function toEvent(row: EventRow): Event {
  return JSON.parse(row.json) as Event;
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
  const page = db
    .with('horizon', (qb) => qb.selectNoFrom(sql<string>`pg_snapshot_xmin(pg_current_snapshot())`.as('xmin')))
    .selectFrom('horizon')
    .leftJoinLateral(
      (eb) => {
        let page = eb
          .selectFrom('events')
          .select(['events.id', 'events.xid', 'events.type', eventJson.as('json')])
          .where(sql<boolean>`events.xid < horizon.xmin`);
        // A row comparison: one range condition on the index (xid, id), or on (user_id | object_id, xid, id).
        if (after) page = page.where(sql<boolean>`(events.xid, events.id) > (${after.xid}::xid8, ${after.id}::bigint)`);
        if (query.type !== undefined) page = page.where('events.type', 'in', expandTypes(query.type));
        if (query.object_type !== undefined) page = page.where('events.object_type', '=', query.object_type);
        if (query.object_id !== undefined) page = page.where('events.object_id', '=', query.object_id);
        if (query.user_id !== undefined) page = page.where('events.user_id', '=', query.user_id);
        if (query.occurred_from !== undefined) page = page.where(sql<boolean>`events.occurred_at >= ${query.occurred_from}::timestamptz`);
        if (query.occurred_to !== undefined) page = page.where(sql<boolean>`events.occurred_at <= ${query.occurred_to}::timestamptz`);
        return (
          page
            .orderBy('events.xid')
            .orderBy('events.id')
            // A literal: a prepared text per limit, whose plan knows it.
            .limit(sql.lit(limit + 1))
            .as('e')
        );
      },
      (join) => join.onTrue(),
    )
    .select(['horizon.xmin as horizon', 'e.id', 'e.xid', 'e.type', 'e.json'])
    .orderBy('e.xid')
    .orderBy('e.id');
  // Each text (one per shape of filters and limit) is parsed once per connection. PostgreSQL still
  // plans every page (custom plans: about 0.7 ms with the inlined history_event_json; docs/events.md).
  prepareOnEachConnection(page.compile().sql);
  return page;
}

/** A page as one row, for GET /events (eventPageTextQuery, or history_feed_page for the unfiltered feed). */
interface PageText {
  horizon: string;
  /** How many events the page query read: limit + 1 means there are more. */
  found: number;
  /** The shown events' JSON texts, joined with commas; NULL for none. */
  data: string | null;
  /** The position of the last event shown. */
  last_xid: string | null;
  last_id: number | null;
}

/**
 * The same page as one row, for GET /events: the events' JSON texts joined by PostgreSQL (`data`,
 * NULL for none), how many events the page query found (limit + 1 means there are more) and the
 * position of the last one shown. Node then handles one string instead of a row per event.
 */
export function eventPageTextQuery(db: Kysely<Database>, query: ListQuery, after: FeedPosition | undefined, limit: number) {
  const page = eventPageQuery(db, query, after, limit)
    .select(sql<number>`row_number() OVER (ORDER BY e.xid, e.id)`.as('n'))
    .as('p');
  // Every aggregate in the order of n: one sort (none, as the rows come in that order) feeds them all.
  const lastShown = sql`least(count(p.id), ${limit})`;
  return db
    .selectFrom(page)
    .select([
      'p.horizon',
      sql<number>`count(p.id)`.as('found'),
      sql<string | null>`string_agg(p.json, ',' ORDER BY p.n) FILTER (WHERE p.n <= ${limit})`.as('data'),
      sql<string | null>`(array_agg(p.xid ORDER BY p.n))[${lastShown}]`.as('last_xid'),
      sql<number | null>`(array_agg(p.id ORDER BY p.n))[${lastShown}]`.as('last_id'),
    ])
    .groupBy('p.horizon');
}

/**
 * Sends a page: the events' JSON texts, joined, as they are (JSON.stringify of { data, next_cursor }
 * would write the same text, after parsing and building every event).
 */
function sendEventPage(ctx: Koa.Context, cursors: Deps['cursors'], sort: string, next: FeedPosition, eventsJson: string, hasMore: boolean): void {
  const nextCursor = cursors.encode(sort, [next.xid, next.id]);
  // Link rel="next" only when more events are there now; next_cursor is also where to poll.
  if (hasMore) {
    const params = new URLSearchParams(ctx.querystring);
    params.set('cursor', nextCursor);
    ctx.set('Link', `<${ctx.path}?${params.toString()}>; rel="next"`);
  }
  ctx.status = 200;
  ctx.body = `{"data":[${eventsJson}],"next_cursor":${JSON.stringify(nextCursor)}}`;
  ctx.type = 'application/json';
}

/**
 * A page of the unfiltered feed (the hot one: followers, webhook-free consumers): the same page as
 * eventPageTextQuery's, from history_feed_page (migration 0012), whose statement PostgreSQL plans
 * once per connection. As a prepared statement it was planned again for every page (custom plans,
 * about 0.7 ms each); docs/events.md has the figures.
 */
const feedPage = preparedQuery((db) =>
  db
    .selectFrom(sql<Omit<PageText, 'found'> & { fetched: number }>`history_feed_page(${START.xid}::xid8, ${START.id}::bigint, ${DEFAULT_LIMIT}::integer)`.as('p'))
    .select(['p.horizon', 'p.fetched as found', 'p.data', 'p.last_xid', 'p.last_id']),
);

/** One event by id, prepared on each connection (see listEvents). */
const eventById = preparedQuery((db) => db.selectFrom('events').select(eventColumns).where('events.id', '=', 0));

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
      let page: PageText | undefined;
      if (sort === 'events') {
        [page] = await feedPage(db, [(after ?? START).xid, (after ?? START).id, limit]);
      } else {
        const compiled = eventPageTextQuery(db, query, after, limit).compile();
        prepareOnEachConnection(compiled.sql); // as eventPageQuery's
        [page] = (await db.executeQuery(compiled)).rows;
      }
      const hasMore = page!.found > limit;
      const last = page!.last_xid !== null && page!.last_id !== null ? { xid: page!.last_xid, id: page!.last_id } : undefined;
      let next: FeedPosition;
      if (last && (hasMore || sort === 'events')) next = last;
      // A filtered page that is not full has seen every matching event below the horizon: the next
      // read starts there, so polling never scans the events that did not match again.
      else if (sort !== 'events') next = { xid: page!.horizon, id: 0 };
      // The unfiltered feed with nothing new: the same position (the same cursor) again.
      else next = after ?? START;
      sendEventPage(ctx, cursors, sort, next, page!.data ?? '', hasMore);
    },

    async getEvent({ path, ctx }) {
      const [row] = await eventById(db, [path.id]);
      if (!row) throw new NotFoundError('event', path.id);
      sendObject(ctx, 200, toEvent(row));
    },
  } satisfies Partial<OperationHandlers>;
}
