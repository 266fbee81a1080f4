/**
 * Metrics from history (db/migrations/0010_mrr.sql): GET /api/analytics/mrr and GET
 * /api/analytics?as_of= must equal an oracle written here, independently: the state of every
 * subscription and user at an instant taken from the events with plain SQL (each object's latest
 * event in effect then), and the MRR movements classified in TypeScript from each user's MRR at
 * every month end, in cents (BigInt), never from the service's SQL.
 *
 * Time: the history's times are the writing transactions' now(), so a test cannot wait months.
 * In this test database only, events.occurred_at defaults to the setting test.occurred_at when a
 * session sets it (else now(), as in production): a writer sets the instant its changes are
 * recorded at. Steps mostly move forward over 14 months, and some go back (as a transaction that
 * started earlier and committed later would), which exercises changes taking effect in a closed
 * month and the per-object order of effects.
 */
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { sql, type Kysely } from 'kysely';
import type { components } from '../generated/api.js';
import type { Database } from '../src/db/schema.js';
import { seedDatabase } from '../src/db/seed.js';
import { readAnalytics } from '../src/resources/analytics.js';
import { readAnalyticsAsOf, readMrrReport } from '../src/resources/mrr.js';
import { useTestApp } from './support/app.js';
import { writeWhileChecking } from './support/halfway.js';
import { attempt, createUser, deleteMany, deleteOne, deleteUser, nthSubscription, nthUser, pick, statement, updateManyOf, type Statement } from './support/sql-workload.js';

type Analytics = components['schemas']['Analytics'];
type MrrReport = components['schemas']['MrrReport'];
type MrrMonth = components['schemas']['MrrMonth'];

const app = useTestApp(test);

const reset = async () => {
  // Idempotent, in this test's database only (see the top of the file).
  await app.database.pool.query(
    `ALTER TABLE events ALTER occurred_at SET DEFAULT coalesce(nullif(current_setting('test.occurred_at', true), '')::timestamptz, date_trunc('milliseconds', now()))`,
  );
  await app.database.pool.query('TRUNCATE users RESTART IDENTITY CASCADE');
  // A fresh history too: its aggregates follow (the TRUNCATE trigger on events). The service's
  // webhook worker may hold webhook_deliveries while it waits to read events, the cascade's order
  // reversed: PostgreSQL then aborts one of the two (40P01; seen once in CI), and this one tries again.
  for (let attempt = 1; ; attempt++) {
    try {
      await app.database.pool.query('TRUNCATE events CASCADE');
      return;
    } catch (err) {
      if ((err as { code?: string }).code !== '40P01' || attempt === 3) throw err;
    }
  }
};

// ---- the oracle -----------------------------------------------------------------------------

const month = (d: Date) => `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
const addMonths = (ym: string, n: number) => month(new Date(Date.UTC(Number(ym.slice(0, 4)), Number(ym.slice(5, 7)) - 1 + n, 1)));

/** Every subscription as it stood at t (inclusive): its latest event in effect, not a deletion. */
const STATE_AT = `
  WITH ev AS (
    SELECT id, object_id, type, object_subscription AS o,
           max(occurred_at) OVER (PARTITION BY object_id ORDER BY id) AS in_effect_from
    FROM events WHERE object_type = 'subscription'
  ), latest AS (
    SELECT DISTINCT ON (object_id) * FROM ev WHERE in_effect_from <= $1::timestamptz ORDER BY object_id, id DESC
  )
  SELECT (o).user_id, (o).status, (o).billing_period, (o).plan_cost::numeric AS plan_cost, (o).start_date FROM latest
  WHERE type <> 'subscription.deleted'`;

/** Per user, MRR in cents at instant t (strictly before t when `before`). */
async function userMrrAt(db: Kysely<Database>, t: string, before: boolean): Promise<Map<string, bigint>> {
  const at = before ? `(${pgText(t)}::timestamptz - interval '1 microsecond')` : `${pgText(t)}::timestamptz`;
  const { rows } = await sql<{ user_id: string; cents: string }>`
    SELECT user_id::text, (sum(CASE WHEN status <> 'active' THEN 0 WHEN billing_period = 'year' THEN round(plan_cost / 12, 2) ELSE plan_cost END) * 100)::bigint::text AS cents
    FROM (${sql.raw(STATE_AT.replace('$1::timestamptz', at))}) s GROUP BY user_id`.execute(db);
  return new Map(rows.map((r) => [r.user_id, BigInt(r.cents)]));
}
const pgText = (value: string) => `'${value.replace(/'/g, "''")}'`;

const money = (cents: bigint) => `${cents < 0n ? '-' : ''}${(cents < 0n ? -cents : cents) / 100n}.${String((cents < 0n ? -cents : cents) % 100n).padStart(2, '0')}`;
/** a / b rounded half away from zero to `places` decimals, as text; null when b is 0. */
function ratio(a: bigint, b: bigint, places: number): string | null {
  if (b === 0n) return null;
  const scale = 10n ** BigInt(places);
  const q = (a * scale * 2n + b) / (2n * b);
  return `${q / scale}.${String(q % scale).padStart(places, '0')}`;
}

