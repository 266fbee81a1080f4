import test from 'ava';
import type { components, operations } from '../generated/api.js';
import { useTestApp } from './support/app.js';

type Subscription = components['schemas']['Subscription'];
type SubscriptionCreate = components['schemas']['SubscriptionCreate'];
type ListQuery = NonNullable<operations['listSubscriptions']['parameters']['query']>;

const app = useTestApp(test);

let serial = 0;
const unique = (prefix: string) => `${prefix}.${process.pid}.${++serial}`;

async function createUser() {
  const { data } = await app.client.POST('/users', { body: { name: 'Subscriber', email: `${unique('sub')}@example.com` } });
  if (!data) throw new Error('user not created');
  return data;
}

async function createFeature() {
  const { data } = await app.client.POST('/features', { body: { name: unique('Feature') } });
  if (!data) throw new Error('feature not created');
  return data;
}

async function createSubscription(fields: Partial<SubscriptionCreate> & { user_id: number }) {
  const body: SubscriptionCreate = { status: 'active', plan_cost: '9.99', start_date: '2025-01-15', ...fields };
  const { data, response, error } = await app.client.POST('/subscriptions', { body });
  if (!data) throw new Error(`subscription not created: ${response.status} ${JSON.stringify(error)}`);
  return { subscription: data, response };
}

const countWhere = async (table: 'subscriptions' | 'subscription_features', column: 'user_id' | 'subscription_id', id: number) =>
  Number((await app.database.pool.query(`SELECT count(*) FROM ${table} WHERE ${column} = $1`, [id])).rows[0].count);

const linkedFeatures = async (subscriptionId: number) =>
  (await app.database.db.selectFrom('subscription_features').select('feature_id').where('subscription_id', '=', subscriptionId).orderBy('feature_id').execute()).map(
    (r) => r.feature_id,
  );

