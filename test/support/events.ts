/** Reading the history (GET /api/events) in tests. */
import type { components, operations } from '../../generated/api.js';
import type { TestApp } from './app.js';

export type Event = components['schemas']['Event'];
export type EventQuery = NonNullable<operations['listEvents']['parameters']['query']>;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Resolves once the feed shows everything committed before this call: when every transaction of
 * the cluster older than a fresh one has ended (other test files share the cluster, and an open
 * transaction anywhere holds the feed back, by design). The timeout only guards against a hang.
 */
export async function feedCaughtUp(app: TestApp, timeoutMs = 60_000): Promise<void> {
  const {
    rows: [marker],
  } = await app.database.pool.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const {
      rows: [state],
    } = await app.database.pool.query<{ passed: boolean }>('SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::xid8 AS passed', [marker!.xid]);
    if (state!.passed) return;
    if (Date.now() > deadline) throw new Error(`the feed did not pass transaction ${marker!.xid} within ${timeoutMs} ms`);
    await sleep(10);
  }
}

/** One page of the feed (every response is checked against the spec by the test client). */
export async function eventPage(app: TestApp, query: EventQuery) {
  const { data, response, error } = await app.client.GET('/events', { params: { query } });
  if (!data) throw new Error(`GET /events failed: ${response.status} ${JSON.stringify(error)}`);
  return { ...data, link: response.headers.get('link') };
}

/** Follows next_cursor from `query.cursor` until a page is not full: the events read and where to poll next. */
export async function readFeed(app: TestApp, query: EventQuery = {}): Promise<{ events: Event[]; cursor: string; pages: number }> {
  const events: Event[] = [];
  let cursor = query.cursor;
  let pages = 0;
  for (;;) {
    const page = await eventPage(app, { ...query, ...(cursor ? { cursor } : {}) });
    pages++;
    events.push(...page.data);
    cursor = page.next_cursor;
    if (page.data.length < (query.limit ?? 50)) return { events, cursor, pages };
  }
}

/** Every event about one object, once the feed has caught up with what was committed before. */
export async function eventsAbout(app: TestApp, objectType: Event['object_type'], objectId: string | number): Promise<Event[]> {
  await feedCaughtUp(app);
  return (await readFeed(app, { object_type: objectType, object_id: String(objectId), limit: 500 })).events;
}
