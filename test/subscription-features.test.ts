import test from 'ava';
import { useTestApp } from './support/app.js';

const app = useTestApp(test);

let serial = 0;
const unique = (prefix: string) => `${prefix} ${process.pid}.${++serial}`;

async function createFeature() {
  const { data } = await app.client.POST('/features', { body: { name: unique('Feature') } });
  if (!data) throw new Error('feature not created');
  return data;
}

async function createSubscription(featureIds: number[] = []) {
  const { data: user } = await app.client.POST('/users', { body: { name: 'Linker', email: `linker.${process.pid}.${++serial}@example.com` } });
  const { data } = await app.client.POST('/subscriptions', {
    body: { user_id: user!.id, status: 'active', plan_cost: '15.00', start_date: '2025-01-01', ...(featureIds.length ? { feature_ids: featureIds } : {}) },
  });
  if (!data) throw new Error('subscription not created');
  return data;
}

const attach = (id: number, feature_id: number, usage_limit?: number | null) =>
  app.client.POST('/subscriptions/{id}/features', { params: { path: { id } }, body: { feature_id, ...(usage_limit !== undefined ? { usage_limit } : {}) } });

const storedLinks = async (subscriptionId: number) =>
  app.database.db.selectFrom('subscription_features').select(['feature_id', 'usage_limit']).where('subscription_id', '=', subscriptionId).orderBy('feature_id').execute();

const byId = (a: number, b: number) => a - b;

test('attaching a feature is a 201 with Location, ETag and the feature name', async (t) => {
  const [subscription, feature] = [await createSubscription(), await createFeature()];
  const { data, response } = await attach(subscription.id, feature.id, 100);
  t.is(response.status, 201);
  t.is(response.headers.get('location'), `/api/subscriptions/${subscription.id}/features/${feature.id}`);
  t.truthy(response.headers.get('etag'));
  t.like(data, { subscription_id: subscription.id, feature_id: feature.id, feature_name: feature.name, usage_limit: 100 });
  t.deepEqual(await storedLinks(subscription.id), [{ feature_id: feature.id, usage_limit: 100 }]);
});

test('attaching the same feature twice is a 409 naming /feature_id', async (t) => {
  const [subscription, feature] = [await createSubscription(), await createFeature()];
  await attach(subscription.id, feature.id);
  const { error, response } = await attach(subscription.id, feature.id, 5);
  t.is(response.status, 409);
  t.deepEqual(
    error?.errors?.map((e) => e.pointer),
    ['/feature_id'],
  );
  t.deepEqual(await storedLinks(subscription.id), [{ feature_id: feature.id, usage_limit: null }]);
});

test('an unknown subscription is a 404; an unknown feature is a 400 naming /feature_id', async (t) => {
  const [subscription, feature] = [await createSubscription(), await createFeature()];
  const noSubscription = await attach(987654321, feature.id);
  t.is(noSubscription.response.status, 404);
  t.regex(noSubscription.error?.detail ?? '', /subscription 987654321 does not exist/);
  const noFeature = await attach(subscription.id, 987654321);
  t.is(noFeature.response.status, 400);
  t.deepEqual(
    noFeature.error?.errors?.map((e) => e.pointer),
    ['/feature_id'],
  );
  t.deepEqual(await storedLinks(subscription.id), []);
  const negative = await app.fetch(`/api/subscriptions/${subscription.id}/features`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ feature_id: feature.id, usage_limit: -1 }),
  });
  t.is(negative.status, 400);
});

test('the list of a subscription features pages by feature_id; an unknown subscription is a 404', async (t) => {
  const features = [await createFeature(), await createFeature(), await createFeature()];
  const subscription = await createSubscription(features.map((f) => f.id).reverse());
  const seen: string[] = [];
  let cursor: string | undefined;
  do {
    const { data, response } = await app.client.GET('/subscriptions/{id}/features', {
      params: { path: { id: subscription.id }, query: { limit: 1, ...(cursor ? { cursor } : {}) } },
    });
    t.is(response.status, 200);
    seen.push(...data!.data.map((l) => l.feature_name));
    cursor = data!.next_cursor ?? undefined;
  } while (cursor);
  t.deepEqual(
    seen,
    [...features].sort((a, b) => byId(a.id, b.id)).map((f) => f.name),
  );
  const missing = await app.client.GET('/subscriptions/{id}/features', { params: { path: { id: 987654321 } } });
  t.is(missing.response.status, 404);
});