/** POSTs a raw JSON body (for bodies the typed client would refuse to compile). */
const postRaw = (path: string, body: unknown, method = 'POST') => app.fetch(`/api${path}`, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

const pointersOf = async (response: Response) => ((await response.json()).errors ?? []).map((e: { pointer?: string; parameter?: string }) => e.pointer ?? e.parameter);

/** Every page of a list, following next_cursor; also checks the Link header of each page. */
async function walk(query: ListQuery, between?: () => Promise<void>): Promise<Subscription[]> {
  const seen: Subscription[] = [];
  let cursor: string | undefined;
  for (let pages = 0; pages < 1000; pages++) {
    const { data, response } = await app.client.GET('/subscriptions', { params: { query: { ...query, ...(cursor ? { cursor } : {}) } } });
    if (!data) throw new Error(`list failed: ${response.status}`);
    seen.push(...data.data);
    cursor = data.next_cursor ?? undefined;
    if (cursor && !response.headers.get('link')?.includes(`cursor=${cursor}`)) throw new Error('Link header lacks the cursor');
    if (!cursor) return seen;
    await between?.();
  }
  throw new Error('too many pages');
}

test('creating a subscription is a 201 with Location, ETag, defaults and exact money', async (t) => {
  const user = await createUser();
  const { subscription, response } = await createSubscription({ user_id: user.id, plan_cost: 19.9 });
  t.is(response.status, 201);
  t.is(response.headers.get('location'), `/api/subscriptions/${subscription.id}`);
  t.truthy(response.headers.get('etag'));
  t.like(subscription, { user_id: user.id, status: 'active', plan_cost: '19.90', billing_period: 'month', plan_name: null, end_date: null, start_date: '2025-01-15' });
  const stored = await app.database.db.selectFrom('subscriptions').selectAll().where('id', '=', subscription.id).executeTakeFirstOrThrow();
  t.is(stored.plan_cost, '19.90');
});

test('plan_cost is accepted as a number or a string and comes back as a two-decimal string', async (t) => {
  const user = await createUser();
  const cases: Array<[number | string, string]> = [
    [19.99, '19.99'],
    ['19.99', '19.99'],
    [20, '20.00'],
    ['0.5', '0.50'],
    [0, '0.00'],
    ['9999999999.99', '9999999999.99'],
  ];
  for (const [sent, expected] of cases) {
    const { subscription } = await createSubscription({ user_id: user.id, plan_cost: sent });
    t.is(subscription.plan_cost, expected, String(sent));
  }
});

test('plan_cost with three decimals, negative or too large is a 400 naming /plan_cost, and nothing is stored', async (t) => {
  const user = await createUser();
  for (const plan_cost of [19.999, '19.999', -1, '-1', '-0.01', 0.1 + 0.2, '1e3', '', '10000000000.00', 1e10]) {
    const response = await postRaw('/subscriptions', { user_id: user.id, status: 'active', plan_cost, start_date: '2025-01-01' });
    t.is(response.status, 400, String(plan_cost));
    t.deepEqual(await pointersOf(response), ['/plan_cost'], String(plan_cost));
  }
  t.is(await countWhere('subscriptions', 'user_id', user.id), 0);
});

test('an unknown user_id is a 400 naming /user_id', async (t) => {
  const response = await postRaw('/subscriptions', { user_id: 987654321, status: 'active', plan_cost: 5, start_date: '2025-01-01' });
  t.is(response.status, 400);
  t.deepEqual(await pointersOf(response), ['/user_id']);
});

test('invalid fields are 400s naming each field', async (t) => {
  const user = await createUser();
  const base = { user_id: user.id, status: 'active', plan_cost: 5, start_date: '2025-01-01' };
  const cases: Array<[Record<string, unknown>, string[]]> = [
    [{ ...base, status: 'gone' }, ['/status']],
    [{ ...base, start_date: '2025-02-30' }, ['/start_date']],
    [{ ...base, billing_period: 'week' }, ['/billing_period']],
    [{ ...base, plan_name: '' }, ['/plan_name']],
    [{ ...base, colour: 'red' }, ['/colour']],
    [{ ...base, feature_ids: [1, 1] }, ['/feature_ids']],
    [{ status: 'active' }, ['/user_id', '/plan_cost', '/start_date']],
  ];
  for (const [body, pointers] of cases) {
    const response = await postRaw('/subscriptions', body);
    t.is(response.status, 400, JSON.stringify(body));
    t.deepEqual((await pointersOf(response)).sort(), [...pointers].sort(), JSON.stringify(body));
  }
  t.is(await countWhere('subscriptions', 'user_id', user.id), 0);
});

test('end_date before start_date is a 400 naming /end_date, on create and on PATCH', async (t) => {
  const user = await createUser();
  const created = await postRaw('/subscriptions', { user_id: user.id, status: 'active', plan_cost: 5, start_date: '2025-03-01', end_date: '2025-02-28' });
  t.is(created.status, 400);
  t.deepEqual(await pointersOf(created), ['/end_date']);
  const { subscription } = await createSubscription({ user_id: user.id, start_date: '2025-03-01', end_date: '2025-03-01' });
  t.is(subscription.end_date, '2025-03-01');
  const patched = await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subscription.id } }, body: { start_date: '2025-04-01' } });
  t.is(patched.response.status, 400);
  t.deepEqual(
    patched.error?.errors?.map((e) => e.pointer),
    ['/end_date'],
  );
});

test('feature_ids are attached in the same transaction as the subscription', async (t) => {
  const user = await createUser();
  const [a, b] = [await createFeature(), await createFeature()];
  const { subscription } = await createSubscription({ user_id: user.id, feature_ids: [b.id, a.id] });
  t.deepEqual(
    await linkedFeatures(subscription.id),
    [a.id, b.id].sort((x, y) => x - y),
  );
  const listed = await app.client.GET('/subscriptions/{id}/features', { params: { path: { id: subscription.id } } });
  t.deepEqual(listed.data?.data.map((l) => l.feature_name).sort(), [a.name, b.name].sort());
});

test('an unknown id in feature_ids is a 400 naming /feature_ids, and nothing is stored', async (t) => {
  const user = await createUser();
  const feature = await createFeature();
  const response = await postRaw('/subscriptions', { user_id: user.id, status: 'active', plan_cost: 5, start_date: '2025-01-01', feature_ids: [feature.id, 987654321] });
  t.is(response.status, 400);
  const problem = await response.json();
  t.deepEqual(
    problem.errors.map((e: { pointer: string }) => e.pointer),
    ['/feature_ids'],
  );
  t.regex(problem.detail, /987654321/);
  t.is(await countWhere('subscriptions', 'user_id', user.id), 0);
  const links = await app.database.db.selectFrom('subscription_features').select('subscription_id').where('feature_id', '=', feature.id).execute();
  t.is(links.length, 0);
});