/** The report as the contract defines it, from each user's MRR at every month end since the first event. */
async function expectedReport(db: Kysely<Database>, from: string, to: string, now: Date): Promise<MrrMonth[]> {
  const {
    rows: [first],
  } = await sql<{ m: string | null }>`SELECT to_char(min(occurred_at) AT TIME ZONE 'UTC', 'YYYY-MM') AS m FROM events`.execute(db);
  const start = first?.m && first.m < from ? first.m : from;
  const current = month(now);
  const ends = new Map<string, Map<string, bigint>>();
  for (let m = addMonths(start, -1); m <= to; m = addMonths(m, 1)) {
    // A month's end is the next month's first instant; the current month's, every change recorded.
    ends.set(m, m === current ? await userMrrAt(db, 'infinity', false) : await userMrrAt(db, `${addMonths(m, 1)}-01T00:00:00Z`, true));
  }
  const everPaid = new Set<string>();
  const months: MrrMonth[] = [];
  for (let m = start; m <= to; m = addMonths(m, 1)) {
    const before = ends.get(addMonths(m, -1))!;
    const after = ends.get(m)!;
    const sums = { starting: 0n, ending: 0n, new: 0n, expansion: 0n, contraction: 0n, churn: 0n, reactivation: 0n };
    const counts = { starting: 0n, ending: 0n, new: 0n, reactivated: 0n, churned: 0n };
    for (const user of new Set([...before.keys(), ...after.keys()])) {
      const s = before.get(user) ?? 0n;
      const e = after.get(user) ?? 0n;
      sums.starting += s;
      sums.ending += e;
      if (s > 0n) counts.starting++;
      if (e > 0n) counts.ending++;
      if (s === 0n && e > 0n && everPaid.has(user)) {
        sums.reactivation += e;
        counts.reactivated++;
      } else if (s === 0n && e > 0n) {
        sums.new += e;
        counts.new++;
      } else if (s > 0n && e === 0n) {
        sums.churn += s;
        counts.churned++;
      } else if (s > 0n && e > s) sums.expansion += e - s;
      else if (e > 0n && e < s) sums.contraction += s - e;
    }
    // Whether a user was a customer at an earlier month's end: updated after classifying m.
    for (const [user, e] of after) if (e > 0n) everPaid.add(user);
    if (!identityHolds(sums)) throw new Error(`oracle identity broken in ${m}`);
    if (m < from) continue;
    months.push({
      month: m,
      starting_mrr: money(sums.starting),
      new: money(sums.new),
      expansion: money(sums.expansion),
      contraction: money(sums.contraction),
      churn: money(sums.churn),
      reactivation: money(sums.reactivation),
      ending_mrr: money(sums.ending),
      starting_customers: Number(counts.starting),
      customers: Number(counts.ending),
      new_customers: Number(counts.new),
      reactivated_customers: Number(counts.reactivated),
      churned_customers: Number(counts.churned),
      customer_churn_rate: ratio(counts.churned, counts.starting, 4),
      revenue_churn_rate: ratio(sums.churn + sums.contraction, sums.starting, 4),
      arpa: ratio(sums.ending, counts.ending * 100n, 2) ?? '0.00',
    });
  }
  return months;
}
const identityHolds = (x: { starting: bigint; ending: bigint; new: bigint; expansion: bigint; contraction: bigint; churn: bigint; reactivation: bigint }) =>
  x.starting + x.new + x.expansion + x.reactivation - x.contraction - x.churn === x.ending;

