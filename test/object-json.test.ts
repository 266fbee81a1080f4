import test from 'ava';
import { sql } from 'kysely';
import { etagOf } from '../src/http/respond.js';
import { toFeature } from '../src/resources/features.js';
import { toSubscription } from '../src/resources/subscriptions.js';
import { toUser } from '../src/resources/users.js';
import { startTestApp, type TestApp } from './support/app.js';

/**
 * GET /api/<resource>/{id} sends the JSON text PostgreSQL writes (migration 0024, api_json), while
 * lists and writes send JSON.stringify of the representation built in TypeScript. The two must be
 * the same bytes, or a GET's ETag would not match the one a write checks If-Match against.
 */
let app: TestApp;

/** Texts JSON.stringify escapes (quotes, backslashes, control characters) or writes as they are (the rest). */
const AWKWARD = ['"quoted"', 'back\\slash', 'tab\there\nnew line\r\f\b', '\u0001\u001f\u007f', 'é日本😀', '\u2028\u2029', '</script>', "it's"];

/** Timestamps toISOString writes in four-digit years: microseconds below, at and above a millisecond, before 1970, other offsets. */
const TIMES = [
  '1970-01-01 00:00:00+00',
  '1969-12-31 23:59:59.999999+00',
  '1900-02-28 12:00:00.0005+00',
  '2026-06-30 12:34:56.000999+00',
  '2026-03-29 02:30:00.5+02',
  '9999-12-31 23:59:59.999999+00',
  '1000-01-01 00:00:00.001+00',
];

test.before(async () => {
  // One hook: ava runs before hooks concurrently, and the rows need the service's database.
  app = await startTestApp();
  const q = (text: string, values: unknown[] = []) => app.database.pool.query(text, values);
  for (const [i, text] of AWKWARD.entries()) {
    const at = TIMES[i % TIMES.length];
    const later = TIMES[(i + 3) % TIMES.length];
    const { rows } = await q('INSERT INTO users (name, email, created_at, updated_at) VALUES ($1, $2, $3, $4) RETURNING id', [
      `name ${text}`,
      `o'neil+{${i}}|x/y=z@example.com`,
      at,
      later,
    ]);
    await q('INSERT INTO features (name, description, created_at, updated_at) VALUES ($1, $2, $3, $4)', [`feature ${i} ${text}`, i % 3 ? `about ${text}` : null, later, at]);
    await q(
      `INSERT INTO subscriptions (user_id, status, plan_name, plan_cost, billing_period, start_date, end_date, created_at, updated_at)
       VALUES ($1, 'active', $2, $3, $4, $5, $6, $7, $8)`,
      [rows[0].id, i % 2 ? `plan ${text}` : null, ['0', '0.5', '19.9', '9999999999.99'][i % 4], i % 2 ? 'year' : 'month', '2024-02-29', i % 3 ? '2030-12-31' : null, at, later],
    );
  }
  // And rows of random text: every character class above, mixed, at random lengths and times.
  await q(`
    INSERT INTO users (name, email, created_at, updated_at)
    SELECT 'u' || string_agg(chr((ARRAY[1, 8, 9, 10, 13, 31, 34, 47, 60, 92, 127, 160, 233, 8232, 26085, 128512, 65 + (n % 26)])[1 + floor(random() * 17)::int]), '')
                || g, 'r' || g || '@example.com',
           timestamptz '1950-01-01' + random() * interval '100 years', timestamptz '1950-01-01' + random() * interval '100 years'
    FROM generate_series(1, 200) g, generate_series(1, 1 + (g * 7) % 30) n GROUP BY g`);
  await q(`
    INSERT INTO subscriptions (user_id, status, plan_name, plan_cost, billing_period, start_date, end_date)
    SELECT u.id, (ARRAY['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired'])[1 + u.id % 6],
           CASE WHEN u.id % 5 = 0 THEN NULL ELSE left(u.name, 100) END, round((random() * 1000)::numeric, (u.id % 3)::int),
           CASE WHEN u.id % 2 = 0 THEN 'month' ELSE 'year' END, date '2020-01-01' + (u.id % 2000)::int, NULL
    FROM users u`);
});

test.after.always(async () => {
  await app?.close();
});

test('api_json writes exactly JSON.stringify of the representation, for every user, feature and subscription', async (t) => {
  const compare = async <Row>(table: string, represent: (row: Row) => object) => {
    const rows = await app.database.db
      .selectFrom(table as 'users')
      .selectAll()
      .select(sql<string>`api_json(${sql.table(table)})`.as('json'))
      .orderBy('id')
      .execute();
    t.true(rows.length >= AWKWARD.length, `${table}: ${rows.length} rows`);
    const differing = rows.filter((row) => JSON.stringify(represent(row as unknown as Row)) !== row.json);
    t.deepEqual(
      differing.map((row) => ({ sql: row.json, typescript: JSON.stringify(represent(row as unknown as Row)) })),
      [],
      `${table}: ${differing.length} of ${rows.length} differ`,
    );
  };
  await compare('users', toUser);
  await compare('features', toFeature);
  await compare('subscriptions', toSubscription);
});

test('GET /api/<resource>/{id} sends that text with the ETag writes compute, and If-Match with it is accepted', async (t) => {
  const db = app.database.db;
  const targets = [
    { path: 'users', rows: await db.selectFrom('users').selectAll().orderBy('id').limit(AWKWARD.length).execute(), represent: toUser },
    { path: 'features', rows: await db.selectFrom('features').selectAll().orderBy('id').execute(), represent: toFeature },
    { path: 'subscriptions', rows: await db.selectFrom('subscriptions').selectAll().orderBy('id').limit(AWKWARD.length).execute(), represent: toSubscription },
  ] as const;
  for (const { path, rows, represent } of targets) {
    for (const row of rows) {
      const representation = (represent as (r: typeof row) => object)(row);
      const response = await app.fetch(`/api/${path}/${row.id}`);
      t.is(response.status, 200);
      t.is(response.headers.get('content-type'), 'application/json; charset=utf-8');
      t.is(await response.text(), JSON.stringify(representation), `${path}/${row.id}`);
      t.is(response.headers.get('etag'), etagOf(representation), `${path}/${row.id}`);
    }
  }
  const [subscription] = targets[2].rows;
  const etag = (await app.fetch(`/api/subscriptions/${subscription!.id}`)).headers.get('etag')!;
  const patched = await app.fetch(`/api/subscriptions/${subscription!.id}`, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/merge-patch+json', 'If-Match': etag },
    body: JSON.stringify({ status: 'paused' }),
  });
  t.is(patched.status, 200);
});