test('a subscription reads back with its ETag; If-None-Match gives 304; an unknown id is a 404', async (t) => {
  const user = await createUser();
  const { subscription, response: created } = await createSubscription({ user_id: user.id });
  const { data, response } = await app.client.GET('/subscriptions/{id}', { params: { path: { id: subscription.id } } });
  t.is(response.status, 200);
  t.deepEqual(data, subscription);
  t.is(response.headers.get('etag'), created.headers.get('etag'));
  const notModified = await app.fetch(`/api/subscriptions/${subscription.id}`, { headers: { 'If-None-Match': response.headers.get('etag')! } });
  t.is(notModified.status, 304);
  const missing = await app.client.GET('/subscriptions/{id}', { params: { path: { id: 987654321 } } });
  t.is(missing.response.status, 404);
  t.regex(missing.error?.detail ?? '', /subscription 987654321 does not exist/);
  const bad = await app.fetch('/api/subscriptions/abc');
  t.is(bad.status, 400);
});

test('PATCH is a merge patch: only the fields sent change, null clears plan_name and end_date', async (t) => {
  const user = await createUser();
  const { subscription } = await createSubscription({ user_id: user.id, plan_name: 'Pro', end_date: '2025-12-31', billing_period: 'year' });
  const { data, response } = await app.client.PATCH('/subscriptions/{id}', {
    params: { path: { id: subscription.id } },
    body: { plan_cost: '29.5', plan_name: null, end_date: null },
  });
  t.is(response.status, 200);
  t.like(data, { plan_cost: '29.50', plan_name: null, end_date: null, billing_period: 'year', status: 'active', start_date: subscription.start_date });
  const same = await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subscription.id } }, body: {} });
  t.deepEqual(same.data, data);
  const badMoney = await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subscription.id } }, body: { plan_cost: 1.005 } });
  t.is(badMoney.response.status, 400);
  t.deepEqual(
    badMoney.error?.errors?.map((e) => e.pointer),
    ['/plan_cost'],
  );
  const nullStatus = await postRaw(`/subscriptions/${subscription.id}`, { status: null }, 'PATCH');
  t.is(nullStatus.status, 400);
  const badUser = await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subscription.id } }, body: { user_id: 987654321 } });
  t.is(badUser.response.status, 400);
  t.deepEqual(
    badUser.error?.errors?.map((e) => e.pointer),
    ['/user_id'],
  );
  const missing = await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: 987654321 } }, body: { status: 'paused' } });
  t.is(missing.response.status, 404);
});

test('PUT replaces every field: omitted optional fields take their defaults', async (t) => {
  const user = await createUser();
  const other = await createUser();
  const { subscription } = await createSubscription({ user_id: user.id, plan_name: 'Pro', end_date: '2025-12-31', billing_period: 'year' });
  const { data, response } = await app.client.PUT('/subscriptions/{id}', {
    params: { path: { id: subscription.id } },
    body: { user_id: other.id, status: 'paused', plan_cost: 12, start_date: '2025-02-01' },
  });
  t.is(response.status, 200);
  t.like(data, {
    id: subscription.id,
    user_id: other.id,
    status: 'paused',
    plan_cost: '12.00',
    start_date: '2025-02-01',
    plan_name: null,
    end_date: null,
    billing_period: 'month',
  });
  const partial = await postRaw(`/subscriptions/${subscription.id}`, { status: 'active' }, 'PUT');
  t.is(partial.status, 400);
  const missing = await app.client.PUT('/subscriptions/{id}', {
    params: { path: { id: 987654321 } },
    body: { user_id: other.id, status: 'paused', plan_cost: 12, start_date: '2025-02-01' },
  });
  t.is(missing.response.status, 404);
});

test('a stale If-Match is a 412 for PATCH, PUT and DELETE and changes nothing', async (t) => {
  const user = await createUser();
  const { subscription, response: created } = await createSubscription({ user_id: user.id });
  const stale = created.headers.get('etag')!;
  await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subscription.id } }, body: { status: 'past_due' } });
  const patch = await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subscription.id }, header: { 'If-Match': stale } }, body: { status: 'canceled' } });
  t.is(patch.response.status, 412);
  const put = await app.client.PUT('/subscriptions/{id}', {
    params: { path: { id: subscription.id }, header: { 'If-Match': stale } },
    body: { user_id: user.id, status: 'canceled', plan_cost: 1, start_date: '2025-01-01' },
  });
  t.is(put.response.status, 412);
  const del = await app.client.DELETE('/subscriptions/{id}', { params: { path: { id: subscription.id }, header: { 'If-Match': stale } } });
  t.is(del.response.status, 412);
  const current = await app.client.GET('/subscriptions/{id}', { params: { path: { id: subscription.id } } });
  t.is(current.data?.status, 'past_due');
  const fresh = await app.client.PATCH('/subscriptions/{id}', {
    params: { path: { id: subscription.id }, header: { 'If-Match': current.response.headers.get('etag')! } },
    body: { status: 'canceled' },
  });
  t.is(fresh.response.status, 200);
  t.is(fresh.data?.status, 'canceled');
  const freshDelete = await app.client.DELETE('/subscriptions/{id}', { params: { path: { id: subscription.id }, header: { 'If-Match': fresh.response.headers.get('etag')! } } });
  t.is(freshDelete.response.status, 204);
});

