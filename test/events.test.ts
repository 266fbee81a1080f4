/**
 * GET /api/events: the feed. Its promise: a reader that follows next_cursor sees every committed
 * event exactly once, in a stable order, even while writers commit out of id order.
 */
import test from 'ava';
import { eventPageQuery, eventPageTextQuery } from '../src/resources/events.js';
import { useTestApp } from './support/app.js';
import { eventPage, feedCaughtUp, readFeed, type Event } from './support/events.js';
import { followFeedWhileWriting, ownEvents, OutOfOrderWriters } from './support/out-of-order-writers.js';

const app = useTestApp(test);

let serial = 0;
const email = () => `feed.${process.pid}.${++serial}@example.com`;

async function createUser() {
  const { data } = await app.client.POST('/users', { body: { name: `Reader ${++serial}`, email: email() } });
  if (!data) throw new Error('user not created');
  return data;
}

/** Where the feed ends now: a cursor after every event committed so far. */
async function tail(): Promise<string> {
  await feedCaughtUp(app);
  return (await readFeed(app, { limit: 500 })).cursor;
}

/** Every event after `afterId`'s position up to `lastId`'s, in the feed's order, straight from the table. */
async function tableOrder(afterId: number | undefined, lastId: number): Promise<number[]> {
  const { rows } = await app.database.pool.query<{ id: number }>(
    `SELECT e.id FROM events e, events last
     WHERE last.id = $2 AND (e.xid, e.id) <= (last.xid, last.id)
       AND ($1::bigint IS NULL OR (e.xid, e.id) > (SELECT a.xid, a.id FROM events a WHERE a.id = $1))
     ORDER BY e.xid, e.id`,
    [afterId ?? null, lastId],
  );
  return rows.map((r) => r.id);
}

// Serial tests run first, one at a time: each holds transactions open, and the feed (by design)
// waits for them; the concurrent tests below then run without these pauses.

test.serial('a transaction still open holds the feed back: a later commit waits, then both come in transaction order (where id > cursor skips)', async (t) => {
  const cursor = await tail();
  const {
    rows: [mark],
  } = await app.database.pool.query<{ id: number }>('SELECT coalesce(max(id), 0)::int AS id FROM events');
  const early = await app.database.pool.connect();
  try {
    await early.query('BEGIN');
    await early.query(`INSERT INTO users (name, email) VALUES ('Early', $1)`, [email()]);
    const [earlyEvent] = await ownEvents(early);
    const late = await createUser(); // commits while `early` is still open
    const {
      rows: [lateEvent],
    } = await app.database.pool.query<{ id: number }>(`SELECT id FROM events WHERE object_type = 'user' AND object_id = $1`, [String(late.id)]);
    t.true(lateEvent!.id > earlyEvent!, 'ids are given at insert: the early transaction has the lower id');

    // What a reader of `id > cursor` sees now: the later event; its next cursor would pass the early one.
    const { rows: naive } = await app.database.pool.query<{ id: number }>('SELECT id FROM events WHERE id > $1 ORDER BY id', [mark!.id]);
    t.deepEqual(
      naive.map((r) => r.id),
      [lateEvent!.id],
    );

    const held = await eventPage(app, { cursor });
    t.deepEqual(held.data, [], 'nothing yet: the open transaction could still commit before the later one');
    t.is(held.next_cursor, cursor, 'an empty page answers the same cursor');
    t.is(held.link, null);

    await early.query('COMMIT');
    await feedCaughtUp(app);
    const page = await eventPage(app, { cursor });
    t.deepEqual(
      page.data.map((e) => e.id),
      [earlyEvent, lateEvent!.id],
    );
  } finally {
    await early.query('ROLLBACK').catch(() => {});
    early.release();
  }
});

