/**
 * The pieces of the randomized SQL workloads that the analytics and the MRR tests share: picking
 * an existing row by index, the statements that do not depend on a test's value ranges, and
 * running a statement that PostgreSQL may refuse by design.
 */
import fc from 'fast-check';
import type pg from 'pg';

export type Statement = { text: string; values: unknown[] };
export const statement = (text: string, ...values: unknown[]): Statement => ({ text, values });

export const pick = fc.nat({ max: 1000 });
// Picks the n-th user or subscription (mod the count), so generated indices always hit something.
export const nthUser = (param: string) => `(SELECT id FROM users ORDER BY id OFFSET ${param}::int % greatest((SELECT count(*) FROM users), 1) LIMIT 1)`;
export const nthSubscription = (param: string) => `(SELECT id FROM subscriptions ORDER BY id OFFSET ${param}::int % greatest((SELECT count(*) FROM subscriptions), 1) LIMIT 1)`;

/** One of these bulk UPDATEs (each with `WHERE id % $1 = $2`) over a random residue class of ids. */
export const updateManyOf = (bulkUpdates: string[]) =>
  fc.record({ sql: fc.constantFrom(...bulkUpdates), mod: fc.integer({ min: 1, max: 4 }), rem: fc.nat({ max: 3 }) }).map((s) => statement(s.sql, s.mod, s.rem % s.mod));
export const deleteOne = pick.map((sub) => statement(`DELETE FROM subscriptions WHERE id = ${nthSubscription('$1')}`, sub));
export const deleteMany = fc
  .record({ mod: fc.integer({ min: 2, max: 5 }), rem: fc.nat({ max: 4 }) })
  .map((s) => statement('DELETE FROM subscriptions WHERE id % $1 = $2', s.mod, s.rem % s.mod));
// Cascades: the user's subscriptions go with it.
export const deleteUser = pick.map((user) => statement(`DELETE FROM users WHERE id = ${nthUser('$1')}`, user));
export const createUser = fc
  .nat()
  .map((n) => statement("INSERT INTO users (name, email) VALUES ('User', 'user' || $1::text || '.' || nextval('users_id_seq') || '@example.com')", n));

/**
 * What PostgreSQL may answer a generated statement with, by design: a bulk `plan_cost + 1.01` can
 * overflow numeric(12, 2) (22003), and a constraint may refuse a row (23514). A refused statement
 * leaves nothing behind, and the aggregates must show exactly that.
 */
export const REFUSALS = new Set(['22003', '23514']);

/** Runs one statement; false when PostgreSQL refused it for one of the REFUSALS. */
export async function attempt(client: pg.ClientBase, one: Statement): Promise<boolean> {
  try {
    await client.query(one.text, one.values);
    return true;
  } catch (err) {
    if (REFUSALS.has((err as { code?: string }).code ?? '')) return false;
    throw err;
  }
}