test('deleting a subscription is a 204, removes its links but not the features, then a 404', async (t) => {
  const user = await createUser();
  const feature = await createFeature();
  const { subscription } = await createSubscription({ user_id: user.id, feature_ids: [feature.id] });
  const { response } = await app.client.DELETE('/subscriptions/{id}', { params: { path: { id: subscription.id } } });
  t.is(response.status, 204);
  t.is(await countWhere('subscription_features', 'subscription_id', subscription.id), 0);
  t.is((await app.client.GET('/features/{id}', { params: { path: { id: feature.id } } })).response.status, 200);
  const again = await app.client.DELETE('/subscriptions/{id}', { params: { path: { id: subscription.id } } });
  t.is(again.response.status, 404);
});

test('deleting a user cascades to its subscriptions and their links', async (t) => {
  const user = await createUser();
  const feature = await createFeature();
  const { subscription } = await createSubscription({ user_id: user.id, feature_ids: [feature.id] });
  await createSubscription({ user_id: user.id });
  t.is(await countWhere('subscriptions', 'user_id', user.id), 2);
  const { response } = await app.client.DELETE('/users/{id}', { params: { path: { id: user.id } } });
  t.is(response.status, 204);
  t.is(await countWhere('subscriptions', 'user_id', user.id), 0);
  t.is(await countWhere('subscription_features', 'subscription_id', subscription.id), 0);
  t.is((await app.client.GET('/subscriptions/{id}', { params: { path: { id: subscription.id } } })).response.status, 404);
  // The feature is no longer attached anywhere, so it can go now.
  t.is((await app.client.DELETE('/features/{id}', { params: { path: { id: feature.id } } })).response.status, 204);
});

test("a user's subscriptions list pages by id, filters by status, and is a 404 for an unknown user", async (t) => {
  const user = await createUser();
  const other = await createUser();
  const mine: Subscription[] = [];
  for (const status of ['active', 'paused', 'active', 'canceled', 'active'] as const) mine.push((await createSubscription({ user_id: user.id, status })).subscription);
  await createSubscription({ user_id: other.id });
  const seen: number[] = [];
  let cursor: string | undefined;
  do {
    const { data, response } = await app.client.GET('/users/{id}/subscriptions', { params: { path: { id: user.id }, query: { limit: 2, ...(cursor ? { cursor } : {}) } } });
    t.is(response.status, 200);
    seen.push(...data!.data.map((s) => s.id));
    cursor = data!.next_cursor ?? undefined;
  } while (cursor);
  t.deepEqual(
    seen,
    mine.map((s) => s.id),
  );
  const active = await app.client.GET('/users/{id}/subscriptions', { params: { path: { id: user.id }, query: { status: ['active'] } } });
  t.deepEqual(
    active.data?.data.map((s) => s.id),
    mine.filter((s) => s.status === 'active').map((s) => s.id),
  );
  const missing = await app.client.GET('/users/{id}/subscriptions', { params: { path: { id: 987654321 } } });
  t.is(missing.response.status, 404);
});

