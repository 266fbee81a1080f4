/**
 * make bench's triggers-off inserts (bench/analytics.ts): every trigger that maintains aggregates or
 * history is found and switched off, the rows inserted meanwhile are deleted before the triggers are
 * on again, and the checks the bench relies on find the database consistent afterwards; without the
 * delete they find the difference (so they can fail).
 */
import test from 'ava';
import { checkAnalytics, maintenanceTriggerSwitch, reconcileHistory } from '../bench/analytics.js';
import { openDatabase, type DatabaseHandle } from '../src/db/database.js';
import { createTestDatabase } from './support/app.js';

let database: DatabaseHandle;
test.before(async () => {
  database = openDatabase(await createTestDatabase());
});
test.after.always(async () => {
  await database?.close();
});

const count = async (table: string) => Number((await database.pool.query(`SELECT count(*) AS n FROM ${table}`)).rows[0].n);
const insertSubscriptions = (userId: string, n: number) =>
  database.pool.query(
    `INSERT INTO subscriptions (user_id, status, plan_cost, start_date)
     SELECT $1, (ARRAY['active', 'trialing', 'canceled'])[1 + i % 3], 10 + i, current_date - i FROM generate_series(1, $2) i`,
    [userId, n],
  );
const historyDifferences = async () => (await database.pool.query('SELECT * FROM history_analytics_reconcile()')).rowCount;

// One after another: they share the database and its triggers.
test.serial('the switch names the analytics, history and MRR triggers of the tables a POST writes, and nothing else', async (t) => {
  const triggers = await maintenanceTriggerSwitch(database, () => {});
  for (const expected of [
    'subscriptions.analytics_inserted (analytics_subscriptions_inserted)',
    'subscriptions.history_inserted (history_subscriptions_inserted)',
    'events.history_analytics_inserted (history_events_inserted)',
    'subscription_features.history_inserted (history_subscription_features_inserted)',
  ]) {
    t.true(triggers.names.includes(expected), expected);
  }
  for (const name of triggers.names) {
    t.regex(name, /^(subscriptions|subscription_features|events)\.\w+ \((analytics|history)_\w+\)$/);
    t.notRegex(name, /set_updated_at|history_append_only/);
  }
});

test.serial('rows inserted with the triggers off are deleted before they are on again: analytics and history agree with the base tables', async (t) => {
  const user = (await database.pool.query(`INSERT INTO users (name, email) VALUES ('Bench', 'bench@example.com') RETURNING id`)).rows[0].id as string;
  await insertSubscriptions(user, 20);
  const triggers = await maintenanceTriggerSwitch(database, () => {});
  const [subscriptionsBefore, eventsBefore] = [await count('subscriptions'), await count('events')];
  t.is(eventsBefore, 21); // the user and its 20 subscriptions

  await triggers.disable();
  await insertSubscriptions(user, 7);
  t.is(await count('events'), eventsBefore, 'no history while off');
  t.is(await count('subscriptions'), subscriptionsBefore + 7);

  const restored = await triggers.restore();
  t.is(restored.deleted, 7);
  t.deepEqual(restored.check.mismatches, []);
  t.is(restored.check.error, undefined);
  t.is((await reconcileHistory(database)).differences, 0);
  t.is(await count('subscriptions'), subscriptionsBefore);

  // On again: a new insert is maintained (one more event, and still no difference).
  await insertSubscriptions(user, 1);
  t.is(await count('events'), eventsBefore + 1);
  t.deepEqual((await checkAnalytics(database, 'after', performance.now())).mismatches, []);
  t.is(await historyDifferences(), 0);
});

test.serial('the same checks find rows that were inserted with the triggers off and kept', async (t) => {
  const user = (await database.pool.query(`INSERT INTO users (name, email) VALUES ('Kept', 'kept@example.com') RETURNING id`)).rows[0].id as string;
  const triggers = await maintenanceTriggerSwitch(database, () => {});
  await triggers.disable();
  await insertSubscriptions(user, 5);
  // Enabled again without the delete: these rows are in no aggregate and have no event.
  const names = triggers.names.map((n) => /^(\w+)\.(\w+) /.exec(n)!.slice(1));
  const alter = async (action: string) => {
    for (const [table, trigger] of names) await database.pool.query(`ALTER TABLE ${table} ${action} TRIGGER ${trigger}`);
  };
  await alter('ENABLE');
  t.not((await checkAnalytics(database, 'kept', performance.now())).mismatches.length, 0);
  // The history aggregates agree with the history, which lacks these rows too: what the events miss,
  // the analytics check above sees. The rows deleted with the triggers off, all agrees again.
  t.is(await historyDifferences(), 0);
  await alter('DISABLE');
  await database.pool.query('DELETE FROM subscriptions WHERE user_id = $1', [user]);
  await alter('ENABLE');
  t.deepEqual((await checkAnalytics(database, 'deleted', performance.now())).mismatches, []);
  t.is(await historyDifferences(), 0);
});