test('one link reads back with its ETag; a feature not attached is a 404', async (t) => {
  const [feature, other] = [await createFeature(), await createFeature()];
  const subscription = await createSubscription([feature.id]);
  const { data, response } = await app.client.GET('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: subscription.id, feature_id: feature.id } } });
  t.is(response.status, 200);
  t.truthy(response.headers.get('etag'));
  t.like(data, { feature_id: feature.id, feature_name: feature.name, usage_limit: null });
  const notAttached = await app.client.GET('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: subscription.id, feature_id: other.id } } });
  t.is(notAttached.response.status, 404);
  t.regex(notAttached.error?.detail ?? '', new RegExp(`subscription ${subscription.id} to feature ${other.id} does not exist`));
});

test('PATCH changes the usage limit, null removes it, {} changes nothing; a stale If-Match is a 412', async (t) => {
  const feature = await createFeature();
  const subscription = await createSubscription();
  const { response: attached } = await attach(subscription.id, feature.id, 10);
  const path = { id: subscription.id, feature_id: feature.id };
  const { data, response } = await app.client.PATCH('/subscriptions/{id}/features/{feature_id}', { params: { path }, body: { usage_limit: 20 } });
  t.is(response.status, 200);
  t.like(data, { usage_limit: 20, feature_name: feature.name });
  const stale = await app.client.PATCH('/subscriptions/{id}/features/{feature_id}', {
    params: { path, header: { 'If-Match': attached.headers.get('etag')! } },
    body: { usage_limit: 30 },
  });
  t.is(stale.response.status, 412);
  const fresh = await app.client.PATCH('/subscriptions/{id}/features/{feature_id}', {
    params: { path, header: { 'If-Match': response.headers.get('etag')! } },
    body: { usage_limit: null },
  });
  t.is(fresh.response.status, 200);
  t.is(fresh.data?.usage_limit, null);
  const unchanged = await app.client.PATCH('/subscriptions/{id}/features/{feature_id}', { params: { path }, body: {} });
  t.deepEqual(unchanged.data, fresh.data);
  const missing = await app.client.PATCH('/subscriptions/{id}/features/{feature_id}', {
    params: { path: { id: subscription.id, feature_id: 987654321 } },
    body: { usage_limit: 1 },
  });
  t.is(missing.response.status, 404);
  t.deepEqual(await storedLinks(subscription.id), [{ feature_id: feature.id, usage_limit: null }]);
});

test('detaching is a 204 and keeps the feature; a stale If-Match is a 412; detaching again is a 404', async (t) => {
  const feature = await createFeature();
  const subscription = await createSubscription([feature.id]);
  const path = { id: subscription.id, feature_id: feature.id };
  const current = await app.client.GET('/subscriptions/{id}/features/{feature_id}', { params: { path } });
  await app.client.PATCH('/subscriptions/{id}/features/{feature_id}', { params: { path }, body: { usage_limit: 3 } });
  const stale = await app.client.DELETE('/subscriptions/{id}/features/{feature_id}', { params: { path, header: { 'If-Match': current.response.headers.get('etag')! } } });
  t.is(stale.response.status, 412);
  const { response } = await app.client.DELETE('/subscriptions/{id}/features/{feature_id}', { params: { path } });
  t.is(response.status, 204);
  t.deepEqual(await storedLinks(subscription.id), []);
  t.is((await app.client.GET('/features/{id}', { params: { path: { id: feature.id } } })).response.status, 200);
  const again = await app.client.DELETE('/subscriptions/{id}/features/{feature_id}', { params: { path } });
  t.is(again.response.status, 404);
});

test('PUT replaces the whole set: kept links keep added_at, usage limits follow the body, the rest go', async (t) => {
  const [a, b, c] = [await createFeature(), await createFeature(), await createFeature()];
  const subscription = await createSubscription();
  const { data: keptBefore } = await attach(subscription.id, a.id, 1);
  await attach(subscription.id, b.id);
  const { data, response } = await app.client.PUT('/subscriptions/{id}/features', {
    params: { path: { id: subscription.id } },
    body: {
      features: [
        { feature_id: c.id, usage_limit: 7 },
        { feature_id: a.id, usage_limit: 2 },
      ],
    },
  });
  t.is(response.status, 200);
  t.deepEqual(
    data?.data.map((l) => [l.feature_id, l.feature_name, l.usage_limit]),
    [
      [a.id, a.name, 2],
      [c.id, c.name, 7],
    ].sort((x, y) => byId(x[0] as number, y[0] as number)),
  );
  t.is(data?.data.find((l) => l.feature_id === a.id)?.added_at, keptBefore?.added_at);
  t.deepEqual(
    await storedLinks(subscription.id),
    [
      { feature_id: a.id, usage_limit: 2 },
      { feature_id: c.id, usage_limit: 7 },
    ].sort((x, y) => byId(x.feature_id, y.feature_id)),
  );
  const emptied = await app.client.PUT('/subscriptions/{id}/features', { params: { path: { id: subscription.id } }, body: { features: [] } });
  t.deepEqual(emptied.data, { data: [] });
  t.deepEqual(await storedLinks(subscription.id), []);
});

test('PUT with an unknown or repeated feature is a 400 naming it and changes nothing; an unknown subscription is a 404', async (t) => {
  const [a, b] = [await createFeature(), await createFeature()];
  const subscription = await createSubscription([a.id]);
  const unknown = await app.client.PUT('/subscriptions/{id}/features', {
    params: { path: { id: subscription.id } },
    body: { features: [{ feature_id: b.id }, { feature_id: 987654321 }] },
  });
  t.is(unknown.response.status, 400);
  t.deepEqual(
    unknown.error?.errors?.map((e) => e.pointer),
    ['/features/1/feature_id'],
  );
  const repeated = await app.client.PUT('/subscriptions/{id}/features', {
    params: { path: { id: subscription.id } },
    body: { features: [{ feature_id: b.id }, { feature_id: a.id }, { feature_id: b.id, usage_limit: 3 }] },
  });
  t.is(repeated.response.status, 400);
  t.deepEqual(
    repeated.error?.errors?.map((e) => e.pointer),
    ['/features/2/feature_id'],
  );
  t.deepEqual(await storedLinks(subscription.id), [{ feature_id: a.id, usage_limit: null }]);
  const missing = await app.client.PUT('/subscriptions/{id}/features', { params: { path: { id: 987654321 } }, body: { features: [{ feature_id: a.id }] } });
  t.is(missing.response.status, 404);
});

test('concurrent replacements of the set leave exactly one of the sets, never a mix', async (t) => {
  const features = [await createFeature(), await createFeature(), await createFeature(), await createFeature()];
  const subscription = await createSubscription();
  const sets = [
    [features[0]!.id, features[1]!.id],
    [features[2]!.id, features[3]!.id],
  ];
  const results = await Promise.all([
    ...sets.map((set) =>
      app.client.PUT('/subscriptions/{id}/features', { params: { path: { id: subscription.id } }, body: { features: set.map((feature_id) => ({ feature_id })) } }),
    ),
    ...sets.map((set) =>
      app.client.PUT('/subscriptions/{id}/features', { params: { path: { id: subscription.id } }, body: { features: set.map((feature_id) => ({ feature_id })) } }),
    ),
  ]);
  t.true(results.every((r) => r.response.status === 200));
  const stored = (await storedLinks(subscription.id)).map((l) => l.feature_id);
  t.true(
    sets.some((set) => JSON.stringify(set) === JSON.stringify(stored)),
    JSON.stringify(stored),
  );
});

test('a link shows the feature name as it is now', async (t) => {
  const feature = await createFeature();
  const subscription = await createSubscription([feature.id]);
  const name = unique('Renamed');
  await app.client.PATCH('/features/{id}', { params: { path: { id: feature.id } }, body: { name } });
  const { data } = await app.client.GET('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: subscription.id, feature_id: feature.id } } });
  t.is(data?.feature_name, name);
});

test('PUT of the set honours If-Match: the ETag from the list or the last PUT works once; a stale one is a 412 and changes nothing', async (t) => {
  const [a, b] = [await createFeature(), await createFeature()];
  const subscription = await createSubscription([a.id]);
  const put = (features: Array<{ feature_id: number }>, ifMatch?: string) =>
    app.client.PUT('/subscriptions/{id}/features', {
      params: { path: { id: subscription.id }, header: ifMatch ? { 'If-Match': ifMatch } : {} },
      body: { features },
    });
  const listed = await app.client.GET('/subscriptions/{id}/features', { params: { path: { id: subscription.id }, query: { limit: 1 } } });
  const listTag = listed.response.headers.get('etag');
  t.truthy(listTag, 'the first page carries the ETag of the whole set');

  const replaced = await put([{ feature_id: a.id }, { feature_id: b.id }], listTag!);
  t.is(replaced.response.status, 200);
  const putTag = replaced.response.headers.get('etag');
  t.truthy(putTag);
  t.not(putTag, listTag);
  // The list's ETag now describes the same set as the PUT's answer.
  const again = await app.client.GET('/subscriptions/{id}/features', { params: { path: { id: subscription.id } } });
  t.is(again.response.headers.get('etag'), putTag);
  // Paged one at a time: the first page still tags the whole set, a later page carries no ETag.
  const first = await app.client.GET('/subscriptions/{id}/features', { params: { path: { id: subscription.id }, query: { limit: 1 } } });
  t.is(first.response.headers.get('etag'), putTag);
  const second = await app.client.GET('/subscriptions/{id}/features', {
    params: { path: { id: subscription.id }, query: { limit: 1, cursor: first.data!.next_cursor! } },
  });
  t.is(second.data?.data.length, 1);
  t.is(second.response.headers.get('etag'), null);

  // Someone else changes the set: both tags are stale now.
  await app.client.DELETE('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: subscription.id, feature_id: a.id } } });
  for (const stale of [listTag!, putTag!]) {
    const refused = await put([], stale);
    t.is(refused.response.status, 412);
  }
  t.deepEqual(await storedLinks(subscription.id), [{ feature_id: b.id, usage_limit: null }]);
});