test("a user's subscriptions take the same sorts and filters as the full list, pages included", async (t) => {
  const user = await createUser();
  const costs = ['30.00', '10.00', '50.00', '20.00', '40.00'];
  const mine = [];
  for (const [i, plan_cost] of costs.entries()) {
    mine.push((await createSubscription({ user_id: user.id, plan_cost, start_date: `2025-0${i + 1}-10` })).subscription);
  }
  const other = await createUser();
  await createSubscription({ user_id: other.id, plan_cost: '25.00' });
  const walk = async (query: Record<string, unknown>) => {
    const ids: number[] = [];
    let cursor: string | undefined;
    do {
      const { data, response } = await app.client.GET('/users/{id}/subscriptions', {
        params: { path: { id: user.id }, query: { limit: 2, ...query, ...(cursor ? { cursor } : {}) } },
      });
      t.is(response.status, 200);
      ids.push(...data!.data.map((s) => s.id));
      cursor = data!.next_cursor ?? undefined;
    } while (cursor);
    return ids;
  };
  const byCost = [...mine].sort((a, b) => Number(b.plan_cost) - Number(a.plan_cost)).map((s) => s.id);
  t.deepEqual(await walk({ sort: '-plan_cost' }), byCost);
  t.deepEqual(
    await walk({ sort: '-start_date' }),
    [...mine].reverse().map((s) => s.id),
  );
  t.deepEqual(
    await walk({ plan_cost_min: '20.00', plan_cost_max: '40.00', start_date_from: '2025-02-01' }),
    mine.filter((s) => Number(s.plan_cost) >= 20 && Number(s.plan_cost) <= 40 && s.start_date >= '2025-02-01').map((s) => s.id),
  );
});

/** A small dataset owned by fresh users, so filters can be checked against what was created. */
async function createDataset() {
  const [u1, u2] = [await createUser(), await createUser()];
  const feature = await createFeature();
  const rows: Array<{ subscription: Subscription; hasFeature: boolean }> = [];
  const statuses = ['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired'] as const;
  for (let i = 0; i < 18; i++) {
    const hasFeature = i % 3 === 0;
    const { subscription } = await createSubscription({
      user_id: i % 2 === 0 ? u1.id : u2.id,
      status: statuses[i % statuses.length]!,
      // Repeated costs and dates, so ties are broken by id.
      plan_cost: `${5 + (i % 5) * 10}.${i % 2 === 0 ? '50' : '05'}`,
      start_date: `2024-0${1 + (i % 4)}-1${i % 3}`,
      ...(hasFeature ? { feature_ids: [feature.id] } : {}),
    });
    rows.push({ subscription, hasFeature });
  }
  return { users: [u1, u2] as const, feature, rows };
}

const cents = (money: string) => Math.round(Number(money) * 100);
const SORTS = ['id', '-id', 'start_date', '-start_date', 'plan_cost', '-plan_cost'] as const;

/** The order a sort names, with ties broken by id in the same direction. */
function sorted(items: Subscription[], sort: (typeof SORTS)[number]): Subscription[] {
  const descending = sort.startsWith('-');
  const key = sort.replace('-', '') as 'id' | 'start_date' | 'plan_cost';
  const value = (s: Subscription) => (key === 'plan_cost' ? cents(s.plan_cost) : key === 'id' ? s.id : s.start_date);
  return [...items].sort((a, b) => {
    const [va, vb] = [value(a), value(b)];
    const order = va < vb ? -1 : va > vb ? 1 : a.id - b.id;
    return descending ? -order : order;
  });
}

test('every filter selects exactly the matching subscriptions', async (t) => {
  const { users, feature, rows } = await createDataset();
  const all = rows.map((r) => r.subscription);
  const ids = (items: Subscription[]) => items.map((s) => s.id).sort((a, b) => a - b);
  const both = (s: Subscription) => users.some((u) => u.id === s.user_id);
  const cases: Array<[ListQuery, (s: Subscription) => boolean]> = [
    [{ user_id: users[0].id }, (s) => s.user_id === users[0].id],
    [{ user_id: users[1].id, status: ['active', 'paused'] }, (s) => s.user_id === users[1].id && ['active', 'paused'].includes(s.status)],
    [{ feature_id: feature.id }, (s) => rows.find((r) => r.subscription.id === s.id)!.hasFeature],
    [
      { user_id: users[0].id, start_date_from: '2024-02-11', start_date_to: '2024-03-12' },
      (s) => s.user_id === users[0].id && s.start_date >= '2024-02-11' && s.start_date <= '2024-03-12',
    ],
    [{ user_id: users[1].id, plan_cost_min: '15.05', plan_cost_max: '35.5' }, (s) => s.user_id === users[1].id && cents(s.plan_cost) >= 1505 && cents(s.plan_cost) <= 3550],
    [{ feature_id: feature.id, status: ['active'], plan_cost_min: '5' }, (s) => rows.find((r) => r.subscription.id === s.id)!.hasFeature && s.status === 'active'],
  ];
  for (const [query, matches] of cases) {
    const got = await walk({ ...query, limit: 500 });
    t.deepEqual(ids(got.filter(both)), ids(all.filter(matches)), JSON.stringify(query));
    // Other tests' rows may match the feature-less filters only when they belong to other users.
    if (query.user_id || query.feature_id) t.is(got.length, got.filter(both).length, JSON.stringify(query));
  }
  // Several statuses are several parameters (explode); a comma-separated value is no status.
  const repeated = await app.fetch(`/api/subscriptions?user_id=${users[1].id}&status=active&status=paused`);
  t.deepEqual(ids((await repeated.json()).data), ids(all.filter(cases[1]![1])));
  const comma = await app.fetch(`/api/subscriptions?user_id=${users[1].id}&status=active,paused`);
  t.is(comma.status, 400);
});

