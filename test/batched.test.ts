import test from 'ava';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../src/db/schema.js';
import { batchedByKey, MAX_BATCH, paddedKeys } from '../src/db/batched.js';
import { toSubscription } from '../src/resources/subscriptions.js';
import { startTestApp, type TestApp } from './support/app.js';

/** Reads by id that requests make in one turn of the event loop share one statement (src/db/batched.ts). */
let app: TestApp;

test.before(async () => {
  app = await startTestApp();
  await app.database.pool.query("INSERT INTO users (name, email) SELECT 'User ' || g, 'u' || g || '@example.com' FROM generate_series(1, 50) g");
  await app.database.pool.query(
    `INSERT INTO subscriptions (user_id, status, plan_cost, billing_period, start_date)
     SELECT 1 + g % 50, 'active', g * 1.25, 'month', date '2024-01-01' + g FROM generate_series(1, 300) g`,
  );
});

test.after.always(async () => {
  await app?.close();
});

/** A read of keys 1-100 (none above), whose statements are recorded; key 13 makes its statement fail. */
function recordingReader() {
  const statements: Array<{ db: Kysely<Database>; keys: number[] }> = [];
  const read = batchedByKey(
    async (db, keys) => {
      statements.push({ db, keys });
      const { rows } = await sql<{ id: number; double: number }>`
        SELECT k AS id, k * 2 + 0 / (k - 13) AS double
        FROM unnest(${keys}::int[]) AS k WHERE k <= 100`.execute(db);
      return rows;
    },
    (row) => row.id,
  );
  return { read, statements };
}

test.serial('keys asked for in one turn go out in one statement, each read gets its own row, a key without one gets undefined', async (t) => {
  const { read, statements } = recordingReader();
  const db = app.database.db;
  const keys = [5, 7, 5, 99, 200, 7, 1];
  const rows = await Promise.all(keys.map((key) => read(db, key)));
  t.deepEqual(
    rows.map((row) => row?.double),
    [10, 14, 10, 198, undefined, 14, 2],
  );
  t.is(statements.length, 1);
  t.deepEqual(statements[0]!.keys, [5, 7, 99, 200, 1], 'each key once, in the order first asked');

  // Another turn, another statement.
  t.is((await read(db, 3))?.double, 6);
  t.is(statements.length, 2);
});

test.serial(`more than ${MAX_BATCH} keys in one turn go out in statements of at most ${MAX_BATCH}`, async (t) => {
  const { read, statements } = recordingReader();
  const db = app.database.db;
  const keys = Array.from({ length: 150 }, (_, i) => i + 14);
  const rows = await Promise.all(keys.map((key) => read(db, key)));
  t.deepEqual(
    rows.map((row) => row?.id),
    keys.map((key) => (key <= 100 ? key : undefined)),
  );
  t.deepEqual(
    statements.map((s) => s.keys.length),
    [MAX_BATCH, MAX_BATCH, 150 - 2 * MAX_BATCH],
  );
});

test.serial('a statement that fails fails every read it answered and no other; a transaction never shares a statement with the pool', async (t) => {
  const { read, statements } = recordingReader();
  const db = app.database.db;
  const failing = await Promise.allSettled([read(db, 12), read(db, 13), read(db, 14)]);
  t.deepEqual(
    failing.map((result) => result.status),
    ['rejected', 'rejected', 'rejected'],
  );
  t.regex(String((failing[0] as PromiseRejectedResult).reason), /division by zero/);
  t.is((await read(db, 12))?.double, 24, 'the next turn is not affected');

  // A read that throws instead of rejecting fails its batch the same way.
  const throwing = batchedByKey<{ id: number }>(
    () => {
      throw new Error('thrown before any statement');
    },
    (row) => row.id,
  );
  const thrown = await Promise.allSettled([throwing(db, 1), throwing(db, 2)]);
  t.deepEqual(
    thrown.map((result) => result.status),
    ['rejected', 'rejected'],
  );

  statements.length = 0;
  const [inTransaction, outside] = await db.transaction().execute((trx) => Promise.all([read(trx, 20), read(db, 21)]));
  t.is(inTransaction?.double, 40);
  t.is(outside?.double, 42);
  t.is(statements.length, 2);
  t.not(statements[0]!.db, statements[1]!.db);
});

test('a batch is sent as a power of two keys, padded with its last', (t) => {
  t.deepEqual(paddedKeys([4]), [4]);
  t.deepEqual(paddedKeys([4, 9]), [4, 9]);
  t.deepEqual(paddedKeys([4, 9, 1]), [4, 9, 1, 1]);
  t.deepEqual(paddedKeys(Array.from({ length: 33 }, (_, i) => i)).length, 64);
  t.deepEqual(paddedKeys(Array.from({ length: MAX_BATCH }, (_, i) => i)).length, MAX_BATCH);
});

test.serial('GETs by id made at once: each gets its own subscription (or a 404), and a write made before them is in every answer', async (t) => {
  const db = app.database.db;
  const { response: patched } = await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: 150 } }, body: { status: 'paused' } });
  t.is(patched.status, 200);
  const ids = [...Array.from({ length: 300 }, (_, i) => 300 - i), 150, 150, 301, 9_999_999, 150];
  const responses = await Promise.all(ids.map(async (id) => ({ id, response: await app.fetch(`/api/subscriptions/${id}`) })));
  const rows = new Map((await db.selectFrom('subscriptions').selectAll().execute()).map((row) => [row.id, row]));
  const wrong: string[] = [];
  for (const { id, response } of responses) {
    const row = rows.get(id);
    const body = await response.text();
    if (!row) {
      if (response.status !== 404) wrong.push(`${id}: ${response.status}, expected 404`);
    } else if (response.status !== 200 || body !== JSON.stringify(toSubscription(row))) wrong.push(`${id}: ${response.status} ${body}`);
    if (id === 150 && JSON.parse(body).status !== 'paused') wrong.push(`150 without the write made before it: ${body}`);
  }
  t.deepEqual(wrong, []);
});
