import test from 'ava';
import { openDatabase, type DatabaseHandle } from '../src/db/database.js';
import { ANALYTICS_TABLES, SEEDED_TABLES, SeedRefusedError, seedDatabase, seedIfEmpty, type SeedParameters } from '../src/db/seed.js';
import { createTestDatabase, startTestApp } from './support/app.js';

// A few thousand rows; a fixed `today` so that two seeds compare equal whenever they run.
const SMALL: SeedParameters = { users: 300, subscriptions: 1500, features: 25, seed: 7, today: '2026-03-15' };

const handles: DatabaseHandle[] = [];
async function freshDatabase(): Promise<DatabaseHandle> {
  const handle = openDatabase(await createTestDatabase(), { statementTimeoutMs: 60_000 });
  handles.push(handle);
  return handle;
}
test.after.always(async () => {
  await Promise.all(handles.map((h) => h.close()));
});

const ORDER: Record<(typeof SEEDED_TABLES)[number], string> = {
  users: 'id',
  features: 'id',
  subscriptions: 'id',
  subscription_features: 'subscription_id, feature_id',
};

/** An md5 of each seeded table's whole content, rows in key order. */
async function contentHashes(db: DatabaseHandle): Promise<Record<string, string>> {
  const hashes: Record<string, string> = {};
  for (const table of SEEDED_TABLES) {
    const { rows } = await db.pool.query(`SELECT md5(string_agg(t::text, ',' ORDER BY ${ORDER[table]})) AS hash FROM ${table} t`);
    hashes[table] = rows[0].hash;
  }
  return hashes;
}

const count = async (db: DatabaseHandle, sql: string, params: unknown[] = []) => Number((await db.pool.query(sql, params)).rows[0].count);

/** Every constraint, index and trigger of the seeded and the analytics tables, as the catalog defines them. */
async function schemaSnapshot(db: DatabaseHandle) {
  const { rows } = await db.pool.query(
    `SELECT 'constraint' AS kind, conrelid::regclass::text AS on_table, conname AS name, pg_get_constraintdef(oid) AS def, convalidated::text AS state
     FROM pg_constraint WHERE conrelid = ANY ($1::regclass[])
     UNION ALL
     SELECT 'index', indrelid::regclass::text, indexrelid::regclass::text, pg_get_indexdef(indexrelid), indisvalid::text
     FROM pg_index WHERE indrelid = ANY ($1::regclass[])
     UNION ALL
     SELECT 'trigger', tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled::text
     FROM pg_trigger WHERE tgrelid = ANY ($1::regclass[]) AND NOT tgisinternal
     ORDER BY 1, 2, 3`,
    [[...SEEDED_TABLES, ...ANALYTICS_TABLES]],
  );
  return rows as Array<{ kind: string; on_table: string; name: string; def: string; state: string }>;
}

