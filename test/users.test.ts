import test from 'ava';
import { startTestApp, useTestApp } from './support/app.js';

const app = useTestApp(test);

let serial = 0;
const uniqueEmail = (prefix = 'user') => `${prefix}.${process.pid}.${++serial}@example.com`;

async function createUser(name = 'Ada Lovelace', email = uniqueEmail()) {
  const { data, response } = await app.client.POST('/users', { body: { name, email } });
  if (!data) throw new Error(`create failed: ${response.status}`);
  return { user: data, response };
}

/** How many stored users have one of these emails, ignoring case (tests in a file run concurrently). */
const usersWithEmail = async (emails: string[]) =>
  Number((await app.database.pool.query('SELECT count(*) FROM users WHERE lower(email) = ANY($1)', [emails.map((e) => e.toLowerCase())])).rows[0].count);

test('creating a user is a 201 with Location, ETag and the stored object', async (t) => {
  const email = uniqueEmail('ada');
  const { user, response } = await createUser('Ada', email);
  t.is(response.status, 201);
  t.is(response.headers.get('location'), `/api/users/${user.id}`);
  t.truthy(response.headers.get('etag'));
  t.like(user, { name: 'Ada', email });
  const row = await app.database.db.selectFrom('users').selectAll().where('id', '=', user.id).executeTakeFirstOrThrow();
  t.is(row.email, email);
});

test('a user reads back with the same ETag, and If-None-Match gives 304', async (t) => {
  const { user, response: created } = await createUser();
  const { data, response } = await app.client.GET('/users/{id}', { params: { path: { id: user.id } } });
  t.is(response.status, 200);
  t.deepEqual(data, user);
  t.is(response.headers.get('etag'), created.headers.get('etag'));
  const notModified = await app.fetch(`/api/users/${user.id}`, { headers: { 'If-None-Match': response.headers.get('etag')! } });
  t.is(notModified.status, 304);
});

test('an unknown user id is a 404 problem', async (t) => {
  const { error, response } = await app.client.GET('/users/{id}', { params: { path: { id: 987654321 } } });
  t.is(response.status, 404);
  t.is(response.headers.get('content-type'), 'application/problem+json');
  t.is(error?.status, 404);
  t.regex(error?.detail ?? '', /user 987654321 does not exist/);
});

test('a non-numeric or out-of-range id is a 400 naming the parameter', async (t) => {
  for (const id of ['abc', '0', '-1', '9007199254740992', '1.5']) {
    const response = await app.fetch(`/api/users/${id}`);
    t.is(response.status, 400, id);
    const problem = await response.json();
    t.deepEqual(
      problem.errors.map((e: { parameter: string }) => e.parameter),
      ['id'],
      id,
    );
  }
});

test('a taken email is a 409, ignoring case, and stores nothing', async (t) => {
  const email = uniqueEmail('Grace');
  await createUser('Grace', email);
  const { error, response } = await app.client.POST('/users', { body: { name: 'Other', email: email.toUpperCase() } });
  t.is(response.status, 409);
  t.deepEqual(
    error?.errors?.map((e) => e.pointer),
    ['/email'],
  );
  t.is(await usersWithEmail([email]), 1);
});

test('changing an email to a taken one, by PATCH or PUT, is a 409 naming /email and changes nothing', async (t) => {
  const taken = uniqueEmail('Taken');
  await createUser('Taken', taken);
  const { user } = await createUser('Mover', uniqueEmail('mover'));
  const patched = await app.client.PATCH('/users/{id}', { params: { path: { id: user.id } }, body: { email: taken.toUpperCase() } });
  const replaced = await app.client.PUT('/users/{id}', { params: { path: { id: user.id } }, body: { name: 'Mover', email: taken } });
  for (const { error, response } of [patched, replaced]) {
    t.is(response.status, 409);
    t.deepEqual(
      error?.errors?.map((e) => e.pointer),
      ['/email'],
    );
  }
  const { data } = await app.client.GET('/users/{id}', { params: { path: { id: user.id } } });
  t.is(data?.email, user.email);
  t.is(await usersWithEmail([taken]), 1);
});

