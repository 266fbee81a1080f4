import test from 'ava';
import { CursorCodec } from '../src/http/cursor.js';
import { featurePageQuery } from '../src/resources/features.js';
import { useTestApp } from './support/app.js';

const app = useTestApp(test);

let serial = 0;
const unique = (prefix: string) => `${prefix} ${process.pid}.${++serial}`;

async function createFeature(name = unique('Feature'), description?: string | null) {
  const { data, response, error } = await app.client.POST('/features', { body: { name, ...(description !== undefined ? { description } : {}) } });
  if (!data) throw new Error(`feature not created: ${response.status} ${JSON.stringify(error)}`);
  return { feature: data, response };
}

const featuresNamed = async (name: string) => Number((await app.database.pool.query('SELECT count(*) FROM features WHERE lower(name) = lower($1)', [name])).rows[0].count);

test('creating a feature is a 201 with Location and ETag', async (t) => {
  const name = unique('SMS Notifications');
  const { feature, response } = await createFeature(name, 'Texts when something happens');
  t.is(response.status, 201);
  t.is(response.headers.get('location'), `/api/features/${feature.id}`);
  t.truthy(response.headers.get('etag'));
  t.like(feature, { name, description: 'Texts when something happens' });
  const bare = await createFeature();
  t.is(bare.feature.description, null);
});

test('a duplicate name, ignoring case, is a 409 naming /name and stores nothing', async (t) => {
  const name = unique('Priority Support');
  await createFeature(name);
  const { error, response } = await app.client.POST('/features', { body: { name: name.toUpperCase() } });
  t.is(response.status, 409);
  t.deepEqual(
    error?.errors?.map((e) => e.pointer),
    ['/name'],
  );
  t.is(await featuresNamed(name), 1);
});