/** Every /api/analytics field at t, from the state at t (plain SQL, as test/analytics.test.ts does over the tables). */
async function expectedAnalyticsAt(db: Kysely<Database>, t: string): Promise<Omit<Analytics, 'as_of'>> {
  const state = STATE_AT.replace('$1::timestamptz', `${pgText(t)}::timestamptz`);
  const { rows } = await sql<{ metrics: Omit<Analytics, 'as_of'> }>`
    WITH subs AS (${sql.raw(state)}),
    m AS (SELECT date_trunc('month', ${sql.raw(pgText(t))}::timestamptz AT TIME ZONE 'UTC') AS m),
    user_state AS (
      SELECT DISTINCT ON (object_id) object_id::bigint AS id, (object_user).name, (object_user).email FROM (
        SELECT object_id, id, object_user, max(occurred_at) OVER (PARTITION BY object_id ORDER BY id) AS f FROM events WHERE object_type = 'user') u
      -- u.id: the event's id (a bare id would be the output column, the user's id, and pick any of their events).
      WHERE f <= ${sql.raw(pgText(t))}::timestamptz ORDER BY object_id, u.id DESC)
    SELECT json_build_object(
      'total_recurring_revenue', (SELECT coalesce(sum(plan_cost), 0)::numeric(30, 2)::text FROM subs WHERE status = 'active'),
      'average_subscription_cost', (SELECT coalesce(round(avg(plan_cost), 2), 0)::numeric(30, 2)::text FROM subs),
      'monthly_revenue', (SELECT json_agg(json_build_object('month', to_char(month, 'YYYY-MM'),
                            'revenue', (SELECT coalesce(sum(plan_cost), 0)::numeric(30, 2)::text FROM subs WHERE to_char(start_date, 'YYYY-MM') = to_char(month, 'YYYY-MM')))
                          ORDER BY month) FROM m, generate_series(m.m - interval '11 months', m.m, interval '1 month') AS month),
      'top_users', (SELECT coalesce(json_agg(json_build_object('user_id', id, 'name', name, 'email', email, 'total_value', total::numeric(30, 2)::text) ORDER BY total DESC, id), '[]')
                    FROM (SELECT s.user_id AS id, u.name, u.email, sum(s.plan_cost) AS total FROM subs s LEFT JOIN user_state u ON u.id = s.user_id
                          GROUP BY 1, 2, 3 ORDER BY total DESC, id LIMIT 5) top),
      'subscription_count', (SELECT count(*) FROM subs),
      'active_subscription_count', (SELECT count(*) FROM subs WHERE status = 'active'),
      'by_status', (SELECT json_agg(json_build_object('status', st, 'count', (SELECT count(*) FROM subs WHERE status = st),
                                                      'revenue', (SELECT coalesce(sum(plan_cost), 0)::numeric(30, 2)::text FROM subs WHERE status = st)) ORDER BY pos)
                    FROM unnest(ARRAY['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired']) WITH ORDINALITY AS x(st, pos)),
      'mrr', (SELECT coalesce(sum(CASE WHEN billing_period = 'year' THEN round(plan_cost / 12, 2) ELSE plan_cost END), 0)::numeric(30, 2)::text FROM subs WHERE status = 'active'),
      'arr', (SELECT (coalesce(sum(plan_cost) FILTER (WHERE billing_period = 'month'), 0) * 12 + coalesce(sum(plan_cost) FILTER (WHERE billing_period = 'year'), 0))::numeric(30, 2)::text
              FROM subs WHERE status = 'active')
    ) AS metrics`.execute(db);
  return rows[0]!.metrics;
}

const withoutAsOf = ({ as_of: _, ...rest }: Analytics) => rest;

/** Leaf paths where two JSON values differ (for readable failures). */
function differences(a: unknown, b: unknown, at = ''): string[] {
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => differences((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], `${at}/${k}`));
  }
  return Object.is(a, b) ? [] : [`${at || '/'}: expected ${JSON.stringify(a)}, got ${JSON.stringify(b)}`];
}

/** The identity, to the cent, in every month of a report. */
function assertIdentity(t: ExecutionContext, report: MrrReport, label: string) {
  const cents = (m: string) => BigInt(m.replace('.', ''));
  let previousEnding: string | undefined;
  for (const m of report.months) {
    t.is(cents(m.starting_mrr) + cents(m.new) + cents(m.expansion) + cents(m.reactivation) - cents(m.contraction) - cents(m.churn), cents(m.ending_mrr), `${label} ${m.month}`);
    t.is(m.starting_customers + m.new_customers + m.reactivated_customers - m.churned_customers, m.customers, `${label} ${m.month} customers`);
    if (previousEnding !== undefined) t.is(m.starting_mrr, previousEnding, `${label} ${m.month} starts where the previous month ended`);
    previousEnding = m.ending_mrr;
  }
}

/**
 * In one REPEATABLE READ snapshot: the report from both sources equals the oracle, /api/analytics's
 * mrr is the current month's ending_mrr, and at each instant both as_of answers equal the oracle.
 */
async function checkInOneSnapshot(from: string, to: string, instants: string[]): Promise<string> {
  return app.database.db
    .transaction()
    .setIsolationLevel('repeatable read')
    .execute(async (trx) => {
      const {
        rows: [clock],
      } = await sql<{ now: Date }>`SELECT now()`.execute(trx);
      const expected = await expectedReport(trx, from, to, clock!.now);
      const fromAggregates = await readMrrReport(trx, { from, to }, 'aggregates');
      const fromEvents = await readMrrReport(trx, { from, to }, 'base_tables');
      const problems: unknown[] = [];
      if (JSON.stringify(fromAggregates.months) !== JSON.stringify(expected)) problems.push({ report: 'aggregates', diff: differences(expected, fromAggregates.months) });
      if (JSON.stringify(fromEvents.months) !== JSON.stringify(expected)) problems.push({ report: 'base_tables', diff: differences(expected, fromEvents.months) });
      const now = await readAnalytics(trx, 'aggregates');
      if (to === month(clock!.now) && now.mrr !== expected.at(-1)!.ending_mrr) problems.push({ mrr: now.mrr, ending: expected.at(-1)!.ending_mrr });
      const states: string[] = [];
      for (const instant of instants) {
        const oracle = await expectedAnalyticsAt(trx, instant);
        const a = withoutAsOf(await readAnalyticsAsOf(trx, instant, 'aggregates'));
        const b = withoutAsOf(await readAnalyticsAsOf(trx, instant, 'base_tables'));
        if (JSON.stringify(a) !== JSON.stringify(oracle)) problems.push({ instant, source: 'aggregates', diff: differences(oracle, a) });
        if (JSON.stringify(b) !== JSON.stringify(oracle)) problems.push({ instant, source: 'base_tables', diff: differences(oracle, b) });
        states.push(JSON.stringify(oracle));
      }
      if (problems.length) throw new Error(`difference:\n${JSON.stringify(problems)}`);
      return JSON.stringify(expected) + states.join();
    });
}

