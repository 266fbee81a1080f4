/**
 * Webhooks: endpoints, signed deliveries (verified as a receiver would, with standardwebhooks),
 * retries with backoff, per-endpoint order, the retry operation, refused targets, and a slow
 * receiver that must not slow the API. Receivers listen on 127.0.0.1 only; no traffic leaves loopback.
 * (The restart and database-outage run is test/webhooks-outage.test.ts.)
 */
import test from 'ava';
import { Webhook } from 'standardwebhooks';
import type { components } from '../generated/api.js';
import { isPublicAddress } from '../src/webhooks/targets.js';
import { WebhookSender } from '../src/webhooks/sender.js';
import { retryDelayMs } from '../src/webhooks/worker.js';
import { startTestApp, useTestApp, type TestApp } from './support/app.js';
import { startInstance } from './support/instance.js';
import { eventIdsOf, startReceiver, type Receiver } from './support/webhook-receiver.js';

type WebhookEndpointCreated = components['schemas']['WebhookEndpointCreated'];
type WebhookEventType = components['schemas']['WebhookEventType'];
type Event = components['schemas']['Event'];

const RETRY_BASE_MS = 100;
const RETRY_FOR_MS = 600_000;
const TIMEOUT_MS = 3000;
const app = useTestApp(test, {
  WEBHOOK_ALLOW_PRIVATE: '1',
  WEBHOOK_RETRY_BASE_MS: String(RETRY_BASE_MS),
  WEBHOOK_RETRY_MAX_MS: '800',
  WEBHOOK_RETRY_FOR_MS: String(RETRY_FOR_MS),
  WEBHOOK_TIMEOUT_MS: String(TIMEOUT_MS),
  WEBHOOK_POLL_MS: '50',
});