test.serial('many writers committing out of order, some rolling back: a reader following the feed sees every committed event exactly once, in the final order', async (t) => {
  const start = await tail();
  const {
    rows: [mark],
  } = await app.database.pool.query<{ id: number | null }>('SELECT max(id)::int AS id FROM events');
  // Each writer runs transactions of random length (1-4 statements, 0-40 ms between them), writing
  // through several tables and cascades; about one in four rolls back.
  const { rows: features } = await app.database.pool.query<{ id: number }>(
    `INSERT INTO features (name) SELECT 'Feed feature ' || $1 || '.' || g FROM generate_series(1, 3) g RETURNING id`,
    [`${process.pid}.${++serial}`],
  );
  const random = (n: number) => Math.floor(Math.random() * n);
  const writers = new OutOfOrderWriters(app.database.pool, {
    writers: 10,
    transactions: 8,
    maxStatements: 4,
    maxPauseMs: 40,
    async write(client, w) {
      const kind = random(4);
      if (kind === 0) {
        await client.query(`INSERT INTO users (name, email) VALUES ($1, $2)`, [`Writer ${w}`, email()]);
      } else if (kind === 1) {
        const {
          rows: [user],
        } = await client.query<{ id: number }>(`INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id`, [`Owner ${w}`, email()]);
        const {
          rows: [subscription],
        } = await client.query<{ id: number }>(`INSERT INTO subscriptions (user_id, status, plan_cost, start_date) VALUES ($1, 'active', $2, '2026-03-01') RETURNING id`, [
          user!.id,
          `${1 + random(99)}.99`,
        ]);
        await client.query(`INSERT INTO subscription_features (subscription_id, feature_id) VALUES ($1, $2)`, [subscription!.id, features[random(3)]!.id]);
      } else if (kind === 2) {
        await client.query(`UPDATE subscriptions SET status = 'past_due' WHERE id = (SELECT max(id) FROM subscriptions WHERE status = 'active')`);
      } else {
        // A cascade: a user, its subscriptions and their links.
        await client.query(`DELETE FROM users WHERE id = (SELECT min(id) FROM users WHERE name LIKE 'Owner %' AND id % 3 = $1)`, [w % 3]);
      }
    },
    async writeLong(client) {
      await client.query(`INSERT INTO users (name, email) VALUES ('Long', $1)`, [email()]);
    },
    // Writers collide (a deadlock or a row deleted under an update): a rolled-back transaction,
    // which is part of what the feed must cope with; the writer goes on with its next one.
    carryOnAfterCollision: true,
  });
  const { committed, rolledBack } = writers;

  const reading = followFeedWhileWriting(app, start, writers);
  await writers.run();
  const seen = await reading;
  const seenIds = new Set(seen.map((e) => e.id));

  const ids = seen.map((e) => e.id);
  t.is(new Set(ids).size, ids.length, 'no event twice');
  t.true(committed.size > 50, `${committed.size} committed events`);
  t.true(rolledBack.size > 0, `${rolledBack.size} rolled-back events`);
  for (const id of committed) t.true(seenIds.has(id), `committed event ${id} seen`);
  for (const id of rolledBack) t.false(seenIds.has(id), `rolled-back event ${id} not seen`);
  const { rows: ghosts } = await app.database.pool.query('SELECT id FROM events WHERE id = ANY($1)', [[...rolledBack]]);
  t.deepEqual(ghosts, [], 'a rollback leaves no event');

  // Exactly the table's committed events in the feed's order: no gap, no duplicate.
  t.deepEqual(ids, await tableOrder(mark!.id ?? undefined, ids.at(-1)!));
  // And the same sequence as one final read from the same start.
  const final = await readFeed(app, { cursor: start, limit: 500 });
  t.deepEqual(
    final.events.slice(0, ids.length).map((e) => e.id),
    ids,
  );

  // The scenario did what it claims: ids were given out of commit order.
  const sortedIds = [...ids].sort((a, b) => a - b);
  t.notDeepEqual(ids, sortedIds, 'some transaction committed after one that got higher event ids');
  const inversions = writers.inversions();
  t.true(inversions > 0, `${inversions} commits came after a transaction with a higher xid`);
  t.log(`${committed.size} committed and ${rolledBack.size} rolled-back events; ${seen.length} read in pages of 7; ${inversions} out-of-order commits`);
});

test.serial('an unfiltered page that is empty answers the same cursor; Link is sent only while more events are there', async (t) => {
  const cursor = await tail();
  const empty = await eventPage(app, { cursor });
  t.deepEqual(empty.data, []);
  t.is(empty.next_cursor, cursor);
  t.is(empty.link, null);
  const users = [await createUser(), await createUser(), await createUser()];
  await feedCaughtUp(app);
  const first = await eventPage(app, { cursor, limit: 2 });
  t.deepEqual(
    first.data.map((e) => e.object_id),
    users.slice(0, 2).map((u) => String(u.id)),
  );
  t.true(first.link?.includes(`cursor=${first.next_cursor}`) && first.link.endsWith('rel="next"'), first.link ?? 'no Link');
  const second = await eventPage(app, { cursor: first.next_cursor, limit: 2 });
  t.deepEqual(
    second.data.map((e) => e.object_id),
    [String(users[2]!.id)],
  );
  t.is(second.link, null, 'the last page has no Link');
  t.truthy(second.next_cursor, 'but a cursor to poll');
  const polled = await eventPage(app, { cursor: second.next_cursor, limit: 2 });
  t.deepEqual(polled.data, []);
  t.is(polled.next_cursor, second.next_cursor);
});