test('a seed fills every table with the requested counts and believable data', async (t) => {
  const db = await freshDatabase();
  const lines: string[] = [];
  const summary = await seedDatabase(db.pool, SMALL, { log: (line) => lines.push(line) });

  t.is(await count(db, 'SELECT count(*) FROM users'), SMALL.users);
  t.is(await count(db, 'SELECT count(*) FROM features'), SMALL.features);
  t.is(await count(db, 'SELECT count(*) FROM subscriptions'), SMALL.subscriptions);
  const links = await count(db, 'SELECT count(*) FROM subscription_features');
  t.deepEqual(summary.rows, { users: SMALL.users, features: SMALL.features, subscriptions: SMALL.subscriptions, subscription_features: links });
  t.regex(lines.at(-1) ?? '', /^seed: done: .* rows in [\d.]+ s \([\d,]+ rows\/s\)$/);

  // Two or three distinct features on every subscription (distinct: the primary key says so).
  t.is(await count(db, 'SELECT count(*) FROM (SELECT count(*) AS n FROM subscription_features GROUP BY subscription_id) c WHERE n NOT IN (2, 3)'), 0);
  t.is(await count(db, 'SELECT count(*) FROM subscriptions s WHERE NOT EXISTS (SELECT FROM subscription_features f WHERE f.subscription_id = s.id)'), 0);
  // Every status and both billing periods occur, and active is the most common status.
  const { rows: statuses } = await db.pool.query('SELECT status, count(*)::int AS n FROM subscriptions GROUP BY status ORDER BY n DESC');
  t.is(statuses.length, 6);
  t.is(statuses[0].status, 'active');
  t.is(await count(db, 'SELECT count(DISTINCT billing_period) AS count FROM subscriptions'), 2);
  // A handful of named plan tiers, each with one price per billing period.
  t.true((await count(db, 'SELECT count(DISTINCT plan_name) AS count FROM subscriptions')) <= 10);
  t.is(await count(db, 'SELECT count(*) FROM (SELECT FROM subscriptions GROUP BY plan_name, billing_period HAVING count(DISTINCT plan_cost) > 1) x'), 0);
  // Start dates within three years before today; each of the last 12 months has subscriptions.
  t.is(await count(db, `SELECT count(*) FROM subscriptions WHERE start_date > $1::date OR start_date < $1::date - interval '3 years'`, [SMALL.today]), 0);
  t.is(
    await count(
      db,
      `SELECT count(DISTINCT date_trunc('month', start_date::timestamp)) AS count FROM subscriptions
       WHERE start_date >= date_trunc('month', $1::date::timestamp) - interval '11 months'`,
      [SMALL.today],
    ),
    12,
  );
  // Only ended subscriptions have an end_date, never in the future.
  t.is(await count(db, `SELECT count(*) FROM subscriptions WHERE (end_date IS NOT NULL) <> (status IN ('canceled', 'expired')) OR end_date > $1::date`, [SMALL.today]), 0);
  // Nobody subscribed before signing up.
  t.is(await count(db, 'SELECT count(*) FROM subscriptions s JOIN users u ON u.id = s.user_id WHERE s.created_at < u.created_at'), 0);
});

test('the same parameters give identical rows, another SEED different ones', async (t) => {
  const [a, b, c] = await Promise.all([freshDatabase(), freshDatabase(), freshDatabase()]);
  await seedDatabase(a.pool, SMALL);
  await seedDatabase(b.pool, SMALL);
  await seedDatabase(c.pool, { ...SMALL, seed: SMALL.seed + 1 });
  const [hashA, hashB, hashC] = await Promise.all([contentHashes(a), contentHashes(b), contentHashes(c)]);
  t.deepEqual(hashA, hashB);
  for (const table of ['users', 'subscriptions', 'subscription_features']) t.not(hashC[table], hashA[table], table);
});

test('seeding a database that holds data is refused and changes nothing; RESET replaces it', async (t) => {
  const db = await freshDatabase();
  await seedDatabase(db.pool, SMALL);
  const before = await contentHashes(db);

  const refused = await t.throwsAsync(seedDatabase(db.pool, { ...SMALL, seed: 99 }), { instanceOf: SeedRefusedError });
  t.regex(refused?.message ?? '', /not empty.*RESET=1/);
  t.deepEqual(await contentHashes(db), before);
  // seedIfEmpty (make run) leaves it alone too.
  const lines: string[] = [];
  t.is(await seedIfEmpty(db.pool, { ...SMALL, seed: 99 }, (line) => lines.push(line)), undefined);
  t.regex(lines.join('\n'), /already holds data/);
  t.deepEqual(await contentHashes(db), before);

  // A reset truncates with RESTART IDENTITY: the same parameters give the same rows again.
  await seedDatabase(db.pool, { ...SMALL, seed: 99 }, { reset: true });
  t.notDeepEqual(await contentHashes(db), before);
  await seedDatabase(db.pool, SMALL, { reset: true });
  t.deepEqual(await contentHashes(db), before);
});

test('a seed that fails part-way leaves the database exactly as it was', async (t) => {
  const db = await freshDatabase();
  // A rule the generated users break, so the load fails after the tables were emptied and their keys dropped.
  await db.pool.query(`ALTER TABLE users ADD CONSTRAINT users_no_ada CHECK (name NOT LIKE 'Ada %')`);
  await db.pool.query(`INSERT INTO users (name, email) VALUES ('Grace Hopper', 'grace@example.com')`);
  const before = await schemaSnapshot(db);
  const rows = await contentHashes(db);
  await t.throwsAsync(seedDatabase(db.pool, SMALL, { reset: true }), { message: /users_no_ada/ });
  t.deepEqual(await schemaSnapshot(db), before);
  t.deepEqual(await contentHashes(db), rows);
});