test('invalid fields are a 400 naming each field, and store nothing', async (t) => {
  const sent: string[] = [];
  const cases: Array<[unknown, string[]]> = [
    [{ name: 'X', email: 'not-an-email' }, ['/email']],
    [{ name: '', email: uniqueEmail() }, ['/name']],
    [{ name: '   ', email: uniqueEmail() }, ['/name']],
    [{ name: 'x'.repeat(201), email: uniqueEmail() }, ['/name']],
    [{ email: uniqueEmail() }, ['/name']],
    [{ name: 42, email: uniqueEmail() }, ['/name']],
    [{ name: 'X', email: uniqueEmail(), admin: true }, ['/admin']],
    [{}, ['/name', '/email']],
  ];
  for (const [body, pointers] of cases) {
    if (typeof (body as { email?: unknown }).email === 'string') sent.push((body as { email: string }).email);
    const response = await app.fetch('/api/users', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    t.is(response.status, 400, JSON.stringify(body));
    const problem = await response.json();
    t.deepEqual(problem.errors.map((e: { pointer: string }) => e.pointer).sort(), [...pointers].sort(), JSON.stringify(body));
  }
  t.is(await usersWithEmail(sent), 0);
});

test('malformed JSON is a 400, a non-JSON body a 415, an oversized body a 413', async (t) => {
  const hugeEmail = uniqueEmail('huge');
  const malformed = await app.fetch('/api/users', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name": "x",' });
  t.is(malformed.status, 400);
  const text = await app.fetch('/api/users', { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'name=x' });
  t.is(text.status, 415);
  const form = await app.fetch('/api/users', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'name=x&email=a@b.co' });
  t.is(form.status, 415);
  const huge = await app.fetch('/api/users', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'x'.repeat(200_000), email: hugeEmail }),
  });
  t.is(huge.status, 413);
  t.is(await usersWithEmail(['a@b.co', hugeEmail]), 0);
});

test('PATCH is a merge patch: only the fields sent change', async (t) => {
  const { user } = await createUser('Before', uniqueEmail());
  const { data, response } = await app.client.PATCH('/users/{id}', { params: { path: { id: user.id } }, body: { name: 'After' } });
  t.is(response.status, 200);
  t.is(data?.name, 'After');
  t.is(data?.email, user.email);
  t.true(Date.parse(data!.updated_at) >= Date.parse(user.updated_at));
  const asMergePatch = await app.fetch(`/api/users/${user.id}`, {
    method: 'PATCH',
    headers: { 'content-type': 'application/merge-patch+json' },
    body: JSON.stringify({ name: 'Merged' }),
  });
  t.is(asMergePatch.status, 200);
  t.is((await asMergePatch.json()).name, 'Merged');
});