async function reconcile(): Promise<Array<{ aggregate: string }>> {
  const client = await app.database.pool.connect();
  try {
    await client.query('SET statement_timeout = 0');
    return (await client.query<{ aggregate: string }>('SELECT * FROM history_analytics_reconcile()')).rows;
  } finally {
    client.release(true);
  }
}

async function assertReconciled(t: ExecutionContext, label: string) {
  const rows = await reconcile();
  t.deepEqual(rows, [], `${label}: reconcile found differences`);
}

// ---- randomized statements at chosen instants --------------------------------------------------

const STATUSES = ['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired'] as const;
const status = fc.constantFrom(...STATUSES);
const period = fc.constantFrom('month' as const, 'year' as const);
const cost = fc.oneof(
  fc.constantFrom('0.00', '0.01', '9.99', '10.00', '19.99', '120.00', '1234.56'),
  fc.integer({ min: 0, max: 200_000 }).map((c) => (c / 100).toFixed(2)),
);

const insertOne = fc.record({ user: pick, status, cost, period, start: fc.integer({ min: -450, max: 20 }) }).map((s) =>
  statement(
    `INSERT INTO subscriptions (user_id, status, plan_cost, billing_period, start_date)
     SELECT u.id, $2::text, $3::numeric, $4::text, current_date + $5::int FROM ${nthUser('$1')} u`,
    s.user,
    s.status,
    s.cost,
    s.period,
    s.start,
  ),
);
const insertMany = fc.record({ n: fc.integer({ min: 1, max: 12 }), seed: pick }).map((s) =>
  statement(
    `INSERT INTO subscriptions (user_id, status, plan_cost, billing_period, start_date)
     SELECT u.id, (ARRAY['active','active','trialing','past_due','paused','canceled','expired'])[1 + (i + $2) % 7],
            ((i * 7919 + $2) % 30000) / 100.0, CASE WHEN (i + $2) % 3 = 0 THEN 'year' ELSE 'month' END, current_date - ((i * 37 + $2) % 420)
     FROM generate_series(1, $1::int) i
     JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS rn, count(*) OVER () AS n FROM users) u ON u.rn = (i + $2) % u.n`,
    s.n,
    s.seed,
  ),
);
// Updates of what MRR reads: status, plan_cost, billing_period, user_id (and a column it does not read).
const updateOne = fc.record({ sub: pick, status, cost, user: pick, period, name: fc.constantFrom('basic', 'pro') }, { requiredKeys: ['sub'] }).map((s) =>
  statement(
    `UPDATE subscriptions SET status = coalesce($2, status), plan_cost = coalesce($3::numeric, plan_cost),
         user_id = CASE WHEN $4::int IS NULL THEN user_id ELSE coalesce(${nthUser('$4')}, user_id) END,
         billing_period = coalesce($5, billing_period), plan_name = coalesce($6, plan_name)
       WHERE id = ${nthSubscription('$1')}`,
    s.sub,
    s.status ?? null,
    s.cost ?? null,
    s.user ?? null,
    s.period ?? null,
    s.name ?? null,
  ),
);
const bulkUpdates = [
  'UPDATE subscriptions SET plan_cost = plan_cost + 1.01 WHERE id % $1 = $2',
  "UPDATE subscriptions SET status = (ARRAY['active','trialing','past_due','paused','canceled','expired'])[1 + (id + $2) % 6] WHERE id % $1 = $2",
  "UPDATE subscriptions SET billing_period = CASE billing_period WHEN 'month' THEN 'year' ELSE 'month' END WHERE id % $1 = $2",
  'UPDATE subscriptions SET user_id = (SELECT min(id) FROM users) WHERE id % $1 = $2',
  "UPDATE subscriptions SET status = 'active' WHERE id % $1 = $2",
];
const updateMany = updateManyOf(bulkUpdates);
const renameUser = fc.record({ user: pick, n: fc.nat() }).map((s) => statement(`UPDATE users SET name = 'Renamed ' || $2::text WHERE id = ${nthUser('$1')}`, s.user, s.n));

