/**
 * History (db/migrations/0006_history.sql): every committed change to a user, subscription, feature
 * or feature link is an event written by PostgreSQL in the same transaction, whoever writes. Each
 * event's object must be exactly what the API shows (compared as JSON text, so order and format too).
 */
import test from 'ava';
import { openDatabase } from '../src/db/database.js';
import { seedDatabase } from '../src/db/seed.js';
import { eventColumns, toEvent } from '../src/resources/events.js';
import { createTestDatabase, useTestApp } from './support/app.js';
import { eventsAbout, feedCaughtUp, readFeed, type Event } from './support/events.js';

const app = useTestApp(test);

let serial = 0;
const unique = (prefix: string) => `${prefix} ${process.pid}.${++serial}`;
const email = () => `history.${process.pid}.${++serial}@example.com`;

async function createUser() {
  const { data } = await app.client.POST('/users', { body: { name: unique('Ada'), email: email() } });
  if (!data) throw new Error('user not created');
  return data;
}
async function createFeature() {
  const { data } = await app.client.POST('/features', { body: { name: unique('Feature') } });
  if (!data) throw new Error('feature not created');
  return data;
}
async function createSubscription(userId: number, featureIds: number[] = []) {
  const { data } = await app.client.POST('/subscriptions', {
    body: { user_id: userId, status: 'active', plan_name: 'Pro', plan_cost: '19.9', start_date: '2026-01-15', ...(featureIds.length ? { feature_ids: featureIds } : {}) },
  });
  if (!data) throw new Error('subscription not created');
  return data;
}
const getLink = async (subscriptionId: number, featureId: number) =>
  (await app.client.GET('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: subscriptionId, feature_id: featureId } } })).data!;

/** The JSON text the API sends: equal text means equal fields, values, formats and order. */
const json = (value: unknown) => JSON.stringify(value);
const types = (events: Event[]) => events.map((e) => e.type);

test('every event type shows the object exactly as the API does, and an update the old values of the fields it changed', async (t) => {
  const user = await createUser();
  const feature = await createFeature();
  const subscription = await createSubscription(user.id, [feature.id]);
  const attached = await getLink(subscription.id, feature.id);

  const renamed = (await app.client.PATCH('/users/{id}', { params: { path: { id: user.id } }, body: { name: unique('Ada King') } })).data!;
  const described = (await app.client.PATCH('/features/{id}', { params: { path: { id: feature.id } }, body: { description: 'Texts' } })).data!;
  const canceled = (
    await app.client.PATCH('/subscriptions/{id}', {
      params: { path: { id: subscription.id } },
      body: { status: 'canceled', end_date: '2026-06-30', plan_cost: 25 },
    })
  ).data!;
  const limited = (
    await app.client.PATCH('/subscriptions/{id}/features/{feature_id}', {
      params: { path: { id: subscription.id, feature_id: feature.id } },
      body: { usage_limit: 500 },
    })
  ).data!;
  await app.client.DELETE('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: subscription.id, feature_id: feature.id } } });
  await app.client.DELETE('/subscriptions/{id}', { params: { path: { id: subscription.id } } });
  await app.client.DELETE('/features/{id}', { params: { path: { id: feature.id } } });
  await app.client.DELETE('/users/{id}', { params: { path: { id: user.id } } });

  const userEvents = await eventsAbout(app, 'user', user.id);
  t.deepEqual(types(userEvents), ['user.created', 'user.updated', 'user.deleted']);
  t.is(json(userEvents[0]!.data.object), json(user));
  t.is(json(userEvents[1]!.data.object), json(renamed));
  t.deepEqual(userEvents[1]!.data.previous_attributes, { name: user.name, updated_at: user.updated_at });
  t.is(json(userEvents[2]!.data.object), json(renamed), 'a deletion shows the object as it was');
  t.deepEqual(userEvents[2]!.data.previous_attributes, {});

  const featureEvents = await eventsAbout(app, 'feature', feature.id);
  t.deepEqual(types(featureEvents), ['feature.created', 'feature.updated', 'feature.deleted']);
  t.is(json(featureEvents[0]!.data.object), json(feature));
  t.is(json(featureEvents[1]!.data.object), json(described));
  t.deepEqual(featureEvents[1]!.data.previous_attributes, { description: null, updated_at: feature.updated_at });
  t.is(json(featureEvents[2]!.data.object), json(described));

  const subscriptionEvents = await eventsAbout(app, 'subscription', subscription.id);
  t.deepEqual(types(subscriptionEvents), ['subscription.created', 'subscription.updated', 'subscription.deleted']);
  t.is(json(subscriptionEvents[0]!.data.object), json(subscription));
  t.is(json(subscriptionEvents[1]!.data.object), json(canceled));
  t.is(canceled.plan_cost, '25.00');
  t.deepEqual(subscriptionEvents[1]!.data.previous_attributes, {
    status: 'active',
    plan_cost: '19.90',
    end_date: null,
    updated_at: subscription.updated_at,
  });
  t.is(json(subscriptionEvents[2]!.data.object), json(canceled));

  const linkEvents = await eventsAbout(app, 'subscription_feature', `${subscription.id}:${feature.id}`);
  t.deepEqual(types(linkEvents), ['subscription_feature.attached', 'subscription_feature.updated', 'subscription_feature.detached']);
  t.is(json(linkEvents[0]!.data.object), json(attached));
  t.is(json(linkEvents[1]!.data.object), json(limited));
  t.deepEqual(linkEvents[1]!.data.previous_attributes, { usage_limit: null, updated_at: attached.updated_at });
  t.is(json(linkEvents[2]!.data.object), json(limited));

  for (const event of [...userEvents, ...featureEvents, ...subscriptionEvents, ...linkEvents]) {
    t.is(event.type.split('.')[0], event.object_type);
    // An API write's event happened when its object was updated (the same transaction time).
    if (event.type.endsWith('.created') || event.type.endsWith('.attached') || event.type.endsWith('.updated')) {
      t.is(event.occurred_at, (event.data.object as { updated_at: string }).updated_at, event.type);
    }
    const one = await app.client.GET('/events/{id}', { params: { path: { id: event.id } } });
    t.is(json(one.data), json(event), 'GET /events/{id} shows the event as the list does');
  }
});

test('an update that changes nothing the API shows but updated_at records no event', async (t) => {
  const user = await createUser();
  const feature = await createFeature();
  const subscription = await createSubscription(user.id, [feature.id]);
  await app.client.PATCH('/users/{id}', { params: { path: { id: user.id } }, body: { name: user.name } });
  await app.client.PUT('/users/{id}', { params: { path: { id: user.id } }, body: { name: user.name, email: user.email } });
  await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subscription.id } }, body: { status: 'active', plan_cost: '19.90' } });
  await app.client.PUT('/subscriptions/{id}/features', { params: { path: { id: subscription.id } }, body: { features: [{ feature_id: feature.id }] } });
  await app.database.pool.query('UPDATE users SET name = name WHERE id = $1', [user.id]);
  await app.database.pool.query('UPDATE subscription_features SET usage_limit = usage_limit WHERE subscription_id = $1', [subscription.id]);
  const { rows } = await app.database.pool.query<{ updated: boolean }>('SELECT updated_at > created_at AS updated FROM users WHERE id = $1', [user.id]);
  t.true(rows[0]!.updated, 'the rows were rewritten (updated_at moved)');
  t.deepEqual(types(await eventsAbout(app, 'user', user.id)), ['user.created']);
  t.deepEqual(types(await eventsAbout(app, 'subscription', subscription.id)), ['subscription.created']);
  t.deepEqual(types(await eventsAbout(app, 'subscription_feature', `${subscription.id}:${feature.id}`)), ['subscription_feature.attached']);
});