let serial = 0;
const unique = (what: string) => `${what} ${process.pid}.${++serial}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until the condition holds; the bound only guards against a hang. */
async function waitFor(what: string | (() => string), condition: () => boolean | Promise<boolean>, hangGuardMs = 100_000): Promise<void> {
  const deadline = Date.now() + hangGuardMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`still waiting after ${hangGuardMs} ms: ${typeof what === 'string' ? what : what()}`);
    await sleep(10);
  }
}

const receivers: Receiver[] = [];
test.after.always(async () => {
  await Promise.all(receivers.map((r) => r.close()));
});
async function receiver(): Promise<Receiver> {
  const r = await startReceiver();
  receivers.push(r);
  return r;
}

async function register(target: TestApp, url: string, eventTypes: WebhookEventType[]): Promise<WebhookEndpointCreated> {
  const { data, error } = await target.client.POST('/webhook-endpoints', { body: { url, event_types: eventTypes, description: unique('test receiver') } }).catch((err: Error) => {
    throw new Error(`POST /webhook-endpoints: ${err.message} (${String(err.cause)})`);
  });
  if (!data) throw new Error(`endpoint not registered: ${JSON.stringify(error)}`);
  return data;
}

async function createUser(target: TestApp = app) {
  const { data } = await target.client.POST('/users', { body: { name: unique('Hook'), email: `${unique('hook').replace(/\W/g, '.')}@example.com` } });
  if (!data) throw new Error('user not created');
  return data;
}

/** The ids of the events about one object, in feed order. */
async function eventIdsAbout(objectType: string, objectId: string | number): Promise<number[]> {
  const { rows } = await app.database.pool.query<{ id: number }>('SELECT id FROM events WHERE object_type = $1 AND object_id = $2 ORDER BY xid, id', [
    objectType,
    String(objectId),
  ]);
  return rows.map((r) => r.id);
}

const userEventId = async (userId: number) => (await eventIdsAbout('user', userId))[0]!;

async function deliveries(endpointId: number, query: { status?: 'pending' | 'succeeded' | 'failed'; event_id?: number } = {}) {
  const { data } = await app.client.GET('/webhook-endpoints/{id}/deliveries', { params: { path: { id: endpointId }, query: { limit: 500, ...query } } });
  if (!data) throw new Error('deliveries not listed');
  return data.data;
}

const verify = (secret: string, body: string, headers: Record<string, string>) => new Webhook(secret).verify(body, headers);

test('the retry schedule: first retry within 10 s, doubling, capped at one hour, retried for at least 24 hours', (t) => {
  const defaults = { retryBaseMs: 5_000, retryMaxMs: 3_600_000 };
  for (const r of [0, 0.5, 0.999]) {
    t.true(retryDelayMs(1, defaults, () => r) <= 10_000);
    t.true(retryDelayMs(40, defaults, () => r) <= 3_600_000);
  }
  const middle = (n: number) => retryDelayMs(n, defaults, () => 0.5);
  t.deepEqual([1, 2, 3, 4].map(middle), [5_000, 10_000, 20_000, 40_000]);
  t.is(middle(12), 3_600_000);
  // Attempts keep coming at most an hour apart until 24 h have passed since the first.
  let elapsed = 0;
  let attempts = 1;
  while (elapsed < 24 * 3_600_000) elapsed += retryDelayMs(attempts++, defaults, () => 0.999);
  t.log(`with the defaults, about ${attempts} attempts before a delivery is given up`);
});

test('public and non-public addresses', (t) => {
  for (const address of ['93.184.216.34', '8.8.8.8', '2606:4700:4700::1111', '2a00:1450:4001:80b::200e']) t.true(isPublicAddress(address), address);
  for (const address of [
    '127.0.0.1',
    '127.1.2.3',
    '10.0.0.1',
    '172.16.0.1',
    '172.31.255.255',
    '192.168.1.1',
    '169.254.169.254',
    '100.64.0.1',
    '0.0.0.0',
    '224.0.0.1',
    '255.255.255.255',
    '198.18.0.1',
    '::1',
    '::',
    'fe80::1',
    'fc00::1',
    'fd12:3456::1',
    '::ffff:127.0.0.1',
    '::ffff:10.1.2.3',
    '64:ff9b::a9fe:a9fe',
    '2001:db8::1',
    'ff02::1',
    'not an address',
  ]) {
    t.false(isPublicAddress(address), address);
  }
});

test('an endpoint is registered with its secret shown once, then read, listed, changed and deleted', async (t) => {
  const created = await register(app, 'http://127.0.0.1:9/hooks', ['subscription.*', 'user.deleted']);
  t.regex(created.secret, /^whsec_[A-Za-z0-9+/]{43}=$/);
  t.is(Buffer.from(created.secret.slice(6), 'base64').length, 32);
  t.true(created.enabled);
  const { data: one, response } = await app.client.GET('/webhook-endpoints/{id}', { params: { path: { id: created.id } } });
  t.false('secret' in one!, 'never shown again');
  t.deepEqual(one!.event_types, ['subscription.*', 'user.deleted']);
  const { data: list } = await app.client.GET('/webhook-endpoints', { params: { query: { limit: 500 } } });
  t.true(list!.data.some((e) => e.id === created.id && !('secret' in e)));

  const stale = response.headers.get('etag')!;
  const { data: patched } = await app.client.PATCH('/webhook-endpoints/{id}', {
    params: { path: { id: created.id }, header: { 'If-Match': stale } },
    body: { enabled: false, event_types: ['user.*'], description: null },
  });
  t.is(patched!.enabled, false);
  t.deepEqual(patched!.event_types, ['user.*']);
  t.is(patched!.description, null);
  const { response: late } = await app.client.PATCH('/webhook-endpoints/{id}', {
    params: { path: { id: created.id }, header: { 'If-Match': stale } },
    body: { enabled: true },
  });
  t.is(late.status, 412);
  const { response: deleted } = await app.client.DELETE('/webhook-endpoints/{id}', { params: { path: { id: created.id } } });
  t.is(deleted.status, 204);
  const { response: gone } = await app.client.GET('/webhook-endpoints/{id}', { params: { path: { id: created.id } } });
  t.is(gone.status, 404);
});

test('the database refuses what the API refuses: other schemes, unknown event types, no types', async (t) => {
  const insertPlain = (url: string, types: string[]) =>
    app.database.pool.query(`INSERT INTO webhook_endpoints (url, event_types, secret) VALUES ($1, $2, 'whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD4GeGKtTrdiU=')`, [url, types]);
  await t.throwsAsync(insertPlain('ftp://example.com/x', ['user.created']), { message: /webhook_endpoints_url_check/ });
  await t.throwsAsync(insertPlain('https://example.com/x#frag', ['user.created']), { message: /webhook_endpoints_url_check/ });
  await t.throwsAsync(insertPlain('https://example.com/x', ['user.exploded']), { message: /webhook_endpoints_event_types_check/ });
  await t.throwsAsync(insertPlain('https://example.com/x', []), { message: /webhook_endpoints_event_types_check/ });
  await t.throwsAsync(app.database.pool.query(`INSERT INTO webhook_endpoints (url, event_types, secret) VALUES ('https://example.com/', '{user.created}', 'plain')`), {
    message: /webhook_endpoints_secret_check/,
  });
});

test('every delivery is signed as Standard Webhooks says: a receiver verifies it, and rejects a tampered body or an old timestamp', async (t) => {
  const r = await receiver();
  const endpoint = await register(app, `${r.url}/signed`, ['user.created']);
  const user = await createUser();
  const eventId = await userEventId(user.id);
  await waitFor('the user.created delivery', () => eventIdsOf(r.received).includes(eventId));
  const got = r.received.find((x) => (JSON.parse(x.body) as Event).id === eventId)!;

  t.is(got.headers['webhook-id'], `evt_${eventId}`);
  t.regex(got.headers['webhook-signature']!, /^v1,[A-Za-z0-9+/]+={0,2}$/);
  t.is(got.headers['content-type'], 'application/json');
  t.notThrows(() => verify(endpoint.secret, got.body, got.headers));
  t.deepEqual(verify(endpoint.secret, got.body, got.headers), JSON.parse(got.body));
  // The body is the event exactly as GET /api/events/{id} shows it.
  const shown = await app.fetch(`/api/events/${eventId}`);
  t.is(got.body, await shown.text());

  t.throws(() => verify(endpoint.secret, got.body.replace('"user.created"', '"user.deleted"'), got.headers), { message: /signature/i });
  t.throws(() => verify(`whsec_${Buffer.alloc(32, 7).toString('base64')}`, got.body, got.headers), { message: /signature/i });
  const sixMinutesAgo = new Date(Date.now() - 6 * 60_000);
  const replayed = WebhookSender.headers({ id: got.headers['webhook-id']!, secret: endpoint.secret, payload: got.body }, sixMinutesAgo);
  t.throws(() => verify(endpoint.secret, got.body, replayed), { message: /too old/i });
});

test('an endpoint gets every event of the types it subscribed to (prefixes included) and no other', async (t) => {
  const some = await receiver();
  const every = await receiver();
  const someTypes: WebhookEventType[] = ['user.*', 'subscription.created', 'subscription_feature.detached'];
  const allTypes: WebhookEventType[] = [
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
  const someEndpoint = await register(app, `${some.url}/some`, someTypes);
  await register(app, `${every.url}/every`, allTypes);

  const user = await createUser();
  const { data: feature } = await app.client.POST('/features', { body: { name: unique('Hook feature') } });
  const { data: subscription } = await app.client.POST('/subscriptions', {
    body: { user_id: user.id, status: 'active', plan_name: 'Pro', plan_cost: '19.90', start_date: '2026-01-15', feature_ids: [feature!.id] },
  });
  const ids = { user: user.id, feature: feature!.id, subscription: subscription!.id };
  await app.client.PATCH('/users/{id}', { params: { path: { id: ids.user } }, body: { name: unique('Renamed') } });
  await app.client.PATCH('/features/{id}', { params: { path: { id: ids.feature } }, body: { description: 'Texts' } });
  await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: ids.subscription } }, body: { status: 'past_due' } });
  await app.client.PATCH('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: ids.subscription, feature_id: ids.feature } }, body: { usage_limit: 5 } });
  await app.client.DELETE('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: ids.subscription, feature_id: ids.feature } } });
  await app.client.DELETE('/subscriptions/{id}', { params: { path: { id: ids.subscription } } });
  await app.client.DELETE('/features/{id}', { params: { path: { id: ids.feature } } });
  await app.client.DELETE('/users/{id}', { params: { path: { id: ids.user } } });

  const { rows: mine } = await app.database.pool.query<{ id: number; type: string; xid: string }>(
    `SELECT id, type, xid::text AS xid FROM events e
     WHERE (object_type = 'user' AND object_id = $1) OR (object_type = 'feature' AND object_id = $2)
        OR (object_type = 'subscription' AND object_id = $3) OR (object_type = 'subscription_feature' AND object_id = $3 || ':' || $2)
     ORDER BY e.xid, e.id`,
    [String(ids.user), String(ids.feature), String(ids.subscription)],
  );
  t.deepEqual([...new Set(mine.map((e) => e.type))].sort(), [...allTypes].sort(), 'the actions wrote every event type');
  const mineIds = new Set(mine.map((e) => e.id));
  const matches = (type: string) => someTypes.some((f) => (f.endsWith('.*') ? type.startsWith(f.slice(0, -1)) : f === type));
  const expectedSome = mine.filter((e) => matches(e.type)).map((e) => e.id);
  const receivedMine = (r: Receiver) => eventIdsOf(r.received).filter((id) => mineIds.has(id));
  // First receipts: a repeat is allowed (at least once), e.g. when a stalled machine outlasts a lease.
  const first = (ids: number[]) => [...new Set(ids)];

  await waitFor('every event at the endpoint of all types', () => first(receivedMine(every)).length >= mine.length);
  await waitFor('the subscribed events at the other endpoint', () => first(receivedMine(some)).length >= expectedSome.length);
  // Nothing more can come: that endpoint's place in the feed is past the last of these events.
  const last = mine.at(-1)!;
  await waitFor('the endpoint read past the last event', async () => {
    const { rows } = await app.database.pool.query<{ past: boolean }>('SELECT (cursor_xid, cursor_id) >= ($2::xid8, $3::bigint) AS past FROM webhook_endpoints WHERE id = $1', [
      someEndpoint.id,
      last.xid,
      last.id,
    ]);
    return rows[0]!.past;
  });
  t.deepEqual(
    first(receivedMine(every)),
    mine.map((e) => e.id),
    'all of them, in feed order',
  );
  t.deepEqual(first(receivedMine(some)), expectedSome);
  t.true(
    some.received.every((x) => matches((JSON.parse(x.body) as Event).type)),
    'no event of another type, of any object',
  );
});

test('a receiver that fails its first answers gets the event again with backoff, then it succeeds; the log shows each attempt', async (t) => {
  const r = await receiver();
  const fails = [500, 503, 'hang' as const, 404];
  let answered = 0;
  const name = unique('Flaky');
  // Other tests create users too: only this test's event meets the failures.
  const isMine = (body: string) => (JSON.parse(body) as { data: { object: { name?: string } } }).data.object.name === name;
  r.answer = (got) => (isMine(got.body) ? (fails[answered++] ?? 204) : 200);
  const endpoint = await register(app, `${r.url}/flaky`, ['user.created']);
  const { data: user } = await app.client.POST('/users', { body: { name, email: `${unique('flaky').replace(/\W/g, '.')}@example.com` } });
  const eventId = await userEventId(user!.id);
  const mine = () => r.received.filter((x) => isMine(x.body));
  try {
    await waitFor('a 2xx in the end', () => mine().length >= 5);
  } catch (err) {
    t.log(JSON.stringify(await deliveries(endpoint.id)), `received ${mine().length} of mine, ${r.received.length} in all`);
    throw err;
  }
  await waitFor('the success recorded', async () => (await deliveries(endpoint.id, { event_id: eventId }))[0]?.status === 'succeeded');
  const recorded = (await deliveries(endpoint.id, { event_id: eventId }))[0]!;
  // (On a loaded machine an attempt may also time out on its own: then there are more of them.)
  t.deepEqual(
    recorded.attempts.map((a) => a.status_code).filter((s) => s !== null),
    [500, 503, 404, 204],
  );
  t.deepEqual(recorded.attempts.map((a) => a.succeeded).slice(-1), [true]);
  t.is(recorded.attempt_count, recorded.attempts.length);
  t.regex(recorded.attempts.find((a) => a.status_code === null)!.error!, /timeout after 3000 ms/);
  t.true(recorded.attempts.every((a) => a.trigger === 'scheduled'));
  t.is(recorded.next_attempt_at, null);
  t.true(
    mine().every((x) => x.headers['webhook-id'] === `evt_${eventId}`),
    'the same webhook-id on every attempt',
  );
  // Backoff: the n-th retry came no sooner than 0.8 x base x 2^(n-1) after the attempt before it ended.
  const starts = recorded.attempts.map((a) => Date.parse(a.attempted_at));
  for (let n = 1; n < starts.length; n++) {
    const previousEnd = starts[n - 1]! + recorded.attempts[n - 1]!.duration_ms;
    t.true(starts[n]! - previousEnd >= 0.8 * RETRY_BASE_MS * 2 ** (n - 1) - 5, `retry ${n} waited its backoff`);
  }
  t.log(
    `gaps between attempts (ms): ${starts
      .slice(1)
      .map((s, i) => s - starts[i]!)
      .join(', ')}`,
  );
});

test("a failing event holds back the endpoint's later events until it succeeds", async (t) => {
  const r = await receiver();
  // The first event fails twice (other tests' users, also delivered here, are answered 200).
  const names = [unique('First'), unique('Second'), unique('Third')];
  const nameOf = (body: string) => (JSON.parse(body) as { data: { object: { name?: string } } }).data.object.name;
  let firstFailures = 0;
  r.answer = (got) => (nameOf(got.body) === names[0] && firstFailures < 2 ? (firstFailures++, 500) : 200);
  await register(app, `${r.url}/ordered`, ['user.created']);
  const users = [];
  for (const name of names) users.push((await app.client.POST('/users', { body: { name, email: `${unique('ordered').replace(/\W/g, '.')}@example.com` } })).data!);
  const ids = await Promise.all(users.map((u) => userEventId(u.id)));
  await waitFor('the third event', () => eventIdsOf(r.received).includes(ids[2]!));
  const order = eventIdsOf(r.received).filter((id) => ids.includes(id));
  t.deepEqual(order, [ids[0], ids[0], ids[0], ids[1], ids[2]], 'nothing after the first event before it succeeded');
});

test('a delivery that keeps failing is given up after the retry period, then the next event goes; the retry operation sends it again', async (t) => {
  const quick = await startTestApp({ WEBHOOK_ALLOW_PRIVATE: '1', WEBHOOK_RETRY_BASE_MS: '50', WEBHOOK_RETRY_MAX_MS: '200', WEBHOOK_RETRY_FOR_MS: '2000', WEBHOOK_POLL_MS: '20' });
  try {
    const r = await receiver();
    const { data: endpoint } = await quick.client.POST('/webhook-endpoints', { body: { url: `${r.url}/give-up`, event_types: ['feature.created'] } });
    const failing = unique('Failing');
    r.answer = (got) => ((JSON.parse(got.body) as { data: { object: { name?: string } } }).data.object.name === failing ? 500 : 200);
    await quick.client.POST('/features', { body: { name: failing } });
    const { data: next } = await quick.client.POST('/features', { body: { name: unique('Next') } });
    await waitFor('the next event', () => r.received.some((x) => x.body.includes(`"name":"${next!.name}"`)));
    const list = async (query: { status?: 'failed' } = {}) =>
      (await quick.client.GET('/webhook-endpoints/{id}/deliveries', { params: { path: { id: endpoint!.id }, query } })).data!.data;
    const [given] = await list({ status: 'failed' });
    t.is(given!.next_attempt_at, null);
    t.true(given!.attempt_count >= 2);
    const period = Date.parse(given!.attempts.at(-1)!.attempted_at) - Date.parse(given!.attempts[0]!.attempted_at);
    t.true(period >= 2000, 'retried for the whole retry period');
    const failedReceipts = r.received.filter((x) => x.headers['webhook-id'] === `evt_${given!.event_id}`).length;
    t.is(failedReceipts, given!.attempt_count);
    const nextAt = r.received.findIndex((x) => x.body.includes(`"name":"${next!.name}"`));
    t.is(r.received.slice(nextAt).filter((x) => x.headers['webhook-id'] === `evt_${given!.event_id}`).length, 0, 'the next event only after it was given up');

    // The retry operation: a given-up delivery gets one more attempt, out of band, and succeeds.
    r.answer = () => 200;
    const { data: retried, response } = await quick.client.POST('/webhook-endpoints/{id}/deliveries/{delivery_id}/retry', {
      params: { path: { id: endpoint!.id, delivery_id: given!.id } },
    });
    t.is(response.status, 202);
    t.truthy(retried!.next_attempt_at);
    await waitFor('the manual attempt', () => r.received.filter((x) => x.headers['webhook-id'] === `evt_${given!.event_id}`).length > failedReceipts);
    await waitFor('recorded', async () => (await list()).find((d) => d.id === given!.id)!.status === 'succeeded');
    const after = (await list()).find((d) => d.id === given!.id)!;
    t.is(after.attempts.at(-1)!.trigger, 'manual');
    t.is(after.next_attempt_at, null);
  } finally {
    await quick.close();
  }
});

test('the retry operation sends a succeeded delivery again now, with the same webhook-id; unknown ones are 404, a disabled endpoint 409', async (t) => {
  const r = await receiver();
  const endpoint = await register(app, `${r.url}/again`, ['user.created']);
  const user = await createUser();
  const eventId = await userEventId(user.id);
  await waitFor('delivered', async () => (await deliveries(endpoint.id, { event_id: eventId }))[0]?.status === 'succeeded');
  const [delivery] = await deliveries(endpoint.id, { event_id: eventId });
  const { response } = await app.client.POST('/webhook-endpoints/{id}/deliveries/{delivery_id}/retry', { params: { path: { id: endpoint.id, delivery_id: delivery!.id } } });
  t.is(response.status, 202);
  await waitFor('sent again', () => eventIdsOf(r.received).filter((id) => id === eventId).length === 2);
  t.is(r.received.filter((x) => x.headers['webhook-id'] === `evt_${eventId}`).length, 2);
  await waitFor('logged', async () => (await deliveries(endpoint.id, { event_id: eventId }))[0]!.attempt_count === 2);
  t.deepEqual(
    (await deliveries(endpoint.id, { event_id: eventId }))[0]!.attempts.map((a) => a.trigger),
    ['scheduled', 'manual'],
  );

  const missing = await app.client.POST('/webhook-endpoints/{id}/deliveries/{delivery_id}/retry', { params: { path: { id: endpoint.id, delivery_id: 999_999_999 } } });
  t.is(missing.response.status, 404);
  await app.client.PATCH('/webhook-endpoints/{id}', { params: { path: { id: endpoint.id } }, body: { enabled: false } });
  const disabled = await app.client.POST('/webhook-endpoints/{id}/deliveries/{delivery_id}/retry', { params: { path: { id: endpoint.id, delivery_id: delivery!.id } } });
  t.is(disabled.response.status, 409);
});

test.serial("deliveries follow the feed's order: an event of a transaction still open holds back later commits, then both come in transaction order", async (t) => {
  const r = await receiver();
  await register(app, `${r.url}/feed-order`, ['user.created']);
  const early = await app.database.pool.connect();
  try {
    await early.query('BEGIN');
    const {
      rows: [earlyUser],
    } = await early.query<{ id: number }>(`INSERT INTO users (name, email) VALUES ('Early', $1) RETURNING id`, [`${unique('early').replace(/\W/g, '.')}@example.com`]);
    const late = await createUser(); // commits while `early` is still open
    const lateEvent = await userEventId(late.id);
    // Give the worker many polls: it must not send the later event while the earlier one may still commit.
    await sleep(500);
    t.false(eventIdsOf(r.received).includes(lateEvent), 'not sent while an earlier transaction is open');
    await early.query('COMMIT');
    const earlyEvent = await userEventId(earlyUser!.id);
    await waitFor('both', () => eventIdsOf(r.received).includes(lateEvent));
    t.deepEqual(eventIdsOf(r.received), [earlyEvent, lateEvent]);
  } finally {
    await early.query('ROLLBACK').catch(() => undefined);
    early.release();
  }
});

test('a slow receiver never slows the API: requests are answered while deliveries hang, and the hanging attempt times out', async (t) => {
  const r = await receiver();
  r.answer = () => 'hang';
  const endpoint = await register(app, `${r.url}/slow`, ['user.created', 'user.updated']);
  const first = await createUser();
  await waitFor('a delivery hanging', () => r.hanging() >= 1);
  const latencies: number[] = [];
  let whileHanging = 0;
  for (let i = 0; i < 30; i++) {
    if (r.hanging() >= 1) whileHanging++;
    const started = performance.now();
    const user = await createUser();
    const { response } = await app.client.GET('/users/{id}', { params: { path: { id: user.id } } });
    t.is(response.status, 200);
    latencies.push(performance.now() - started);
  }
  t.true(whileHanging >= 1, 'requests were made while a delivery hung');
  latencies.sort((a, b) => a - b);
  t.log(`30 POST + GET pairs, ${whileHanging} of them started while a delivery hung: p50 pair ${latencies[15]!.toFixed(1)} ms, max ${latencies.at(-1)!.toFixed(1)} ms`);
  void first;
  // Whichever event came first (other tests create users too) holds the endpoint: its attempts time out.
  await waitFor('an attempt timed out', async () => ((await deliveries(endpoint.id))[0]?.attempt_count ?? 0) >= 1);
  const [delivery] = await deliveries(endpoint.id);
  t.regex(delivery!.attempts[0]!.error!, /^timeout after 3000 ms$/);
  t.is(delivery!.status, 'pending');
  await app.client.DELETE('/webhook-endpoints/{id}', { params: { path: { id: endpoint.id } } });
});

test('commit to receipt on loopback: p50 (recorded, not asserted)', async (t) => {
  const r = await receiver();
  await register(app, `${r.url}/latency`, ['user.created']);
  const samples: number[] = [];
  for (let i = 0; i < 40; i++) {
    const before = r.received.length;
    const { response } = await app.client.POST('/users', { body: { name: unique('Fast'), email: `${unique('fast').replace(/\W/g, '.')}@example.com` } });
    const committed = performance.now(); // the 201 is sent after the commit
    t.is(response.status, 201);
    await waitFor('received', () => r.received.length > before);
    samples.push(r.received[before]!.at - committed);
  }
  samples.sort((a, b) => a - b);
  t.log(
    `commit (201 received) to receipt, 40 events, WEBHOOK_POLL_MS=50: p50 ${samples[20]!.toFixed(1)} ms, p90 ${samples[36]!.toFixed(1)} ms, max ${samples.at(-1)!.toFixed(1)} ms`,
  );
  t.pass();
});

test('without WEBHOOK_ALLOW_PRIVATE, private targets are refused at registration (400 naming /url) and at delivery', async (t) => {
  const strict = await startTestApp({ WEBHOOK_POLL_MS: '20', WEBHOOK_TIMEOUT_MS: '1500' });
  try {
    const r = await receiver();
    for (const url of [
      r.url,
      'http://localhost:8080/',
      'http://10.0.0.8/',
      'http://172.16.5.4/',
      'http://192.168.1.1/',
      'http://169.254.169.254/latest/meta-data',
      'http://[::1]/',
      'http://[fe80::1]/',
      'http://[fc00::1]/',
      'http://[::ffff:127.0.0.1]/',
      'http://0.0.0.0/',
      'http://100.64.1.1/',
    ]) {
      const { response, error } = await strict.client.POST('/webhook-endpoints', { body: { url, event_types: ['user.created'] } });
      t.is(response.status, 400, url);
      t.deepEqual(
        error?.errors?.map((e) => e.pointer),
        ['/url'],
        url,
      );
    }
    for (const url of ['ftp://example.com/', 'https://example.com/#x', 'not a url']) {
      const { response, error } = await strict.client.POST('/webhook-endpoints', { body: { url, event_types: ['user.created'] } });
      t.is(response.status, 400, url);
      t.is(error?.errors?.[0]?.pointer, '/url', url);
    }
    const { rows: counted } = await strict.database.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM webhook_endpoints');
    t.is(counted[0]!.n, 0, 'nothing stored');

    // Endpoints stored behind the API's back (SQL): the worker still refuses to connect, by IP literal and by name.
    const { rows: stored } = await strict.database.pool.query<{ id: number }>(
      `INSERT INTO webhook_endpoints (url, event_types, secret)
       VALUES ($1, '{user.created}', 'whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD4GeGKtTrdiU='),
              ($2, '{user.created}', 'whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD4GeGKtTrdiU=')
       RETURNING id`,
      [`${r.url}/literal`, `http://localhost:${r.port}/by-name`],
    );
    const patched = await strict.client.PATCH('/webhook-endpoints/{id}', { params: { path: { id: stored[0]!.id } }, body: { url: 'http://10.1.2.3/hooks' } });
    t.is(patched.response.status, 400, 'a PATCH of url is checked as registration is');
    t.is(patched.error?.errors?.[0]?.pointer, '/url');
    await createUser(strict);
    for (const { id } of stored) {
      await waitFor('an attempt recorded', async () => {
        const { rows } = await strict.database.pool.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1',
          [id],
        );
        return rows[0]!.n >= 1;
      });
      const {
        rows: [attempt],
      } = await strict.database.pool.query<{ error: string; status_code: number | null }>(
        'SELECT a.error, a.status_code FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1 ORDER BY a.attempt LIMIT 1',
        [id],
      );
      t.is(attempt!.status_code, null);
      t.regex(attempt!.error, /^refused target: .*(127\.0\.0\.1|::1).*not a public address/);
    }
    t.is(r.received.length, 0, 'no request reached the private receiver');
  } finally {
    await strict.close();
  }
});

