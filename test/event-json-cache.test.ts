/**
 * The cache of the events' JSON texts (migration 0016, src/history/json-cache.ts): the feed answers
 * the same bytes whatever the cache holds, and the filler renders every committed event exactly
 * once, in feed order, across concurrent fillers and out-of-order commits.
 */
import test from 'ava';
import type pg from 'pg';
import { pino } from 'pino';
import { openDatabase } from '../src/db/database.js';
import { EventJsonFiller } from '../src/history/json-cache.js';
import { eventPageTextQuery } from '../src/resources/events.js';
import { useTestApp } from './support/app.js';
import { feedCaughtUp, readFeed, type Event } from './support/events.js';
import { followFeedWhileWriting, OutOfOrderWriters } from './support/out-of-order-writers.js';

// The service's own filler is off: the tests set the cache's state themselves.
const app = useTestApp(test, { EVENT_JSON_FILL_MS: '0' });

let serial = 0;
const email = () => `cache.${process.pid}.${++serial}@example.com`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const random = (n: number) => Math.floor(Math.random() * n);
const silent = pino({ level: 'silent' });

/** Events of every kind: creations, updates with previous_attributes, a cascade, links, odd text. */
async function writeVariedEvents(): Promise<void> {
  const pool = app.database.pool;
  const {
    rows: [feature],
  } = await pool.query<{ id: number }>(`INSERT INTO features (name, description) VALUES ($1, E'tab\\there "quoted" \\\\ é') RETURNING id`, [`Cache feature ${++serial}`]);
  for (let i = 0; i < 6; i++) {
    const {
      rows: [user],
    } = await pool.query<{ id: number }>(`INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id`, [`Cache ${i} \u0001 "x"`, email()]);
    const {
      rows: [subscription],
    } = await pool.query<{ id: number }>(`INSERT INTO subscriptions (user_id, status, plan_cost, start_date) VALUES ($1, 'active', '12.50', '2026-03-01') RETURNING id`, [
      user!.id,
    ]);
    await pool.query(`INSERT INTO subscription_features (subscription_id, feature_id, usage_limit) VALUES ($1, $2, 5)`, [subscription!.id, feature!.id]);
    await pool.query(`UPDATE subscriptions SET status = 'canceled', end_date = '2026-06-30' WHERE id = $1`, [subscription!.id]);
    await pool.query(`UPDATE subscription_features SET usage_limit = NULL WHERE subscription_id = $1`, [subscription!.id]);
    if (i % 2 === 0) await pool.query(`DELETE FROM users WHERE id = $1`, [user!.id]);
  }
  await pool.query(`UPDATE features SET name = name || ' renamed' WHERE id = $1`, [feature!.id]);
}

/** Empties the cache (as a migration changing the rendering would). */
async function emptyCache(client: pg.PoolClient): Promise<void> {
  await client.query(`TRUNCATE event_json`);
  await client.query(`UPDATE event_json_position SET xid = '0', id = 0`);
}

/** Every page of the unfiltered feed from history_feed_page and from the filtered feeds' query, on one client (one snapshot). */
async function comparePages(t: import('ava').ExecutionContext, client: pg.PoolClient, limit: number): Promise<number> {
  let after: { xid: string; id: number } | undefined;
  let events = 0;
  for (let pages = 0; pages < 100_000; pages++) {
    const compiled = eventPageTextQuery(app.database.db, {}, after, limit).compile();
    const {
      rows: [expected],
    } = await client.query(compiled.sql, compiled.parameters as unknown[]);
    const {
      rows: [actual],
    } = await client.query(`SELECT horizon, fetched AS found, data, last_xid, last_id FROM history_feed_page($1, $2, $3)`, [after?.xid ?? '0', after?.id ?? 0, limit]);
    if (JSON.stringify(actual) !== JSON.stringify(expected)) {
      t.deepEqual(actual, expected, `page after ${JSON.stringify(after)} (limit ${limit})`);
      return events;
    }
    events += Math.min(Number(actual.found), limit);
    if (!actual.last_xid || Number(actual.found) <= limit) return events;
    after = { xid: actual.last_xid, id: Number(actual.last_id) };
  }
  throw new Error('too many pages');
}