const oneStatement = fc.oneof(
  { weight: 4, arbitrary: insertOne },
  { weight: 1, arbitrary: insertMany },
  { weight: 4, arbitrary: updateOne },
  { weight: 1, arbitrary: updateMany },
  { weight: 2, arbitrary: deleteOne },
  { weight: 1, arbitrary: deleteMany },
  { weight: 1, arbitrary: deleteUser },
  { weight: 1, arbitrary: createUser },
  { weight: 1, arbitrary: renameUser },
);
/** A step, recorded at `days` after the sequence's start (14 months ago); `back`: earlier than the previous step. */
type Step = { days: number; ms: number } & ({ kind: 'statement'; statement: Statement } | { kind: 'transaction'; statements: Statement[]; commit: boolean } | { kind: 'truncate' });
const timing = fc.record({
  advance: fc.oneof({ weight: 5, arbitrary: fc.integer({ min: 0, max: 40 }) }, { weight: 1, arbitrary: fc.integer({ min: -45, max: -1 }) }),
  ms: fc.nat({ max: 86_399_999 }),
});
const step: fc.Arbitrary<{ advance: number; ms: number; body: Step }> = fc
  .tuple(
    timing,
    fc.oneof(
      { weight: 12, arbitrary: oneStatement.map((s) => ({ kind: 'statement' as const, statement: s })) },
      {
        weight: 2,
        arbitrary: fc.record({ statements: fc.array(oneStatement, { minLength: 2, maxLength: 4 }), commit: fc.boolean() }).map((s) => ({ kind: 'transaction' as const, ...s })),
      },
      { weight: 1, arbitrary: fc.constant({ kind: 'truncate' as const }) },
    ),
  )
  .map(([t, body]) => ({ advance: t.advance, ms: t.ms, body: { days: 0, ms: t.ms, ...body } }));

const DAY = 86_400_000;

test.serial('after random writes over 14 months (some recorded back in time), the report and as_of at random instants equal the oracle, to the cent', async (t) => {
  const client = await app.database.pool.connect();
  const now = new Date();
  const to = month(now);
  const from = addMonths(to, -13);
  const origin = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 13, 1);
  let checks = 0;
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(step, { minLength: 1, maxLength: 30 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 2, maxLength: 4 }),
        async (steps, picks) => {
          await reset();
          await client.query("SET test.occurred_at = ''");
          await client.query("INSERT INTO users (name, email) SELECT 'User ' || i, 'seed' || i || '@example.com' FROM generate_series(1, 6) i");
          let day = 0;
          const instants: number[] = [];
          for (const { advance, ms, body } of steps) {
            day = Math.max(0, day + advance);
            // Never in the future: the last steps land at most at now.
            const at = Math.min(origin + day * DAY + ms, now.getTime() - 1000);
            instants.push(at);
            await client.query(`SET test.occurred_at = '${new Date(at).toISOString()}'`);
            if (body.kind === 'truncate') await client.query('TRUNCATE subscriptions CASCADE');
            else if (body.kind === 'statement') await attempt(client, body.statement);
            else {
              await client.query('BEGIN');
              let ok = true;
              for (const one of body.statements) if (ok) ok = await attempt(client, one);
              await client.query(ok && body.commit ? 'COMMIT' : 'ROLLBACK');
            }
            // The service's kept report (src/resources/kept.ts) is sent again only while it is the report.
            const served = (await app.client.GET('/analytics/mrr', { params: { query: { from, to } } })).data!.months;
            const computed = (await readMrrReport(app.database.db, { from, to }, 'base_tables')).months;
            if (JSON.stringify(served) !== JSON.stringify(computed)) throw new Error(`after ${JSON.stringify(body)}: ${JSON.stringify({ served, computed })}`);
          }
          await client.query("SET test.occurred_at = ''");
          // Instants: the recorded ones (where ties and carries are), and random ones across the span.
          const span = now.getTime() - 1000 - origin;
          const chosen = [...instants.slice(-2), ...picks.map((p) => origin + Math.floor(p * span))].map((ms) => new Date(ms).toISOString());
          await checkInOneSnapshot(from, to, chosen);
          checks++;
        },
      ),
      { numRuns: 40, verbose: 1 },
    );
  } finally {
    client.release();
  }
  t.log(`${checks} random histories checked`);
  await assertReconciled(t, 'after the randomized workload');
  const report = (await app.client.GET('/analytics/mrr', { params: { query: { from, to } } })).data!;
  assertIdentity(t, report, 'http');
});

test.serial('an empty history: every month zero, rates null, arpa 0.00; as_of before anything answers zeros', async (t) => {
  await reset();
  const { data } = await app.client.GET('/analytics/mrr', { params: { query: {} } });
  t.is(data!.months.length, 12);
  t.is(data!.months.at(-1)!.month, month(new Date()));
  for (const m of data!.months) {
    t.deepEqual(
      { ...m, month: 'x' },
      {
        month: 'x',
        starting_mrr: '0.00',
        new: '0.00',
        expansion: '0.00',
        contraction: '0.00',
        churn: '0.00',
        reactivation: '0.00',
        ending_mrr: '0.00',
        starting_customers: 0,
        customers: 0,
        new_customers: 0,
        reactivated_customers: 0,
        churned_customers: 0,
        customer_churn_rate: null,
        revenue_churn_rate: null,
        arpa: '0.00',
      },
    );
  }
  const asOf = (await app.client.GET('/analytics', { params: { query: { as_of: '2020-01-01T00:00:00Z' } } })).data!;
  t.is(asOf.as_of, '2020-01-01T00:00:00.000Z');
  t.is(asOf.subscription_count, 0);
  t.is(asOf.monthly_revenue.at(-1)!.month, '2020-01');
});