test('deleting a user records the deletion of the user, then of its subscriptions and their links, all under its user_id', async (t) => {
  const user = await createUser();
  const [f1, f2] = [await createFeature(), await createFeature()];
  const first = await createSubscription(user.id, [f1.id, f2.id]);
  const second = await createSubscription(user.id, [f1.id]);
  await feedCaughtUp(app);
  const before = await readFeed(app, { user_id: user.id, limit: 500 });
  t.is(before.events.length, 1 + 2 + 3, 'the user and two subscriptions created, three links attached');

  await app.client.DELETE('/users/{id}', { params: { path: { id: user.id } } });
  await feedCaughtUp(app);
  const after = await readFeed(app, { user_id: user.id, limit: 500, cursor: before.cursor });
  t.deepEqual(
    after.events.map((e) => `${e.type} ${e.object_id}`),
    [
      `user.deleted ${user.id}`,
      `subscription.deleted ${first.id}`,
      `subscription.deleted ${second.id}`,
      `subscription_feature.detached ${first.id}:${f1.id}`,
      `subscription_feature.detached ${first.id}:${f2.id}`,
      `subscription_feature.detached ${second.id}:${f1.id}`,
    ],
  );
  const { rows } = await app.database.pool.query<{ transactions: string }>('SELECT count(DISTINCT xid) AS transactions FROM events WHERE id = ANY($1)', [
    after.events.map((e) => e.id),
  ]);
  t.is(Number(rows[0]!.transactions), 1, 'one transaction');
});

