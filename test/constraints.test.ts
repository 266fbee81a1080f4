/**
 * Every rule the API enforces on a string field is also a CHECK in the database, and they are the
 * same rule: for generated values, openapi-backend (the service's own validator, ajv-formats in full
 * mode, patterns as JavaScript `u` regexes) and the constraint, read from the catalog and evaluated
 * by PostgreSQL, accept exactly the same strings. A looser CHECK would let SQL clients store what
 * the API refuses; a stricter one would turn a valid request into a refused insert.
 */
import test from 'ava';
import fc from 'fast-check';
import type { ErrorObject } from 'ajv';
import { openDatabase, type DatabaseHandle } from '../src/db/database.js';
import { Contract, loadSpec } from '../src/http/contract.js';
import { createTestDatabase } from './support/app.js';

let database: DatabaseHandle;
test.before(async () => {
  database = openDatabase(await createTestDatabase());
});
test.after.always(async () => {
  await database?.close();
});

const api = (await Contract.load(loadSpec().document)).api;

interface Field {
  constraint: string;
  column: string;
  operationId: string;
  path: string;
  /** A valid body; the field under test is set on it. */
  body: Record<string, unknown>;
  values: fc.Arbitrary<string>;
}

// JavaScript's \s (what the spec's `\S` pattern means to ajv), and spaces it does not count.
const JS_SPACES = [...'\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2005\u200a\u2028\u2029\u202f\u205f\u3000\ufeff'];
const NOT_JS_SPACES = ['\u180e', '\u200b', '\u0085', '\u00ad'];
const chars = (list: string[]) => fc.constantFrom(...list);

const nameValues = fc.oneof(
  fc.string({ unit: fc.oneof(chars(JS_SPACES), chars(NOT_JS_SPACES), chars(['a', 'é', '😀'])), maxLength: 4 }),
  fc.integer({ min: 195, max: 205 }).chain((n) => fc.constantFrom('a'.repeat(n), '😀'.repeat(n), ` ${'é'.repeat(n - 1)}`)),
  fc.string({ unit: 'binary', maxLength: 20 }),
);

const EMAIL_UNITS = [..."aZ09.-_+!#$%&'*/=?^`{|}~@", 'é', 'K', '\u017f', '\u212a', ' ', '"', '(', ',', ':', ';', '<', '[', '\\'];
const emailValues = fc.oneof(
  fc.emailAddress(),
  fc.emailAddress().map((e) => e.toUpperCase()),
  // Near misses: one character of a valid address replaced, inserted or removed.
  fc.tuple(fc.emailAddress(), fc.nat(), chars(EMAIL_UNITS), fc.constantFrom('replace', 'insert', 'remove')).map(([e, at, c, how]) => {
    const i = at % e.length;
    return e.slice(0, i) + (how === 'remove' ? '' : c) + e.slice(how === 'insert' ? i : i + 1);
  }),
  fc.string({ unit: chars(EMAIL_UNITS), maxLength: 12 }),
  fc.constantFrom('a@b', 'a@b.c', 'a..b@x.io', '.a@x.io', 'a.@x.io', 'a@-x.io', 'a@x-.io', 'a@x..io', 'a@x.io.', `a@${'b'.repeat(64)}.io`),
  // Around the 254-character limit.
  fc.integer({ min: 240, max: 260 }).map((n) => `${'a'.repeat(n - 12)}@example.com`),
  fc.string({ unit: 'binary', maxLength: 20 }),
);

const SUBSCRIPTION = { user_id: 1, status: 'active', plan_cost: '9.99', start_date: '2026-01-01' };
const FIELDS: Field[] = [
  { constraint: 'users_name_check', column: 'name', operationId: 'createUser', path: '/users', body: { email: 'a@example.com' }, values: nameValues },
  { constraint: 'users_email_check', column: 'email', operationId: 'createUser', path: '/users', body: { name: 'A' }, values: emailValues },
  { constraint: 'features_name_check', column: 'name', operationId: 'createFeature', path: '/features', body: {}, values: nameValues },
  {
    constraint: 'features_description_check',
    column: 'description',
    operationId: 'createFeature',
    path: '/features',
    body: { name: 'F' },
    values: fc.oneof(
      fc.string({ unit: 'binary', maxLength: 8 }),
      fc.integer({ min: 1995, max: 2005 }).map((n) => '😀'.repeat(n)),
    ),
  },
  {
    constraint: 'subscriptions_plan_name_check',
    column: 'plan_name',
    operationId: 'createSubscription',
    path: '/subscriptions',
    body: SUBSCRIPTION,
    values: fc.oneof(
      fc.string({ unit: 'binary', maxLength: 8 }),
      fc.integer({ min: 95, max: 105 }).chain((n) => fc.constantFrom('a'.repeat(n), '😀'.repeat(n))),
    ),
  },
];

/** PostgreSQL text cannot hold NUL or a lone surrogate; such input is refused before any CHECK (a 400). */
const storable = (s: string) => !s.includes('\u0000') && !/[\ud800-\udfff]/u.test(s);

const apiAccepts = (field: Field, value: string): boolean => {
  const result = api.validateRequest(
    { method: 'post', path: `/api${field.path}`, headers: { 'content-type': 'application/json' }, body: { ...field.body, [field.column]: value } },
    field.operationId,
  );
  const errors = (result.errors ?? []) as ErrorObject[];
  const others = errors.filter((e) => !e.instancePath.startsWith(`/requestBody/${field.column}`) && e.instancePath !== `/${field.column}`);
  if (others.length) throw new Error(`the base body of ${field.operationId} is invalid: ${JSON.stringify(others)}`);
  return errors.length === 0;
};

for (const field of FIELDS) {
  test(`${field.constraint} accepts exactly what the API accepts for ${field.column}`, async (t) => {
    const {
      rows: [definition],
    } = await database.pool.query<{ check: string }>(`SELECT pg_get_constraintdef(oid) AS check FROM pg_constraint WHERE conname = $1`, [field.constraint]);
    const expression = /^CHECK \((.*)\)$/s.exec(definition?.check ?? '')?.[1];
    if (!expression) throw new Error(`no CHECK named ${field.constraint}`);

    const values = [...new Set(fc.sample(field.values, { numRuns: 3000 }))].filter(storable);
    const { rows } = await database.pool.query<{ value: string; ok: boolean | null }>(
      `SELECT ${field.column} AS value, ${expression} AS ok FROM unnest($1::text[]) AS t(${field.column})`,
      [values],
    );
    // A CHECK passes when its expression is true or null.
    const byDatabase = new Map(rows.map((r) => [r.value, r.ok !== false]));
    const disagreements = values.map((value) => ({ value, api: apiAccepts(field, value), database: byDatabase.get(value) })).filter((d) => d.api !== d.database);
    const accepted = values.filter((v) => byDatabase.get(v)).length;
    t.log(`${values.length} distinct values, ${accepted} accepted by both`);
    t.true(accepted > 0 && accepted < values.length, 'the sample holds both valid and invalid values');
    t.deepEqual(disagreements.slice(0, 10), [], `${disagreements.length} values on which the API and ${field.constraint} disagree`);
  });
}