test.serial('the feed answers the same bytes with the cache empty, partly filled and full', async (t) => {
  await writeVariedEvents();
  await feedCaughtUp(app);
  const before = (await readFeed(app, { limit: 500 })).events;
  // One transaction that sets each state of the cache and reads every page in it: nothing else
  // changes the cache meanwhile (the position row stays locked).
  const client = await app.database.pool.connect();
  try {
    // Repeatable read: the horizon stays the same between the two queries of a page.
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    await client.query(`SELECT * FROM event_json_position FOR UPDATE`);
    await emptyCache(client);
    const total = (await client.query<{ total: number }>(`SELECT count(*)::int AS total FROM events WHERE xid < pg_snapshot_xmin(pg_current_snapshot())`)).rows[0]!.total;
    t.true(total > 30, `${total} events`);
    const states: string[] = [];
    const check = async () => {
      const cached = (await client.query<{ cached: number }>(`SELECT count(*)::int AS cached FROM event_json`)).rows[0]!.cached;
      for (const limit of [1, 3, 7, 500]) t.is(await comparePages(t, client, limit), total, `every event, pages of ${limit}, ${cached} cached`);
      states.push(`${cached}/${total}`);
      return cached;
    };
    t.is(await check(), 0, 'empty');
    t.is((await client.query(`SELECT event_json_fill(7) AS n`)).rows[0].n, 7);
    t.is((await client.query(`SELECT event_json_fill(4) AS n`)).rows[0].n, 4);
    t.is(await check(), 11, 'partly filled');
    t.is((await client.query(`SELECT event_json_fill($1) AS n`, [Math.floor(total / 2)])).rows[0].n, Math.floor(total / 2));
    await check();
    while ((await client.query(`SELECT event_json_fill(50) AS n`)).rows[0].n > 0);
    t.is(await check(), total, 'full');
    await client.query('COMMIT');
    t.log(`pages compared with ${states.join(', ')} events cached`);
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  } finally {
    client.release();
  }
  // And through the API: the same events, now from the cache.
  const after = (await readFeed(app, { limit: 500 })).events;
  t.deepEqual(after.slice(0, before.length), before);
});

test.serial('concurrent fillers render every committed event exactly once while writers commit out of order and roll back', async (t) => {
  await feedCaughtUp(app);
  const start = (await readFeed(app, { limit: 500 })).cursor;
  // Everything so far cached: what the fillers render below is the writers' events only.
  while ((await app.database.pool.query<{ n: number }>(`SELECT event_json_fill(1000) AS n`)).rows[0]!.n > 0);
  // Each writer adds users and renames them, 1-3 in a transaction (0-30 ms apart); about one in four rolls back.
  const writers = new OutOfOrderWriters(app.database.pool, {
    writers: 8,
    transactions: 8,
    maxStatements: 3,
    maxPauseMs: 30,
    async write(client, w) {
      const {
        rows: [user],
      } = await client.query<{ id: number }>(`INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id`, [`Filler writer ${w}`, email()]);
      await client.query(`UPDATE users SET name = name || '.' WHERE id = $1`, [user!.id]);
    },
    async writeLong(client) {
      await client.query(`INSERT INTO users (name, email) VALUES ('Long filler writer', $1)`, [email()]);
    },
    // No writer touches another's rows: a collision would be a real failure.
    carryOnAfterCollision: false,
  });
  const { committed, rolledBack } = writers;

  // Four fillers, each on its own connection, in small batches, as fast as they can.
  const handles = Array.from({ length: 4 }, () => openDatabase(app.databaseUrl, { max: 1 }));
  const fillers = handles.map((h) => new EventJsonFiller(h.pool, { intervalMs: 0, batch: 3 }, silent));
  let skipped = 0;
  async function fill(filler: EventJsonFiller): Promise<void> {
    while (writers.writing) {
      if ((await filler.fillOnce()) === null) skipped++;
      await sleep(random(3));
    }
  }
  let seen: Event[] = [];
  try {
    const filling = fillers.map(fill);
    // A reader follows the feed meanwhile (its pages mix cached and rendered events).
    const reading = followFeedWhileWriting(app, start, writers);
    await writers.run();
    await Promise.all(filling);
    seen = await reading;
    // The rest, once every writer's transaction has ended.
    await feedCaughtUp(app);
    while ((await fillers[0]!.fillOnce()) !== 0);
  } finally {
    await Promise.all(handles.map((h) => h.close()));
  }

  const {
    rows: [state],
  } = await app.database.pool.query<{ cached: number; events: number; mismatched: number; missing: number }>(
    `SELECT (SELECT count(*)::int FROM event_json) AS cached,
            (SELECT count(*)::int FROM events) AS events,
            (SELECT count(*)::int FROM event_json j JOIN events ev USING (xid, id)
              WHERE j.json IS DISTINCT FROM history_event_json(ev.id, ev.type, ev.occurred_at, ev.object_type, ev.object_id, ev.object_user,
                      ev.object_feature, ev.object_subscription, ev.object_subscription_feature, ev.previous_attributes)) AS mismatched,
            (SELECT count(*)::int FROM events ev WHERE NOT EXISTS (SELECT FROM event_json j WHERE (j.xid, j.id) = (ev.xid, ev.id))) AS missing`,
  );
  t.is(state!.missing, 0, 'every committed event has its text');
  t.is(state!.cached, state!.events, 'and only those');
  t.is(state!.mismatched, 0, 'each text is the rendering of its event');
  const rendered = fillers.reduce((sum, f) => sum + f.rendered, 0);
  const fresh = (await app.database.pool.query<{ fresh: number }>(`SELECT count(*)::int AS fresh FROM events WHERE id = ANY($1)`, [[...committed]])).rows[0]!.fresh;
  t.is(fresh, committed.size);
  // The cache was full before the writers started: the fillers rendered exactly their events, once.
  t.is(rendered, committed.size, `${rendered} rendered by the fillers, ${committed.size} committed by the writers`);
  const { rows: ghosts } = await app.database.pool.query(`SELECT id FROM event_json WHERE id = ANY($1)`, [[...rolledBack]]);
  t.deepEqual(ghosts, [], 'no rolled-back event is rendered');
  t.true(rolledBack.size > 0, `${rolledBack.size} rolled-back events`);

  // The reader saw exactly the committed events, in the table's feed order, no gap, no duplicate.
  const ids = seen.map((e) => e.id);
  t.is(new Set(ids).size, ids.length, 'no event twice');
  const { rows: order } = await app.database.pool.query<{ id: number }>(
    `SELECT id FROM events WHERE (xid, id) <= (SELECT xid, id FROM events WHERE id = $1) AND id = ANY($2) ORDER BY xid, id`,
    [ids.at(-1), ids],
  );
  t.deepEqual(
    ids,
    order.map((r) => r.id),
  );
  for (const id of committed) t.true(ids.includes(id), `committed event ${id} seen`);
  // The same events, served again from the full cache, byte for byte.
  const again = await readFeed(app, { cursor: start, limit: 500 });
  t.deepEqual(again.events.slice(0, seen.length), seen);

  const inversions = writers.inversions();
  t.true(inversions > 0, `${inversions} commits came after a transaction with a higher xid`);
  t.log(`${committed.size} committed, ${rolledBack.size} rolled back, ${inversions} out-of-order commits; ${rendered} rendered by 4 fillers, ${skipped} turns skipped`);
});