test('bulk statements record one event per row, numbered in key order, and each shows its row', async (t) => {
  const tag = unique('bulk').replace(/\W/g, '');
  const { rows: inserted } = await app.database.pool.query<{ id: number }>(
    `INSERT INTO users (name, email) SELECT 'Bulk ' || g, $1 || '.' || g || '@example.com' FROM generate_series(1, 40) g RETURNING id`,
    [tag],
  );
  const ids = inserted.map((r) => r.id);
  await app.database.pool.query(`UPDATE users SET name = name || ' II' WHERE id = ANY($1)`, [ids]);
  await app.database.pool.query('DELETE FROM users WHERE id = ANY($1)', [ids]);
  const { rows } = await app.database.pool.query<{ id: number; type: string; object_id: string; xid: string }>(
    `SELECT id, type, object_id, xid::text FROM events WHERE object_type = 'user' AND object_id = ANY($1) ORDER BY xid, id`,
    [ids.map(String)],
  );
  const byType = (type: string) => rows.filter((r) => r.type === type);
  for (const type of ['user.created', 'user.updated', 'user.deleted']) {
    const events = byType(type);
    t.is(events.length, 40, type);
    t.is(new Set(events.map((e) => e.xid)).size, 1, `${type}: one statement, one transaction`);
    t.deepEqual(
      events.map((e) => Number(e.object_id)),
      [...ids].sort((a, b) => a - b),
      `${type}: in key order`,
    );
  }
  const updates = await eventsAbout(app, 'user', ids[7]!);
  t.deepEqual(updates[1]!.data.previous_attributes, { name: `Bulk 8`, updated_at: (updates[0]!.data.object as { updated_at: string }).updated_at });
  t.is((updates[1]!.data.object as { name: string }).name, 'Bulk 8 II');
});

test('a rolled-back transaction leaves no event; a rolled-back savepoint leaves none of its own', async (t) => {
  const client = await app.database.pool.connect();
  let kept: number;
  const dropped: number[] = [];
  try {
    await client.query('BEGIN');
    const {
      rows: [a],
    } = await client.query<{ id: number }>(`INSERT INTO users (name, email) VALUES ('Gone', $1) RETURNING id`, [email()]);
    dropped.push(a!.id);
    await client.query('ROLLBACK');
    await client.query('BEGIN');
    const {
      rows: [b],
    } = await client.query<{ id: number }>(`INSERT INTO users (name, email) VALUES ('Kept', $1) RETURNING id`, [email()]);
    kept = b!.id;
    await client.query('SAVEPOINT s');
    const {
      rows: [c],
    } = await client.query<{ id: number }>(`INSERT INTO users (name, email) VALUES ('Undone', $1) RETURNING id`, [email()]);
    await client.query(`UPDATE users SET name = 'Undone too' WHERE id = $1`, [kept]);
    dropped.push(c!.id);
    await client.query('ROLLBACK TO SAVEPOINT s');
    await client.query('COMMIT');
  } finally {
    client.release();
  }
  const { rows } = await app.database.pool.query<{ object_id: string; type: string }>(
    `SELECT object_id, type FROM events WHERE object_type = 'user' AND object_id = ANY($1) ORDER BY id`,
    [[kept, ...dropped].map(String)],
  );
  t.deepEqual(rows, [{ object_id: String(kept), type: 'user.created' }]);
});