test('PUT replaces the whole user and requires every field', async (t) => {
  const { user } = await createUser();
  const email = uniqueEmail('replaced');
  const { data, response } = await app.client.PUT('/users/{id}', { params: { path: { id: user.id } }, body: { name: 'Replaced', email } });
  t.is(response.status, 200);
  t.like(data, { id: user.id, name: 'Replaced', email });
  const partial = await app.fetch(`/api/users/${user.id}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Only name' }) });
  t.is(partial.status, 400);
});

test('a stale If-Match is a 412 and changes nothing; the current ETag succeeds', async (t) => {
  const { user, response: created } = await createUser('Tagged', uniqueEmail());
  const etag = created.headers.get('etag')!;
  await app.client.PATCH('/users/{id}', { params: { path: { id: user.id } }, body: { name: 'Changed elsewhere' } });
  const stale = await app.client.PATCH('/users/{id}', {
    params: { path: { id: user.id }, header: { 'If-Match': etag } },
    body: { name: 'Lost update' },
  });
  t.is(stale.response.status, 412);
  const current = await app.client.GET('/users/{id}', { params: { path: { id: user.id } } });
  t.is(current.data?.name, 'Changed elsewhere');
  const fresh = await app.client.PATCH('/users/{id}', {
    params: { path: { id: user.id }, header: { 'If-Match': current.response.headers.get('etag')! } },
    body: { name: 'Applied' },
  });
  t.is(fresh.response.status, 200);
  const staleDelete = await app.client.DELETE('/users/{id}', { params: { path: { id: user.id }, header: { 'If-Match': etag } } });
  t.is(staleDelete.response.status, 412);
  const stalePut = await app.client.PUT('/users/{id}', { params: { path: { id: user.id }, header: { 'If-Match': etag } }, body: { name: 'N', email: uniqueEmail() } });
  t.is(stalePut.response.status, 412);
});

test('deleting a user is a 204, then a 404', async (t) => {
  const { user } = await createUser();
  const { response } = await app.client.DELETE('/users/{id}', { params: { path: { id: user.id } } });
  t.is(response.status, 204);
  const again = await app.client.DELETE('/users/{id}', { params: { path: { id: user.id } } });
  t.is(again.response.status, 404);
  const read = await app.client.GET('/users/{id}', { params: { path: { id: user.id } } });
  t.is(read.response.status, 404);
});

test('the list pages by cursor with a Link header and returns every user exactly once', async (t) => {
  // A database of its own: the other tests of this file create and delete users concurrently.
  const own = await startTestApp();
  t.teardown(() => own.close());
  for (let i = 0; i < 7; i++) {
    const { response } = await own.client.POST('/users', { body: { name: `Pager ${i}`, email: uniqueEmail('pager') } });
    t.is(response.status, 201);
  }
  const all = await own.database.db.selectFrom('users').select('id').orderBy('id').execute();
  t.is(all.length, 7);
  const seen: number[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const { data, response } = await own.client.GET('/users', { params: { query: { limit: 3, ...(cursor ? { cursor } : {}) } } });
    t.is(response.status, 200);
    seen.push(...data!.data.map((u) => u.id));
    cursor = data!.next_cursor ?? undefined;
    const link = response.headers.get('link');
    if (cursor) t.is(link, `</api/users?limit=3&cursor=${cursor}>; rel="next"`);
    else t.is(link, null);
    pages++;
  } while (cursor && pages < 100);
  t.deepEqual(
    seen,
    all.map((r) => r.id),
  );
  t.is(pages, 3);
});

test('limit is 1..500: 0 and 501 are 400s, not silent clamps', async (t) => {
  for (const limit of ['0', '501', 'ten']) {
    const response = await app.fetch(`/api/users?limit=${limit}`);
    t.is(response.status, 400, limit);
    t.deepEqual(
      (await response.json()).errors.map((e: { parameter: string }) => e.parameter),
      ['limit'],
    );
  }
  const max = await app.fetch('/api/users?limit=500');
  t.is(max.status, 200);
});

test('a tampered or foreign cursor is a 400', async (t) => {
  for (let i = 0; i < 3; i++) await createUser();
  const { data } = await app.client.GET('/users', { params: { query: { limit: 1 } } });
  const cursor = data!.next_cursor!;
  const [payload, signature] = cursor.split('.');
  const forged = Buffer.from(JSON.stringify(['id', 0])).toString('base64url');
  for (const bad of [`${forged}.${signature}`, `${payload}.${signature!.slice(0, -1)}${signature!.endsWith('A') ? 'B' : 'A'}`, 'garbage', `${payload}`, '..']) {
    const response = await app.fetch(`/api/users?cursor=${encodeURIComponent(bad)}`);
    t.is(response.status, 400, bad);
  }
});

test('an unknown query parameter is a 400', async (t) => {
  const response = await app.fetch('/api/users?colour=blue');
  t.is(response.status, 400);
  t.deepEqual((await response.json()).errors, [{ parameter: 'colour', message: 'is not a known field' }]);
});

test('the email filter finds a user ignoring case', async (t) => {
  const email = uniqueEmail('Filter.Me');
  const { user } = await createUser('Filtered', email);
  const { data } = await app.client.GET('/users', { params: { query: { email: email.toUpperCase() } } });
  t.deepEqual(
    data?.data.map((u) => u.id),
    [user.id],
  );
  const none = await app.client.GET('/users', { params: { query: { email: 'nobody@example.com' } } });
  t.deepEqual(none.data?.data, []);
  t.is(none.data?.next_cursor, null);
});

test('trailing slashes are tolerated on collection and item paths', async (t) => {
  const { user } = await createUser();
  t.is((await app.fetch('/api/users/')).status, 200);
  t.is((await app.fetch(`/api/users/${user.id}/`)).status, 200);
  const created = await app.fetch('/api/users/', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'Slash', email: uniqueEmail() }),
  });
  t.is(created.status, 201);
});

test('a wrong method is a 405 with Allow', async (t) => {
  const response = await app.fetch('/api/users', { method: 'DELETE' });
  t.is(response.status, 405);
  t.is(response.headers.get('allow'), 'HEAD, GET, POST');
});