test.serial('a story told month by month: new, expansion, contraction, churn, reactivation and the rates', async (t) => {
  await reset();
  const c = await app.database.pool.connect();
  try {
    const at = (m: string, day = 10) => c.query(`SET test.occurred_at = '${m}-${String(day).padStart(2, '0')}T12:00:00Z'`);
    const m0 = addMonths(month(new Date()), -5);
    await at(m0);
    await c.query("INSERT INTO users (id, name, email) OVERRIDING SYSTEM VALUE VALUES (1, 'A', 'a@example.com'), (2, 'B', 'b@example.com')");
    await c.query(`INSERT INTO subscriptions (id, user_id, status, plan_cost, billing_period, start_date) OVERRIDING SYSTEM VALUE
                   VALUES (1, 1, 'active', 100, 'month', current_date), (2, 2, 'active', 1200.06, 'year', current_date)`);
    await at(addMonths(m0, 1));
    await c.query('UPDATE subscriptions SET plan_cost = 150 WHERE id = 1'); // expansion 50
    await at(addMonths(m0, 2));
    await c.query('UPDATE subscriptions SET plan_cost = 120 WHERE id = 1'); // contraction 30
    await c.query("UPDATE subscriptions SET status = 'canceled' WHERE id = 2"); // churn 100.01
    await at(addMonths(m0, 3));
    await c.query("UPDATE subscriptions SET status = 'active' WHERE id = 2"); // reactivation 100.01
    await c.query("SET test.occurred_at = ''");
  } finally {
    c.release();
  }
  const { data } = await app.client.GET('/analytics/mrr', { params: { query: { from: addMonths(month(new Date()), -5) } } });
  const rows = data!.months.map((m) => [
    m.month,
    m.new,
    m.expansion,
    m.contraction,
    m.churn,
    m.reactivation,
    m.ending_mrr,
    m.customers,
    m.customer_churn_rate,
    m.revenue_churn_rate,
    m.arpa,
  ]);
  const m0 = addMonths(month(new Date()), -5);
  t.deepEqual(rows.slice(0, 4), [
    [m0, '200.01', '0.00', '0.00', '0.00', '0.00', '200.01', 2, null, null, '100.01'],
    [addMonths(m0, 1), '0.00', '50.00', '0.00', '0.00', '0.00', '250.01', 2, '0.0000', '0.0000', '125.01'],
    [addMonths(m0, 2), '0.00', '0.00', '30.00', '100.01', '0.00', '120.00', 1, '0.5000', '0.5200', '120.00'],
    [addMonths(m0, 3), '0.00', '0.00', '0.00', '0.00', '100.01', '220.01', 2, '0.0000', '0.0000', '110.01'],
  ]);
  assertIdentity(t, data!, 'story');
  t.is((await app.client.GET('/analytics', { params: { query: {} } })).data!.mrr, '220.01');
  // As of the middle of the churn month, after the cancellation: user 2 had no MRR, and the price was 120.
  const mid = (await app.client.GET('/analytics', { params: { query: { as_of: `${addMonths(m0, 2)}-20T00:00:00Z` } } })).data!;
  t.is(mid.mrr, '120.00');
  t.is(mid.active_subscription_count, 1);
  await assertReconciled(t, 'story');
});

test.serial('as_of when the top users of a daily snapshot lose value, and after a change recorded back in time before snapshots: equal to the oracle', async (t) => {
  // Migration 0013 keeps the top 16 users at the start of every day with a change. Here 20 users
  // are ranked on day 1; on day 2 the 14 highest fall to the bottom (the snapshot of day 2 alone
  // cannot name the top 5: the threshold scan answers), day 3's snapshot is derived from day 2's
  // (it must fall back too), and a change recorded back on day 1 rebuilds the snapshots after it.
  await reset();
  const c = await app.database.pool.connect();
  const m = addMonths(month(new Date()), -2);
  const at = (day: number, hour: number) => `${m}-${String(day).padStart(2, '0')}T${String(hour).padStart(2, '0')}:00:00.000Z`;
  try {
    await c.query(`SET test.occurred_at = '${at(1, 9)}'`);
    await c.query("INSERT INTO users (name, email) SELECT 'U' || i, 'u' || i || '@example.com' FROM generate_series(1, 20) i");
    await c.query(
      "INSERT INTO subscriptions (user_id, status, plan_cost, billing_period, start_date) SELECT i, 'active', 100 + i, 'month', current_date FROM generate_series(1, 20) i",
    );
    await c.query(`SET test.occurred_at = '${at(2, 9)}'`);
    await c.query('UPDATE subscriptions SET plan_cost = 1 + user_id / 100.0 WHERE user_id > 6');
    await c.query(`SET test.occurred_at = '${at(3, 9)}'`);
    await c.query("UPDATE subscriptions SET status = 'paused' WHERE user_id = 1");
    await c.query(`SET test.occurred_at = '${at(4, 9)}'`);
    await c.query('UPDATE subscriptions SET plan_cost = 500 WHERE user_id = 2');
    // Back in time: recorded on day 1, after the snapshots of days 2 to 4 exist.
    await c.query(`SET test.occurred_at = '${at(1, 12)}'`);
    await c.query("INSERT INTO subscriptions (user_id, status, plan_cost, billing_period, start_date) VALUES (3, 'active', 1000, 'month', current_date)");
    await c.query("SET test.occurred_at = ''");
  } finally {
    c.release();
  }
  const instants = [at(1, 10), at(1, 13), at(2, 8), at(2, 10), at(3, 0), at(3, 10), at(4, 10), at(5, 10)];
  const to = month(new Date());
  await checkInOneSnapshot(addMonths(to, -3), to, instants);
  const top = (await app.client.GET('/analytics', { params: { query: { as_of: at(2, 10) } } })).data!.top_users.map((u) => u.user_id);
  t.deepEqual(top, [3, 6, 5, 4, 2], 'on day 2 the users who kept their value lead (user 3 with what was recorded back on day 1)');
  await assertReconciled(t, 'after snapshots rebuilt back in time');
});