test('the first page starts at the oldest event, and pages chain in (transaction, id) order', async (t) => {
  await createUser();
  await feedCaughtUp(app);
  const { events, pages } = await readFeed(app, { limit: 3 });
  t.true(pages > 1);
  t.deepEqual(
    events.map((e) => e.id),
    await tableOrder(undefined, events.at(-1)!.id),
  );
});

test('filters: type (repeatable, with prefixes), object_type, object_id, user_id and the occurred_at range', async (t) => {
  const user = await createUser();
  const other = await createUser();
  const { data: feature } = await app.client.POST('/features', { body: { name: `Filtered ${process.pid}.${++serial}` } });
  const { data: subscription } = await app.client.POST('/subscriptions', {
    body: { user_id: user.id, status: 'active', plan_cost: '5.00', start_date: '2026-02-01', feature_ids: [feature!.id] },
  });
  await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subscription!.id } }, body: { status: 'paused' } });
  await app.client.PATCH('/users/{id}', { params: { path: { id: other.id } }, body: { name: 'Other II' } });
  await feedCaughtUp(app);
  const everything = (await readFeed(app, { limit: 500 })).events;
  /** What a filtered read must show: the unfiltered feed (up to the same point) filtered here. */
  const expect = async (query: Parameters<typeof readFeed>[1], keep: (e: Event) => boolean, what: string) => {
    const { events } = await readFeed(app, { ...query, limit: 4 });
    const upTo = events.filter((e) => everything.some((x) => x.id === e.id));
    t.deepEqual(
      upTo.map((e) => e.id),
      everything.filter(keep).map((e) => e.id),
      what,
    );
    t.true(upTo.length > 0, `${what}: something matched`);
    return events;
  };
  await expect({ type: ['user.created'] }, (e) => e.type === 'user.created', 'one type');
  await expect({ type: ['user.updated', 'feature.created'] }, (e) => e.type === 'user.updated' || e.type === 'feature.created', 'two types');
  await expect({ type: ['subscription.*'] }, (e) => e.type.startsWith('subscription.'), 'subscription.* (not subscription_feature.*)');
  await expect({ type: ['subscription_feature.*', 'user.*'] }, (e) => e.object_type === 'subscription_feature' || e.object_type === 'user', 'two prefixes');
  await expect({ object_type: 'subscription_feature' }, (e) => e.object_type === 'subscription_feature', 'object_type');
  await expect(
    { object_type: 'subscription', object_id: String(subscription!.id) },
    (e) => e.object_type === 'subscription' && e.object_id === String(subscription!.id),
    'one object',
  );
  await expect({ object_id: `${subscription!.id}:${feature!.id}` }, (e) => e.object_id === `${subscription!.id}:${feature!.id}`, 'a link');
  const belongs = (e: Event) =>
    (e.object_type === 'user' && e.object_id === String(user.id)) ||
    (e.object_type === 'subscription' && e.object_id === String(subscription!.id)) ||
    (e.object_type === 'subscription_feature' && e.object_id.startsWith(`${subscription!.id}:`));
  const mine = await expect({ user_id: user.id }, belongs, 'user_id');
  t.deepEqual(
    mine.map((e) => e.type),
    ['user.created', 'subscription.created', 'subscription_feature.attached', 'subscription.updated'],
  );
  const at = everything.find((e) => e.object_id === String(subscription!.id) && e.type === 'subscription.updated')!.occurred_at;
  await expect({ occurred_from: at }, (e) => e.occurred_at >= at, 'occurred_from (inclusive)');
  await expect({ occurred_to: at }, (e) => e.occurred_at <= at, 'occurred_to (inclusive)');
  await expect({ occurred_from: at, occurred_to: at, user_id: user.id }, (e) => e.occurred_at === at && belongs(e), 'combined');
});

