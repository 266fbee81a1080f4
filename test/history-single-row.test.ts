/**
 * The single-row path of the history aggregates (db/migrations/0020_history_single_row.sql): one
 * subscription change of one user, taking effect after that user's latest rows, is applied with
 * single-row upserts; anything else falls back to the set-based statements. These cases pair real
 * transactions so that the fallback and the per-user lock are taken for sure; after each, the
 * aggregates equal what the events say (history_analytics_reconcile finds nothing) and the value
 * log holds the user's figures at each instant.
 */
import test from 'ava';
import type pg from 'pg';
import { openDatabase, type DatabaseHandle } from '../src/db/database.js';
import { createTestDatabase } from './support/app.js';

let database: DatabaseHandle;
test.before(async () => {
  database = openDatabase(await createTestDatabase(), { statementTimeoutMs: 0 });
});
test.after.always(async () => {
  await database?.close();
});

let serial = 0;
const createUser = async () =>
  (await database.pool.query<{ id: string }>(`INSERT INTO users (name, email) VALUES ('Single', $1) RETURNING id`, [`single.${process.pid}.${++serial}@example.com`])).rows[0]!.id;
const insert = (client: pg.PoolClient | pg.Pool, user: string, cost: string, status = 'active') =>
  client.query<{ id: string }>(`INSERT INTO subscriptions (user_id, status, plan_cost, start_date) VALUES ($1, $2, $3, current_date) RETURNING id`, [user, status, cost]);
/** Instants are milliseconds: a pause keeps two writes from sharing one. */
const pause = (client: pg.PoolClient | pg.Pool) => client.query('SELECT pg_sleep(0.01)');
/** Resolves once the backend `pid` waits for a lock (a row's or an advisory one). */
async function blocked(pid: number) {
  for (;;) {
    const { rows } = await database.pool.query<{ w: string | null }>('SELECT wait_event_type AS w FROM pg_stat_activity WHERE pid = $1', [pid]);
    if (rows[0]?.w === 'Lock') return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
const pid = async (client: pg.PoolClient) => (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
const reconcile = async () => (await database.pool.query('SELECT aggregate, key, stored, actual FROM history_analytics_reconcile()')).rows;
/** The user's value log, oldest first: "total/count" at each instant. */
const values = async (user: string) =>
  (await database.pool.query<{ v: string }>(`SELECT total || '/' || subscription_count AS v FROM history_user_values WHERE user_id = $1 ORDER BY effective_at`, [user])).rows.map(
    (r) => r.v,
  );
/** Every row of every history aggregate, as text: equal before and after means nothing was left behind. */
const aggregates = async () =>
  (
    await database.pool.query<{ t: string }>(
      `SELECT concat_ws(' | ',
         (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM history_status_changes x),
         (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM history_revenue_changes x),
         (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM history_user_months x),
         (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM history_mrr_movements x),
         (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM history_user_values x),
         (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM history_snapshot_days x)) AS t`,
    )
  ).rows[0]!.t;

async function withClients<T>(n: number, body: (clients: pg.PoolClient[]) => Promise<T>): Promise<T> {
  const clients = await Promise.all(Array.from({ length: n }, () => database.pool.connect()));
  try {
    return await body(clients);
  } finally {
    for (const client of clients) client.release(true);
  }
}

// One after another: each compares the whole history with the aggregates.
test.serial('a write that started first and commits after a later write of the same user: the later instant is shifted, the aggregates equal the history', async (t) => {
  const user = await createUser();
  await insert(database.pool, user, '10.00');
  await pause(database.pool);
  await withClients(2, async ([early, late]) => {
    await early!.query('BEGIN');
    await early!.query('SELECT now()'); // its effective time is taken here
    await pause(early!);
    await late!.query('BEGIN');
    await insert(late!, user, '5.00');
    await late!.query('COMMIT');
    await insert(early!, user, '2.50'); // takes effect before the late write's instant
    await early!.query('COMMIT');
  });
  // 10 alone, then 12.50 at the early instant, then 17.50 at the late one (shifted by the early write).
  t.deepEqual(await values(user), ['10.00/1', '12.50/2', '17.50/3']);
  t.deepEqual(await reconcile(), []);
});

test.serial('two writes of one user in concurrent transactions: the second waits for the user and reads what the first committed', async (t) => {
  const user = await createUser();
  await withClients(2, async ([first, second]) => {
    await first!.query('BEGIN');
    await insert(first!, user, '20.00'); // holds the user's lock until it commits
    await pause(second!);
    await second!.query('BEGIN');
    const secondPid = await pid(second!);
    const waiting = insert(second!, user, '1.00', 'trialing');
    await blocked(secondPid);
    await first!.query('COMMIT');
    await waiting;
    await second!.query('COMMIT');
  });
  t.deepEqual(await values(user), ['20.00/1', '21.00/2']);
  t.deepEqual(await reconcile(), []);
});

test.serial('a waiting write that started before the one it waited for takes effect before it (back in time under the lock)', async (t) => {
  const user = await createUser();
  await withClients(2, async ([early, late]) => {
    await early!.query('BEGIN');
    await early!.query('SELECT now()');
    await pause(early!);
    await late!.query('BEGIN');
    await insert(late!, user, '7.00');
    const earlyPid = await pid(early!);
    const waiting = insert(early!, user, '3.00');
    await blocked(earlyPid);
    await late!.query('COMMIT');
    await waiting;
    await early!.query('COMMIT');
  });
  t.deepEqual(await values(user), ['3.00/1', '10.00/2']);
  t.deepEqual(await reconcile(), []);
});

test.serial(
  'single-row updates and deletes (status, cost, billing period, start month, another user, a column MRR does not read) keep the aggregates equal to the history',
  async (t) => {
    const [user, other] = [await createUser(), await createUser()];
    const id = (await insert(database.pool, user, '30.00')).rows[0]!.id;
    const updates = [
      `UPDATE subscriptions SET status = 'past_due' WHERE id = $1`,
      `UPDATE subscriptions SET plan_cost = 45.50 WHERE id = $1`,
      `UPDATE subscriptions SET status = 'active', billing_period = 'year' WHERE id = $1`,
      `UPDATE subscriptions SET start_date = start_date - 62 WHERE id = $1`,
      `UPDATE subscriptions SET plan_name = 'Renamed' WHERE id = $1`,
      `UPDATE subscriptions SET plan_cost = 0 WHERE id = $1`,
      `UPDATE subscriptions SET plan_cost = 12.34, status = 'active' WHERE id = $1`,
      `UPDATE subscriptions SET user_id = ${other} WHERE id = $1`,
      `UPDATE subscriptions SET status = 'canceled', end_date = current_date WHERE id = $1`,
      `DELETE FROM subscriptions WHERE id = $1`,
    ];
    for (const update of updates) {
      await database.pool.query(update, [id]);
      t.deepEqual(await reconcile(), [], update);
    }
    t.deepEqual(await values(other), ['12.34/1', '0.00/0']);
  },
);

test.serial('a rolled-back single-row write leaves every history aggregate as it was', async (t) => {
  const user = await createUser();
  await insert(database.pool, user, '8.00');
  const before = await aggregates();
  await withClients(1, async ([client]) => {
    await client!.query('BEGIN');
    await insert(client!, user, '99.00');
    await client!.query(`UPDATE subscriptions SET status = 'paused' WHERE user_id = $1`, [user]);
    await client!.query('ROLLBACK');
  });
  t.is(await aggregates(), before);
  t.deepEqual(await reconcile(), []);
});