test('invalid feature bodies are 400s naming the field', async (t) => {
  const cases: Array<[unknown, string[]]> = [
    [{}, ['/name']],
    [{ name: '  ' }, ['/name']],
    [{ name: 'x'.repeat(201) }, ['/name']],
    [{ name: 'Ok', description: 'd'.repeat(2001) }, ['/description']],
    [{ name: 'Ok', price: 1 }, ['/price']],
  ];
  for (const [body, pointers] of cases) {
    const response = await app.fetch('/api/features', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    t.is(response.status, 400, JSON.stringify(body));
    t.deepEqual(
      (await response.json()).errors.map((e: { pointer: string }) => e.pointer),
      pointers,
      JSON.stringify(body),
    );
  }
});

test('a feature reads back with its ETag; an unknown id is a 404', async (t) => {
  const { feature, response: created } = await createFeature();
  const { data, response } = await app.client.GET('/features/{id}', { params: { path: { id: feature.id } } });
  t.deepEqual(data, feature);
  t.is(response.headers.get('etag'), created.headers.get('etag'));
  const missing = await app.client.GET('/features/{id}', { params: { path: { id: 987654321 } } });
  t.is(missing.response.status, 404);
  t.regex(missing.error?.detail ?? '', /feature 987654321 does not exist/);
});

test('q finds names containing the text ignoring case, with % and _ taken literally', async (t) => {
  const tag = `tag${process.pid}x${++serial}`;
  const names = [`${tag} 100% Uptime`, `${tag} Under_score`, `${tag} Underscore`, `${tag.toUpperCase()} SHOUTING`];
  for (const name of names) await createFeature(name);
  const search = async (q: string) => {
    const { data, response } = await app.client.GET('/features', { params: { query: { q, limit: 500 } } });
    t.is(response.status, 200, q);
    return data!.data.map((f) => f.name);
  };
  t.deepEqual((await search(tag)).sort(), [...names].sort());
  t.deepEqual(await search(`${tag} 100%`), [names[0]]);
  t.deepEqual(await search(`${tag} Under_`), [names[1]]);
  t.deepEqual(await search(`${tag} under`), [names[1], names[2]]);
  t.deepEqual(await search(`${tag} shout`), [names[3]]);
  t.true((await search('%')).every((name) => name.includes('%')));
  t.deepEqual(await search(`${tag}\\`), []);
  const empty = await app.fetch('/api/features?q=');
  t.is(empty.status, 400);
});

test('the feature list pages by id, each feature once', async (t) => {
  const tag = `pager${process.pid}x${++serial}`;
  const created: number[] = [];
  for (let i = 0; i < 5; i++) created.push((await createFeature(`${tag} ${i}`)).feature.id);
  const seen: number[] = [];
  let cursor: string | undefined;
  do {
    const { data, response } = await app.client.GET('/features', { params: { query: { q: tag, limit: 2, ...(cursor ? { cursor } : {}) } } });
    t.is(response.status, 200);
    seen.push(...data!.data.map((f) => f.id));
    cursor = data!.next_cursor ?? undefined;
    if (cursor) t.regex(response.headers.get('link') ?? '', /rel="next"/);
  } while (cursor);
  t.deepEqual(seen, created);
  const tampered = await app.client.GET('/features', { params: { query: { cursor: 'abc.def' } } });
  t.is(tampered.response.status, 400);
});

test('PATCH changes only what is sent; null clears the description; a taken name is a 409', async (t) => {
  const { feature } = await createFeature(unique('Patchable'), 'Some text');
  const { data, response } = await app.client.PATCH('/features/{id}', { params: { path: { id: feature.id } }, body: { description: null } });
  t.is(response.status, 200);
  t.like(data, { name: feature.name, description: null });
  const renamed = await app.client.PATCH('/features/{id}', { params: { path: { id: feature.id } }, body: { name: `${feature.name} v2` } });
  t.is(renamed.data?.name, `${feature.name} v2`);
  const { feature: other } = await createFeature();
  const taken = await app.client.PATCH('/features/{id}', { params: { path: { id: feature.id } }, body: { name: other.name.toLowerCase() } });
  t.is(taken.response.status, 409);
  t.deepEqual(
    taken.error?.errors?.map((e) => e.pointer),
    ['/name'],
  );
  const missing = await app.client.PATCH('/features/{id}', { params: { path: { id: 987654321 } }, body: { name: unique('x') } });
  t.is(missing.response.status, 404);
});

test('PUT replaces the feature: an omitted description becomes null', async (t) => {
  const { feature } = await createFeature(unique('Replaceable'), 'Old text');
  const name = unique('Replaced');
  const { data, response } = await app.client.PUT('/features/{id}', { params: { path: { id: feature.id } }, body: { name } });
  t.is(response.status, 200);
  t.like(data, { id: feature.id, name, description: null });
  const { feature: other } = await createFeature();
  const taken = await app.client.PUT('/features/{id}', { params: { path: { id: feature.id } }, body: { name: other.name } });
  t.is(taken.response.status, 409);
  const missing = await app.client.PUT('/features/{id}', { params: { path: { id: 987654321 } }, body: { name: unique('x') } });
  t.is(missing.response.status, 404);
});

test('a stale If-Match is a 412 for PATCH, PUT and DELETE of a feature', async (t) => {
  const { feature, response: created } = await createFeature();
  const stale = created.headers.get('etag')!;
  await app.client.PATCH('/features/{id}', { params: { path: { id: feature.id } }, body: { description: 'changed' } });
  const patch = await app.client.PATCH('/features/{id}', { params: { path: { id: feature.id }, header: { 'If-Match': stale } }, body: { description: 'lost' } });
  t.is(patch.response.status, 412);
  const put = await app.client.PUT('/features/{id}', { params: { path: { id: feature.id }, header: { 'If-Match': stale } }, body: { name: unique('lost') } });
  t.is(put.response.status, 412);
  const del = await app.client.DELETE('/features/{id}', { params: { path: { id: feature.id }, header: { 'If-Match': stale } } });
  t.is(del.response.status, 412);
  const current = await app.client.GET('/features/{id}', { params: { path: { id: feature.id } } });
  t.is(current.data?.description, 'changed');
  const fresh = await app.client.DELETE('/features/{id}', { params: { path: { id: feature.id }, header: { 'If-Match': current.response.headers.get('etag')! } } });
  t.is(fresh.response.status, 204);
});

test('deleting a feature still attached is a 409 and changes nothing; once detached it is a 204, then a 404', async (t) => {
  const { feature } = await createFeature();
  const { data: user } = await app.client.POST('/users', { body: { name: 'Holder', email: `holder.${process.pid}.${++serial}@example.com` } });
  const { data: subscription } = await app.client.POST('/subscriptions', {
    body: { user_id: user!.id, status: 'active', plan_cost: 5, start_date: '2025-01-01', feature_ids: [feature.id] },
  });
  const attached = await app.client.DELETE('/features/{id}', { params: { path: { id: feature.id } } });
  t.is(attached.response.status, 409);
  t.regex(attached.error?.detail ?? '', /subscription_features/);
  t.is((await app.client.GET('/features/{id}', { params: { path: { id: feature.id } } })).response.status, 200);
  const detached = await app.client.DELETE('/subscriptions/{id}/features/{feature_id}', { params: { path: { id: subscription!.id, feature_id: feature.id } } });
  t.is(detached.response.status, 204);
  const deleted = await app.client.DELETE('/features/{id}', { params: { path: { id: feature.id } } });
  t.is(deleted.response.status, 204);
  const again = await app.client.DELETE('/features/{id}', { params: { path: { id: feature.id } } });
  t.is(again.response.status, 404);
});

// Serial, so it runs before the other tests of this file, which never see its 80,000 rows. Below about
// 60,000 names the planner rightly prefers a scan (the GIN estimate is flat, about 2,000); above, the index.
test.serial('name search (q) is served by the trigram index in a large catalogue, and stays exact', async (t) => {
  const prefix = `Bulk ${process.pid}`;
  await app.database.pool.query(`INSERT INTO features (name, description) SELECT $1::text || ' ' || md5(i::text), NULL FROM generate_series(1, 80000) i`, [prefix]);
  try {
    await app.database.pool.query('ANALYZE features');
    const wanted = (await app.database.pool.query<{ name: string }>(`SELECT $1::text || ' ' || md5('12345') AS name`, [prefix])).rows[0]!.name;
    const term = wanted.slice(-12).toUpperCase();
    const { q } = featurePageQuery(app.database.db, new CursorCodec('unused'), { q: term, limit: 50 });
    const { sql: text, parameters } = q.compile();
    const { rows } = await app.database.pool.query(`EXPLAIN (FORMAT JSON) ${text}`, parameters as unknown[]);
    const indexes: string[] = [];
    const nodes: string[] = [];
    const walk = (node: { 'Node Type': string; 'Index Name'?: string; Plans?: unknown[] }) => {
      nodes.push(node['Index Name'] ? `${node['Node Type']} on ${node['Index Name']}` : node['Node Type']);
      if (node['Index Name']) indexes.push(node['Index Name']);
      for (const child of node.Plans ?? []) walk(child as typeof node);
    };
    walk(rows[0]['QUERY PLAN'][0].Plan);
    t.log(`q=${term}: ${nodes.join(' > ')}`);
    t.true(indexes.includes('features_name_trgm_idx'), `the plan is ${nodes.join(' > ')}`);
    // Through the API: case-insensitive, exactly the one name; % and _ match only themselves.
    const search = async (text: string) => (await app.client.GET('/features', { params: { query: { q: text } } })).data?.data.map((f) => f.name);
    t.deepEqual(await search(term), [wanted]);
    t.deepEqual(await search(`${term.slice(0, 5)}_${term.slice(6)}`), []);
    t.deepEqual(await search(`${term.slice(0, 5)}%${term.slice(7)}`), []);
  } finally {
    await app.database.pool.query('DELETE FROM features WHERE name LIKE $1', [`${prefix} %`]);
  }
});