test.serial('bad ranges and instants are 400s naming the parameter', async (t) => {
  const cases: Array<[string, string]> = [
    ['/api/analytics/mrr?from=2026-13', 'from'],
    ['/api/analytics/mrr?from=2026-05&to=2026-04', 'from'],
    ['/api/analytics/mrr?from=2000-01&to=2020-01', 'from'],
    [`/api/analytics/mrr?to=${addMonths(month(new Date()), 1)}`, 'to'],
    ['/api/analytics?as_of=yesterday', 'as_of'],
    [`/api/analytics?as_of=${new Date(Date.now() + DAY).toISOString()}`, 'as_of'],
    ['/api/analytics/mrr?source=cache', 'source'],
  ];
  for (const [url, parameter] of cases) {
    const response = await app.fetch(url);
    t.is(response.status, 400, url);
    const problem = (await response.json()) as { errors?: Array<{ parameter?: string }> };
    t.deepEqual(
      problem.errors?.map((e) => e.parameter),
      [parameter],
      url,
    );
  }
});

// ---- concurrency ---------------------------------------------------------------------------------

const concurrentStatement = fc.oneof(insertOne, insertMany, updateOne, deleteOne, deleteUser, createUser);
const EXPECTED_RACE = new Set(['23503']);

test.serial('parallel SQL writers: no deadlock, the report and as_of equal the oracle mid-flight in one REPEATABLE READ snapshot and after', async (t) => {
  await reset();
  await app.database.pool.query("INSERT INTO users (name, email) SELECT 'User ' || i, 'c' || i || '@example.com' FROM generate_series(1, 24) i");
  const to = month(new Date());
  const from = addMonths(to, -2);
  const writers = 12;
  const stepsPerWriter = 40;
  const started = Date.now();
  const workload = fc.sample(fc.array(concurrentStatement, { minLength: stepsPerWriter, maxLength: stepsPerWriter }), { numRuns: writers, seed: 13 });
  const instants = () => [new Date(started + Math.floor((Date.now() - started) / 2)).toISOString(), new Date(Date.now() - 1).toISOString()];
  const before = await checkInOneSnapshot(from, to, instants());
  const { errors, halfwayState, checks: snapshots } = await writeWhileChecking(app.databaseUrl, workload, EXPECTED_RACE, () => checkInOneSnapshot(from, to, instants()));
  t.deepEqual(errors, [], 'no deadlock (40P01) or other error');
  const after = await checkInOneSnapshot(from, to, instants());
  t.not(halfwayState, before, 'the halfway check saw the first half');
  t.not(halfwayState, after, 'the halfway check did not see the second half');
  t.log(`${writers} writers x ${stepsPerWriter} statements, ${snapshots} mid-flight snapshot checks`);
  await assertReconciled(t, 'after the concurrent SQL workload');
});