test('every sort pages through a filtered list in order, each row once', async (t) => {
  const { users, rows } = await createDataset();
  const mine = rows.map((r) => r.subscription).filter((s) => s.user_id === users[0].id && s.status !== 'expired');
  const status = ['active', 'trialing', 'past_due', 'paused', 'canceled'] as const;
  for (const sort of SORTS) {
    const got = await walk({ user_id: users[0].id, status: [...status], sort, limit: 2 });
    t.deepEqual(
      got.map((s) => s.id),
      sorted(mine, sort).map((s) => s.id),
      sort,
    );
  }
});

test('a cursor only continues the sort it came from; a tampered cursor is a 400', async (t) => {
  const { users } = await createDataset();
  const { data } = await app.client.GET('/subscriptions', { params: { query: { user_id: users[0].id, sort: 'plan_cost', limit: 1 } } });
  const cursor = data!.next_cursor!;
  const other = await app.client.GET('/subscriptions', { params: { query: { user_id: users[0].id, sort: 'start_date', cursor } } });
  t.is(other.response.status, 400);
  t.deepEqual(
    other.error?.errors?.map((e) => e.parameter),
    ['cursor'],
  );
  const tampered = await app.client.GET('/subscriptions', { params: { query: { sort: 'plan_cost', cursor: `x${cursor}` } } });
  t.is(tampered.response.status, 400);
});

test('bad filter values are 400s naming the parameter', async (t) => {
  const cases: Array<[string, string]> = [
    ['status=gone', 'status'],
    ['plan_cost_min=1.234', 'plan_cost_min'],
    ['plan_cost_max=-1', 'plan_cost_max'],
    ['start_date_from=2024-02-30', 'start_date_from'],
    ['user_id=0', 'user_id'],
    ['feature_id=x', 'feature_id'],
    ['sort=name', 'sort'],
    ['limit=501', 'limit'],
    ['colour=red', 'colour'],
  ];
  for (const [query, parameter] of cases) {
    const response = await app.fetch(`/api/subscriptions?${query}`);
    t.is(response.status, 400, query);
    t.deepEqual(await pointersOf(response), [parameter], query);
  }
});

test('walking a filtered list while rows are inserted returns every pre-existing row exactly once', async (t) => {
  const user = await createUser();
  const before: Subscription[] = [];
  for (let i = 0; i < 12; i++) before.push((await createSubscription({ user_id: user.id, status: i % 3 === 0 ? 'paused' : 'active' })).subscription);
  const expected = before.filter((s) => s.status === 'active').map((s) => s.id);
  const inserted: number[] = [];
  // A writer inserts matching rows (with higher ids) while the reader walks the pages; the reader
  // also inserts one between pages, so some land behind its position and some ahead of it.
  const writer = (async () => {
    for (let i = 0; i < 20; i++) inserted.push((await createSubscription({ user_id: user.id, status: i % 2 ? 'active' : 'paused' })).subscription.id);
  })();
  const seen = await walk({ user_id: user.id, status: ['active'], limit: 2 }, async () => {
    inserted.push((await createSubscription({ user_id: user.id, status: 'active' })).subscription.id);
  });
  await writer;
  const ids = seen.map((s) => s.id);
  t.is(new Set(ids).size, ids.length, 'no row twice');
  t.deepEqual(
    ids.filter((id) => expected.includes(id)),
    expected,
    'every pre-existing row, in order',
  );
  t.true(ids.every((id) => expected.includes(id) || inserted.includes(id)));
  t.deepEqual(
    ids,
    [...ids].sort((a, b) => a - b),
  );
});