test('after a seed every constraint, index and trigger is back and valid, and the aggregates match', async (t) => {
  const db = await freshDatabase();
  const before = await schemaSnapshot(db);
  await seedDatabase(db.pool, SMALL);
  const after = await schemaSnapshot(db);
  t.deepEqual(after, before);
  t.true(
    after.every((r) => r.state !== 'false'),
    'every constraint validated, every index valid',
  );
  t.true(
    after.filter((r) => r.kind === 'trigger').every((r) => r.state === 'O'),
    'every trigger enabled',
  );
  t.true(after.some((r) => r.kind === 'constraint' && r.def.startsWith('FOREIGN KEY')));

  // Identity columns continue after the loaded ids.
  const { rows } = await db.pool.query(`INSERT INTO users (name, email) VALUES ('After Seed', 'after.seed@example.com') RETURNING id`);
  t.is(Number(rows[0].id), SMALL.users + 1);

  // The analytics aggregates (maintained by triggers that were off during the load) equal the base
  // tables. analytics_reconcile() is part of the schema: were it missing, this query fails the test.
  t.deepEqual((await db.pool.query('SELECT * FROM analytics_reconcile()')).rows, []);
});

test('after a seed every table has planner statistics: the seeded tables, the events and every aggregate', async (t) => {
  const db = await freshDatabase();
  await seedDatabase(db.pool, SMALL);
  // reltuples is -1 until a table is first analyzed or vacuumed (PostgreSQL 14+).
  const { rows } = await db.pool.query<{ name: string }>(
    "SELECT c.relname AS name FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' AND c.reltuples < 0 ORDER BY 1",
  );
  t.deepEqual(
    rows.map((r) => r.name),
    [],
  );
  const { rows: aggregates } = await db.pool.query<{ n: string }>(
    "SELECT count(*) AS n FROM pg_class WHERE relname IN ('history_user_months', 'analytics_user_totals', 'events') AND reltuples > 0",
  );
  t.is(Number(aggregates[0]!.n), 3, 'the per-user month aggregates, the user totals and the events are analyzed with their rows');
});

test('seeded rows pass the API: users, subscriptions, features, links and analytics validate against the spec', async (t) => {
  const app = await startTestApp();
  t.teardown(() => app.close());
  // Today's date, so the analytics window of the last 12 months holds the seeded subscriptions.
  await seedDatabase(app.database.pool, { ...SMALL, today: undefined });

  const users = await app.client.GET('/users', { params: { query: { limit: 500 } } });
  t.is(users.response.status, 200);
  t.is(users.data?.data.length, SMALL.users);
  const user = users.data!.data[0]!;
  const one = await app.client.GET('/users/{id}', { params: { path: { id: user.id } } });
  t.deepEqual(one.data, user);
  // Emails are found by the API's own (case-insensitive) filter.
  const byEmail = await app.client.GET('/users', { params: { query: { email: user.email.toUpperCase() } } });
  t.deepEqual(
    byEmail.data?.data.map((u) => u.id),
    [user.id],
  );

  let cursor: string | undefined;
  let seen = 0;
  do {
    const page = await app.client.GET('/subscriptions', { params: { query: { limit: 500, ...(cursor ? { cursor } : {}) } } });
    t.is(page.response.status, 200);
    seen += page.data!.data.length;
    cursor = page.data!.next_cursor ?? undefined;
  } while (cursor);
  t.is(seen, SMALL.subscriptions);

  const features = await app.client.GET('/features', { params: { query: { limit: 500 } } });
  t.is(features.data?.data.length, SMALL.features);
  const links = await app.client.GET('/subscriptions/{id}/features', { params: { path: { id: 1 } } });
  t.is(links.response.status, 200);

  const analytics = await app.client.GET('/analytics');
  t.is(analytics.response.status, 200);
  t.is(analytics.data?.monthly_revenue.length, 12);
  t.true(
    analytics.data!.monthly_revenue.every((m) => m.revenue !== '0.00'),
    'every month of the window has revenue',
  );
  t.is(analytics.data?.top_users.length, 5);
});