test.serial('emptying the events (as the seed does: TRUNCATE events CASCADE) empties the cache and its position', async (t) => {
  await app.client.POST('/users', { body: { name: 'Before the reload', email: email() } });
  await feedCaughtUp(app);
  while ((await app.database.pool.query<{ n: number }>(`SELECT event_json_fill(1000) AS n`)).rows[0]!.n > 0);
  const client = await app.database.pool.connect();
  try {
    await client.query('BEGIN');
    t.true((await client.query<{ n: number }>(`SELECT count(*)::int AS n FROM event_json`)).rows[0]!.n > 0, 'the cache has texts');
    await client.query('TRUNCATE events CASCADE');
    const { rows } = await client.query(`SELECT (SELECT count(*)::int FROM event_json) AS cached, xid::text, id::int FROM event_json_position`);
    t.deepEqual(rows, [{ cached: 0, xid: '0', id: 0 }]);
    // No text of a removed event is served.
    const { rows: page } = await client.query(`SELECT fetched::int, data FROM history_feed_page('0', 0, 500)`);
    t.deepEqual(page, [{ fetched: 0, data: null }]);
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
});

test.serial('the filler logs a failure and tries again on its next turn (the database unreachable)', async (t) => {
  // A port nothing listens on: every turn fails to connect.
  const handle = openDatabase('postgres://postgres:postgres@127.0.0.1:1/none', { max: 1, connectionTimeoutMs: 500 });
  const warnings: string[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) });
  const filler = new EventJsonFiller(handle.pool, { intervalMs: 5, batch: 10 }, log);
  filler.start();
  const deadline = Date.now() + 30_000;
  while (warnings.length < 3 && Date.now() < deadline) await sleep(10);
  await filler.stop();
  await handle.close();
  t.true(warnings.length >= 3, `${warnings.length} failed turns logged`);
  t.regex(warnings[0]!, /event JSON cache: filling failed/);
});