// Serial (run before the others): starting four more processes loads a small machine heavily.
test.serial('with WEB_CONCURRENCY=3 besides this service, four workers on one database deliver each event once (leases)', async (t) => {
  const others = await startInstance({ DATABASE_URL: app.databaseUrl, WEB_CONCURRENCY: '3', API_KEYS: 'other-instance', WEBHOOK_ALLOW_PRIVATE: '1', WEBHOOK_POLL_MS: '50' });
  try {
    const r = await receiver();
    const paths = ['/twin-1', '/twin-2', '/twin-3'];
    for (const p of paths) await register(app, `${r.url}${p}`, ['feature.created']);
    const expected: number[] = [];
    for (let batch = 0; batch < 10; batch++) {
      const { rows } = await app.database.pool.query<{ id: number }>(
        `WITH f AS (INSERT INTO features (name) SELECT $1 || ' ' || g FROM generate_series(1, 10) g RETURNING id)
         SELECT e.id FROM events e JOIN f ON e.object_type = 'feature' AND e.object_id = f.id::text ORDER BY e.xid, e.id`,
        [unique('Twin')],
      );
      expected.push(...rows.map((row) => row.id));
    }
    const mine = (p: string) => eventIdsOf(r.received.filter((x) => x.path === p)).filter((id) => expected.includes(id));
    await waitFor('every event at every endpoint', () => paths.every((p) => mine(p).length >= expected.length));
    await sleep(300);
    for (const p of paths) t.deepEqual(mine(p), expected, `${p}: each event once, in order`);
  } finally {
    await others.stop();
  }
});