test('a feature rename is one feature.updated; a link event recorded later shows the new name', async (t) => {
  const user = await createUser();
  const feature = await createFeature();
  const subscription = await createSubscription(user.id, [feature.id]);
  const newName = unique('Renamed');
  await app.client.PATCH('/features/{id}', { params: { path: { id: feature.id } }, body: { name: newName } });
  await app.client.PATCH('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: subscription.id, feature_id: feature.id } }, body: { usage_limit: 3 } });
  const links = await eventsAbout(app, 'subscription_feature', `${subscription.id}:${feature.id}`);
  t.deepEqual(types(links), ['subscription_feature.attached', 'subscription_feature.updated']);
  t.is((links[0]!.data.object as { feature_name: string }).feature_name, feature.name, 'as it was then');
  t.is((links[1]!.data.object as { feature_name: string }).feature_name, newName);
  t.deepEqual(links[1]!.data.previous_attributes, { usage_limit: null, updated_at: (links[0]!.data.object as { updated_at: string }).updated_at });
  t.deepEqual(types(await eventsAbout(app, 'feature', feature.id)), ['feature.created', 'feature.updated']);
});

test('replacing the feature set records exactly the links attached, changed and detached', async (t) => {
  const user = await createUser();
  const [keep, change, drop, add] = [await createFeature(), await createFeature(), await createFeature(), await createFeature()];
  const subscription = await createSubscription(user.id, [keep.id, change.id, drop.id]);
  await feedCaughtUp(app);
  const before = await readFeed(app, { user_id: user.id, limit: 500 });
  await app.client.PUT('/subscriptions/{id}/features', {
    params: { path: { id: subscription.id } },
    body: { features: [{ feature_id: keep.id }, { feature_id: change.id, usage_limit: 7 }, { feature_id: add.id }] },
  });
  await feedCaughtUp(app);
  const after = await readFeed(app, { user_id: user.id, limit: 500, cursor: before.cursor });
  t.deepEqual(
    after.events.map((e) => `${e.type} ${e.object_id}`).sort(),
    [
      `subscription_feature.attached ${subscription.id}:${add.id}`,
      `subscription_feature.detached ${subscription.id}:${drop.id}`,
      `subscription_feature.updated ${subscription.id}:${change.id}`,
    ].sort(),
  );
  const updated = after.events.find((e) => e.type === 'subscription_feature.updated')!;
  t.like(updated.data.previous_attributes, { usage_limit: null });
});

test('moving a subscription to another user shows the old owner in previous_attributes and lists it under the new one', async (t) => {
  const [from, to] = [await createUser(), await createUser()];
  const subscription = await createSubscription(from.id);
  await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subscription.id } }, body: { user_id: to.id } });
  const events = await eventsAbout(app, 'subscription', subscription.id);
  t.like(events[1]!.data.previous_attributes, { user_id: from.id });
  t.deepEqual(types((await readFeed(app, { user_id: to.id, limit: 500 })).events), ['user.created', 'subscription.updated']);
});

test('a link whose key SQL changes is recorded as detached from the old key and attached at the new one', async (t) => {
  const user = await createUser();
  const [a, b] = [await createFeature(), await createFeature()];
  const subscription = await createSubscription(user.id, [a.id]);
  await app.database.pool.query('UPDATE subscription_features SET feature_id = $1 WHERE subscription_id = $2', [b.id, subscription.id]);
  t.deepEqual(types(await eventsAbout(app, 'subscription_feature', `${subscription.id}:${a.id}`)), ['subscription_feature.attached', 'subscription_feature.detached']);
  const moved = await eventsAbout(app, 'subscription_feature', `${subscription.id}:${b.id}`);
  t.deepEqual(types(moved), ['subscription_feature.attached']);
  t.is((moved[0]!.data.object as { feature_name: string }).feature_name, b.name);
});

test('history is append-only: events cannot be changed or deleted', async (t) => {
  await createUser();
  const update = await app.database.pool.query(`UPDATE events SET type = 'user.deleted'`).catch((err: Error) => err);
  const remove = await app.database.pool.query('DELETE FROM events').catch((err: Error) => err);
  t.regex(String(update), /append-only/);
  t.regex(String(remove), /append-only/);
});

// Serial: TRUNCATE empties the tables under the other tests of this file, so it runs before them.
test.serial('TRUNCATE records the deletion of every row it removes', async (t) => {
  const user = await createUser();
  const feature = await createFeature();
  const subscription = await createSubscription(user.id, [feature.id]);
  const {
    rows: [counts],
  } = await app.database.pool.query<{ users: string; subscriptions: string; links: string }>(
    'SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM subscriptions) AS subscriptions, (SELECT count(*) FROM subscription_features) AS links',
  );
  const {
    rows: [mark],
  } = await app.database.pool.query<{ id: number }>('SELECT coalesce(max(id), 0)::int AS id FROM events');
  await app.database.pool.query('TRUNCATE users CASCADE');
  const { rows } = await app.database.pool.query<{ type: string; n: string }>('SELECT type, count(*) AS n FROM events WHERE id > $1 GROUP BY type ORDER BY type', [mark!.id]);
  t.deepEqual(
    rows.map((r) => [r.type, Number(r.n)]),
    [
      ['subscription.deleted', Number(counts!.subscriptions)],
      ['subscription_feature.detached', Number(counts!.links)],
      ['user.deleted', Number(counts!.users)],
    ],
  );
  const detached = await eventsAbout(app, 'subscription_feature', `${subscription.id}:${feature.id}`);
  t.is(detached.at(-1)!.type, 'subscription_feature.detached');
});