test('a filtered feed moves its cursor past events that did not match, and polling it shows the next match', async (t) => {
  const user = await createUser();
  await feedCaughtUp(app);
  const first = await readFeed(app, { user_id: user.id, type: ['user.updated'], limit: 5 });
  t.deepEqual(first.events, []);
  // The cursor (our own format: base64url JSON of the list, the xid and the id, then a signature)
  // already points past the events read, although none matched.
  const [, xid] = JSON.parse(Buffer.from(first.cursor.split('.')[0]!, 'base64url').toString()) as [string, string, number];
  t.true(BigInt(xid) > 0n);
  for (let i = 0; i < 5; i++) await createUser(); // events that do not match
  await app.client.PATCH('/users/{id}', { params: { path: { id: user.id } }, body: { name: 'Polled' } });
  await feedCaughtUp(app);
  const next = await eventPage(app, { user_id: user.id, type: ['user.updated'], limit: 5, cursor: first.cursor });
  t.deepEqual(
    next.data.map((e) => [e.type, e.object_id]),
    [['user.updated', String(user.id)]],
  );
  t.not(next.next_cursor, first.cursor);
});

test('a cursor continues only the list it came from; a tampered one is a 400', async (t) => {
  const user = await createUser();
  await feedCaughtUp(app);
  const { cursor } = await readFeed(app, { user_id: user.id });
  const elsewhere = await app.fetch(`/api/events?cursor=${encodeURIComponent(cursor)}`);
  t.is(elsewhere.status, 400);
  t.deepEqual(
    (await elsewhere.json()).errors.map((e: { parameter: string }) => e.parameter),
    ['cursor'],
  );
  const tampered = cursor.slice(0, 5) + (cursor[5] === 'A' ? 'B' : 'A') + cursor.slice(6);
  const response = await app.fetch(`/api/events?user_id=${user.id}&cursor=${encodeURIComponent(tampered)}`);
  t.is(response.status, 400);
  const users = await app.fetch(`/api/users?cursor=${encodeURIComponent(cursor)}`);
  t.is(users.status, 400, 'nor another list');
});

test('invalid filters are a 400 naming the parameter', async (t) => {
  for (const [query, parameter] of [
    ['type=user.renamed', 'type'],
    ['type=subscription', 'type'],
    ['object_type=account', 'object_type'],
    ['object_id=abc', 'object_id'],
    ['user_id=0', 'user_id'],
    ['occurred_from=yesterday', 'occurred_from'],
    ['limit=501', 'limit'],
  ] as const) {
    const response = await app.fetch(`/api/events?${query}`);
    t.is(response.status, 400, query);
    t.deepEqual(
      (await response.json()).errors.map((e: { parameter: string }) => e.parameter),
      [parameter],
      query,
    );
  }
});

test('an event by id: 200 with an ETag, 404 when there is none', async (t) => {
  const user = await createUser();
  await feedCaughtUp(app);
  const [created] = (await readFeed(app, { object_type: 'user', object_id: String(user.id) })).events;
  // GET /events/{id} shows an event as soon as it is committed, whatever the feed's horizon.
  const {
    rows: [row],
  } = await app.database.pool.query<{ id: number }>(`SELECT id FROM events WHERE object_type = 'user' AND object_id = $1`, [String(user.id)]);
  const { data, response } = await app.client.GET('/events/{id}', { params: { path: { id: row!.id } } });
  t.is(response.status, 200);
  t.truthy(response.headers.get('etag'));
  t.like(data, { type: 'user.created', object_type: 'user', object_id: String(user.id) });
  t.deepEqual(data, created);
  const missing = await app.client.GET('/events/{id}', { params: { path: { id: 987654321 } } });
  t.is(missing.response.status, 404);
  t.regex(missing.error?.detail ?? '', /event 987654321 does not exist/);
});