test.serial('parallel writers through the API: no 5xx, then the report (HTTP, both sources) and as_of equal the oracle', async (t) => {
  await reset();
  const users: number[] = [];
  for (let i = 0; i < 12; i++) users.push((await app.client.POST('/users', { body: { name: `W${i}`, email: `w${i}@example.com` } })).data!.id);
  const started = Date.now();
  const subscriptions: number[] = [];
  const failures: string[] = [];
  const ops = fc.sample(fc.record({ kind: fc.nat({ max: 99 }), user: pick, other: pick, status, cost, period }), { numRuns: 12 * 30, seed: 5 });
  let next = 0;
  await Promise.all(
    Array.from({ length: 12 }, async () => {
      while (next < ops.length) {
        const op = ops[next++]!;
        const userId = users[op.user % users.length]!;
        const subId = subscriptions[op.other % Math.max(subscriptions.length, 1)];
        let code: number;
        if (op.kind < 45 || subId === undefined) {
          const { data, response } = await app.client.POST('/subscriptions', {
            body: { user_id: userId, status: op.status, plan_cost: op.cost, billing_period: op.period, start_date: '2026-01-01' },
          });
          code = response.status;
          if (data) subscriptions.push(data.id);
        } else if (op.kind < 85) {
          const body = [{ status: op.status }, { plan_cost: op.cost }, { user_id: userId }, { billing_period: op.period }, { status: op.status, plan_cost: op.cost }][
            op.other % 5
          ]!;
          ({
            response: { status: code },
          } = await app.client.PATCH('/subscriptions/{id}', { params: { path: { id: subId } }, body }));
        } else if (op.kind < 98) {
          ({
            response: { status: code },
          } = await app.client.DELETE('/subscriptions/{id}', { params: { path: { id: subId } } }));
        } else {
          ({
            response: { status: code },
          } = await app.client.DELETE('/users/{id}', { params: { path: { id: userId } } }));
        }
        if (code >= 500) failures.push(`${JSON.stringify(op)} -> ${code}`);
      }
    }),
  );
  t.deepEqual(failures, []);
  const to = month(new Date());
  const from = addMonths(to, -1);
  const { data: aggregates } = await app.client.GET('/analytics/mrr', { params: { query: { from, to } } });
  const { data: events } = await app.client.GET('/analytics/mrr', { params: { query: { from, to, source: 'base_tables' } } });
  t.deepEqual(aggregates!.months, events!.months);
  assertIdentity(t, aggregates!, 'http');
  const midway = new Date(started + Math.floor((Date.now() - started) / 2)).toISOString();
  const { data: at } = await app.client.GET('/analytics', { params: { query: { as_of: midway } } });
  t.deepEqual(withoutAsOf(at!), await expectedAnalyticsAt(app.database.db, midway));
  await checkInOneSnapshot(from, to, [midway]);
  t.pass();
  await assertReconciled(t, 'after the API workload');
});

test.serial('make db-reconcile reports a corrupted history aggregate and rebuilds', async (t) => {
  await reset();
  await app.database.pool.query("INSERT INTO users (name, email) VALUES ('R', 'r@example.com')");
  await app.database.pool.query("INSERT INTO subscriptions (user_id, status, plan_cost, billing_period, start_date) VALUES (1, 'active', 10, 'month', current_date)");
  const before = (await app.client.GET('/analytics/mrr', { params: { query: {} } })).data!;
  await app.database.pool.query('UPDATE history_mrr_movements SET new = new + 5');
  await app.database.pool.query('DELETE FROM history_user_months');
  const rows = await reconcile();
  t.deepEqual([...new Set(rows.map((r) => r.aggregate))].sort(), ['movements', 'user']);
  t.deepEqual((await app.client.GET('/analytics/mrr', { params: { query: {} } })).data!.months, before.months);
  await assertReconciled(t, 'after repair');
});

test.serial('the seed builds the aggregates set-based: equal to the events (reconcile finds nothing), movements in every one of the 12 months', async (t) => {
  await reset();
  await seedDatabase(app.database.pool, { users: 2_000, subscriptions: 12_000, features: 10, seed: 7 }, { reset: true });
  const rows = await reconcile();
  t.deepEqual(rows, [], 'the implied history read from subscriptions equals the events the seed wrote');
  const report = await readMrrReport(app.database.db, {}, 'aggregates');
  t.deepEqual(report.months, (await readMrrReport(app.database.db, {}, 'base_tables')).months);
  assertIdentity(t, report, 'seed');
  // At this small size a month may see no reactivation; the 500k seed shows all five every month (docs/analytics.md).
  for (const m of report.months) {
    for (const movement of ['new', 'expansion', 'contraction', 'churn'] as const) t.not(m[movement], '0.00', `${m.month} ${movement}`);
  }
  t.true(report.months.filter((m) => m.reactivation !== '0.00').length >= 8, 'reactivations in most months');
});

/** Every history aggregate table (0010's and 0013's) as text, each row as PostgreSQL prints it (so numeric scales count). */
async function historyAggregatesAsText(): Promise<Record<string, string>> {
  const tables = ['history_status_changes', 'history_revenue_changes', 'history_user_months', 'history_mrr_movements', 'history_user_values'];
  tables.push('history_snapshot_days', 'history_top_snapshots', 'history_status_snapshots', 'history_revenue_snapshots');
  const texts: Record<string, string> = {};
  for (const table of tables) {
    const { rows } = await app.database.pool.query<{ text: string }>(`SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') AS text FROM ${table} t`);
    texts[table] = rows[0]!.text;
  }
  return texts;
}

test.serial("the seed's aggregates, computed from its rows, are digit for digit the rebuild from the events it wrote", async (t) => {
  await reset();
  await seedDatabase(app.database.pool, { users: 2_000, subscriptions: 12_000, features: 10, seed: 11 }, { reset: true });
  const seeded = await historyAggregatesAsText();
  t.true(seeded.history_user_months!.length > 0 && seeded.history_top_snapshots!.length > 0);
  const client = await app.database.pool.connect();
  try {
    await client.query('SET statement_timeout = 0');
    await client.query('SELECT history_analytics_rebuild()');
  } finally {
    client.release(true);
  }
  const rebuilt = await historyAggregatesAsText();
  for (const table of Object.keys(seeded)) t.is(seeded[table], rebuilt[table], table);
});