test('the seed writes the history its rows imply, and replaying it gives the rows as the API shows them', async (t) => {
  const database = openDatabase(await createTestDatabase());
  t.teardown(() => database.close());
  await seedDatabase(database.pool, { users: 300, subscriptions: 2000, features: 12, seed: 7, today: '2026-11-15' });
  const { db } = database;
  const rows = await db.selectFrom('events').select(eventColumns).orderBy('events.xid').orderBy('events.id').execute();
  // As the API shows them (the same function as GET /events), with the stored columns beside.
  const events = rows.map((row) => ({ ...row, ...toEvent(row).data }));
  const [users, features, subscriptions] = await Promise.all([
    db.selectFrom('users').selectAll().execute(),
    db.selectFrom('features').selectAll().execute(),
    db.selectFrom('subscriptions').selectAll().execute(),
  ]);
  const ended = subscriptions.filter((s) => (s.status === 'canceled' || s.status === 'expired') && s.end_date !== null);
  t.true(ended.length > 100);
  const count = (type: string) => events.filter((e) => e.type === type).length;
  t.is(count('user.created'), users.length);
  t.is(count('feature.created'), features.length);
  t.is(count('subscription.created'), subscriptions.length);
  t.is(count('subscription.updated'), ended.length);
  t.is(events.length, users.length + features.length + subscriptions.length + ended.length, 'nothing else (links are not part of it)');
  t.is(new Set(events.map((e) => e.xid)).size, 1, 'one transaction');

  // In the feed's order, the seeded history is in time order.
  const times = events.map((e) => e.occurred_at.getTime());
  t.deepEqual(
    times,
    [...times].sort((a, b) => a - b),
  );

  const { toUser } = await import('../src/resources/users.js');
  const { toFeature } = await import('../src/resources/features.js');
  const { toSubscription } = await import('../src/resources/subscriptions.js');
  const latest = new Map<string, (typeof events)[number]>();
  for (const event of events) latest.set(`${event.object_type} ${event.object_id}`, event);
  for (const user of users) {
    const event = latest.get(`user ${user.id}`)!;
    t.is(event.occurred_at.toISOString(), user.created_at.toISOString());
    t.is(json(event.object), json(toUser(user)));
  }
  for (const feature of features) t.is(json(latest.get(`feature ${feature.id}`)!.object), json(toFeature(feature)));
  const byId = new Map(events.filter((e) => e.object_type === 'subscription').map((e) => [`${e.type} ${e.object_id}`, e]));
  for (const subscription of subscriptions) {
    const shown = toSubscription(subscription);
    const created = byId.get(`subscription.created ${subscription.id}`)!;
    t.is(created.occurred_at.toISOString(), `${subscription.start_date}T00:00:00.000Z`);
    t.deepEqual(created.previous_attributes, {});
    if (!ended.includes(subscription)) {
      t.is(json(created.object), json(shown));
      continue;
    }
    const updated = byId.get(`subscription.updated ${subscription.id}`)!;
    t.is(updated.occurred_at.toISOString(), `${subscription.end_date}T00:00:00.000Z`);
    t.is(json(updated.object), json(shown), 'the last event shows the row as it is');
    const before = { ...shown, status: 'active', end_date: null, updated_at: shown.created_at };
    t.is(json(created.object), json(before), 'before its end it was active and open-ended');
    const changed = Object.fromEntries(Object.entries(before).filter(([key, value]) => json(value) !== json((shown as Record<string, unknown>)[key])));
    t.deepEqual(updated.previous_attributes, changed, 'previous_attributes: the fields the end changed');
  }

  // Writes after the seed are recorded again (its triggers are back).
  await database.pool.query(`UPDATE users SET name = 'After the seed' WHERE id = 1`);
  const {
    rows: [last],
  } = await database.pool.query(`SELECT type FROM events WHERE object_type = 'user' AND object_id = '1' ORDER BY id DESC LIMIT 1`);
  t.is(last.type, 'user.updated');
});