test('every page query is one index range scan in feed order, filtered or not', async (t) => {
  const after = { xid: '1000', id: 5 };
  const variants = [
    { query: {}, index: 'events_feed_idx' },
    { query: { type: ['subscription.*' as const] }, index: 'events_feed_idx' },
    { query: { user_id: 42 }, index: 'events_user_idx' },
    { query: { object_type: 'subscription' as const, object_id: '42' }, index: 'events_object_idx' },
  ];
  const client = await app.database.pool.connect();
  try {
    // A small table would be read whole; what matters is that the indexes can serve every variant.
    await client.query('BEGIN');
    await client.query('SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off');
    for (const { query, index } of variants) {
      const compiled = eventPageQuery(app.database.db, query, after, 50).compile();
      const { rows } = await client.query(`EXPLAIN (FORMAT JSON) ${compiled.sql}`, compiled.parameters as unknown[]);
      const plan = JSON.stringify(rows[0]['QUERY PLAN']);
      t.true(plan.includes(`"Index Name":"${index}"`), `${JSON.stringify(query)} uses ${index}: ${plan}`);
      // The only sort is of the page itself (after the limit), never of the events read.
      const scan = plan.slice(plan.indexOf('"Node Type":"Limit"'));
      t.false(scan.includes('"Node Type":"Sort"'), `${JSON.stringify(query)}: no sort under the limit`);
      t.regex(plan, /ROW\(.*xid, .*id\) > ROW\(/, 'the cursor is an index condition');
    }
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
});

test('timestamps in events are written as toISOString writes them, whatever the session TimeZone and DateStyle', async (t) => {
  // Instants across years 1 to 9999, to the microsecond: whole seconds, whole milliseconds and any microsecond.
  const MIN = -62135596800000; // 0001-01-01T00:00:00.000Z, in milliseconds
  const MAX = 253402300799999; // 9999-12-31T23:59:59.999Z
  const instants: { ms: number; micro: number }[] = [
    { ms: MIN, micro: 0 },
    { ms: MAX, micro: 999 },
    { ms: 0, micro: 0 },
    { ms: -1, micro: 999 },
  ];
  let x = 0x2545f4914f6cdd1dn;
  const next = () => {
    x = (x * 6364136223846793005n + 1442695040888963407n) & 0xffffffffffffffffn;
    return Number(x >> 11n) / 2 ** 53;
  };
  for (let i = 0; i < 3000; i++) {
    let ms = MIN + Math.floor(next() * (MAX - MIN));
    if (i % 3 === 1) ms -= ((ms % 1000) + 1000) % 1000; // a whole second
    instants.push({ ms, micro: i % 3 === 0 ? Math.floor(next() * 1000) : 0 });
  }
  // What PostgreSQL reads: the ISO text with the microseconds' last three digits appended.
  const texts = instants.map(({ ms, micro }) => new Date(ms).toISOString().replace('Z', `${String(micro).padStart(3, '0')}Z`));
  const client = await app.database.pool.connect();
  try {
    await client.query(`SET TimeZone = 'America/St_Johns'; SET DateStyle = 'SQL, DMY'`);
    const { rows } = await client.query<{ text: string }>(`SELECT history_json_time(t) AS text FROM unnest($1::timestamptz[]) WITH ORDINALITY AS u(t, n) ORDER BY n`, [texts]);
    t.deepEqual(
      rows.map((r) => r.text),
      instants.map(({ ms }) => JSON.stringify(new Date(ms).toISOString())),
    );
    const { rows: special } = await client.query<{ text: string }>(`SELECT history_json_time(t) AS text FROM unnest('{NULL,infinity,-infinity}'::timestamptz[]) AS t`);
    t.deepEqual(
      special.map((r) => r.text),
      ['null', 'null', 'null'],
    );
  } finally {
    await client.query('RESET TimeZone; RESET DateStyle').catch(() => {});
    client.release();
  }
});

test('the unfiltered feed (history_feed_page) answers the same pages as the page query of the filtered feeds', async (t) => {
  await createUser();
  await createUser();
  await feedCaughtUp(app);
  // One snapshot for both reads (other tests write meanwhile): the same horizon, the same events.
  const client = await app.database.pool.connect();
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    let after: { xid: string; id: number } | undefined;
    for (let pages = 0; pages < 1000; pages++) {
      const compiled = eventPageTextQuery(app.database.db, {}, after, 3).compile();
      const {
        rows: [expected],
      } = await client.query(compiled.sql, compiled.parameters as unknown[]);
      const {
        rows: [actual],
      } = await client.query(`SELECT horizon, fetched AS found, data, last_xid, last_id FROM history_feed_page($1, $2, 3)`, [after?.xid ?? '0', after?.id ?? 0]);
      t.deepEqual(actual, expected);
      if (!actual.last_xid || Number(actual.found) <= 3) break;
      after = { xid: actual.last_xid, id: Number(actual.last_id) };
    }
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
});
