/**
 * Hostile input derived from the spec: for every operation, each parameter and each body field in
 * turn gets values its schema forbids (wrong types, out-of-range numbers, huge strings, unicode,
 * SQL fragments, duplicate keys) on top of an otherwise valid request. Every answer must be a 4xx
 * problem+json, never a 5xx, and the database must be unchanged afterwards.
 */
import test from 'ava';
import type { Operation } from 'openapi-backend';
import { createApi, loadSpec } from '../src/http/app.js';
import { startTestApp, type TestApp } from './support/app.js';

type Schema = {
  type?: string;
  format?: string;
  enum?: unknown[];
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  maxItems?: number;
  uniqueItems?: boolean;
  nullable?: boolean;
  items?: Schema;
  properties?: Record<string, Schema>;
  required?: string[];
  oneOf?: Schema[];
  allOf?: Schema[];
};

let app: TestApp;
const ids = { user: 0, feature: 0, subscription: 0 };
test.before(async () => {
  app = await startTestApp();
  const q = (text: string) => app.database.pool.query<{ id: number }>(text).then((r) => r.rows[0]!.id);
  ids.user = await q("INSERT INTO users (name, email) VALUES ('Fuzz Target', 'fuzz.target@example.com') RETURNING id");
  ids.feature = await q("INSERT INTO features (name) VALUES ('Fuzz Feature') RETURNING id");
  ids.subscription = await q(
    `INSERT INTO subscriptions (user_id, status, plan_cost, start_date) VALUES (${ids.user}, 'active', 9.99, '2024-01-15') RETURNING id`,
  );
  await app.database.pool.query(`INSERT INTO subscription_features (subscription_id, feature_id) VALUES (${ids.subscription}, ${ids.feature})`);
});
test.after.always(async () => {
  await app?.close();
});

/** A fingerprint of every table's content. */
async function snapshot(): Promise<Record<string, string>> {
  const { rows: tables } = await app.database.pool.query<{ name: string }>(
    "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE 'kysely%' ORDER BY 1",
  );
  const result: Record<string, string> = {};
  for (const { name } of tables) {
    const { rows } = await app.database.pool.query(`SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') AS h FROM "${name}" t`);
    result[name] = rows[0].h;
  }
  return result;
}

const flatten = (schema: Schema): Schema => (schema.allOf ? Object.assign({}, ...schema.allOf.map(flatten), { ...schema, allOf: undefined }) : schema);

let serial = 0;
function validValue(raw: Schema, name: string): unknown {
  const schema = flatten(raw);
  if (schema.oneOf) return validValue(schema.oneOf[0]!, name);
  if (schema.enum) return schema.enum[0];
  switch (schema.type) {
    case 'string':
      if (schema.format === 'email') return `fuzz.${process.pid}.${++serial}@example.com`;
      if (schema.format === 'date') return '2024-01-15';
      if (schema.format === 'date-time') return '2024-01-15T10:00:00Z';
      if (schema.pattern?.includes('[0-9]{1,10}')) return '9.99';
      return 'Fuzz value';
    case 'integer':
      if (name === 'user_id') return ids.user;
      if (name === 'feature_id') return ids.feature;
      return Math.max(schema.minimum ?? 1, 1);
    case 'number':
      return 9.99;
    case 'boolean':
      return true;
    case 'array':
      return (schema.minItems ?? 0) > 0 ? [validValue(schema.items!, name)] : [];
    default: {
      const body: Record<string, unknown> = {};
      for (const field of schema.required ?? []) body[field] = validValue(schema.properties![field]!, field);
      return body;
    }
  }
}

const SQL = "1' OR '1'='1'; DROP TABLE users; --";
/** Free text (a name) legitimately holds SQL-looking or unicode text; only formats, enums and patterns refuse it. */
const restrictive = (schema: Schema) => Boolean(schema.format || schema.enum || (schema.pattern && schema.pattern !== '\\S'));
const HUGE = 'x'.repeat(70_000);

/** Values the schema forbids, as JSON values (for bodies). */
function invalidBodyValues(raw: Schema): unknown[] {
  const schema = flatten(raw);
  const values: unknown[] = [{ nested: true }];
  if (!schema.nullable) values.push(null);
  if (schema.oneOf) {
    // MoneyInput: string or number, non-negative, at most two decimals.
    return [...values, -1, 1.234, '1.234', '-5', 'abc', SQL, 1e20, '１２', true, []];
  }
  switch (schema.type) {
    case 'string':
      values.push(12345, true, ['a']);
      if (schema.maxLength !== undefined) values.push('x'.repeat(schema.maxLength + 1));
      if ((schema.minLength ?? 0) > 0) values.push('');
      if (restrictive(schema)) values.push(SQL, 'ünïcødé ☃', 'bogus\u0000value');
      if (schema.format === 'date') values.push('2024-02-30', '2024-13-01', '15/01/2024');
      if (schema.pattern === '\\S') values.push('   ', '\t\n');
      break;
    case 'integer':
      values.push('1', 1.5, SQL, 1e300, -1, 'ünï');
      if (schema.minimum !== undefined) values.push(schema.minimum - 1);
      if (schema.maximum !== undefined) values.push(schema.maximum + 1);
      break;
    case 'array':
      values.push('not-an-array', { 0: 1 }, [SQL]);
      if (schema.maxItems !== undefined) values.push(Array.from({ length: schema.maxItems + 1 }, (_, i) => i + 1));
      if (schema.uniqueItems) values.push([1, 1]);
      break;
    case 'object':
      values.push('object?', [1, 2]);
      break;
  }
  return values;
}

/** Values the schema forbids, as text (for path, query and header parameters). */
function invalidParamValues(raw: Schema): string[] {
  const schema = flatten(raw);
  // A repeated query parameter arrives as several occurrences joined by \u0001 here, split when sent.
  if (schema.type === 'array') return ['bogus', SQL, ...(schema.maxItems ? [Array.from({ length: schema.maxItems + 1 }, () => String(schema.items?.enum?.[0] ?? 'x')).join('\u0001')] : [])];
  const values: string[] = [];
  if (schema.type === 'integer' || restrictive(schema)) values.push(SQL, 'ünï', '\u0000');
  if (schema.type === 'integer') values.push('abc', '1.5', '-1', '0', '99999999999999999999', '1,5', 'NaN', 'Infinity');
  if (schema.enum) values.push('bogus', 'ACTIVE');
  if (schema.format === 'date') values.push('2024-02-30', 'yesterday');
  if (schema.pattern) values.push('12.345', '-1');
  if (schema.maxLength !== undefined) values.push('x'.repeat(schema.maxLength + 1));
  if (schema.minLength) values.push('');
  return values;
}

function pathFor(operation: Operation, params: Record<string, string>): string {
  return `/api${operation.path.replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(params[name]!))}`;
}

function validPathParams(operation: Operation): Record<string, string> {
  const resource = operation.path.split('/')[1];
  const id = resource === 'users' ? ids.user : resource === 'features' ? ids.feature : ids.subscription;
  return { id: String(id), feature_id: String(ids.feature) };
}

test('invalid values for every parameter and body field are 4xx problems and change nothing', async (t) => {
  const api = await createApi(loadSpec().document, {});
  const before = await snapshot();
  let requests = 0;
  const failures: string[] = [];

  async function send(operation: Operation, path: string, init: { headers?: Record<string, string>; body?: string }) {
    requests++;
    const response = await app.fetch(path, {
      method: operation.method.toUpperCase(),
      headers: { ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}), ...init.headers },
      ...(init.body !== undefined ? { body: init.body } : {}),
    }).catch((err: Error) => ({ status: 0, err }) as const);
    if (!('headers' in response)) return void failures.push(`${operation.operationId} ${path}: ${response.err.message}`);
    const type = response.headers.get('content-type');
    if (response.status < 400 || response.status >= 500 || type !== 'application/problem+json') {
      failures.push(`${operation.operationId} ${path} ${init.body?.slice(0, 120) ?? ''} -> ${response.status} ${type}`);
    }
    await response.arrayBuffer();
  }

  for (const operation of api.getOperations()) {
    const parameters = (operation.parameters ?? []) as Array<{ name: string; in: string; schema: Schema }>;
    const bodySchema = (operation.requestBody as { content?: Record<string, { schema: Schema }> } | undefined)?.content?.['application/json']?.schema;
    const pathParams = validPathParams(operation);
    const baselineBody = bodySchema ? validValue(bodySchema, '') : undefined;
    // The baseline must pass validation, so every rejection below is the mutated value's doing.
    const baseline = api.validator.validateRequest(
      { method: operation.method, path: pathFor(operation, pathParams), headers: { 'content-type': 'application/json' }, query: {}, body: baselineBody },
      operation,
    );
    t.true(baseline.valid, `${operation.operationId} baseline: ${JSON.stringify(baseline.errors)}`);
    const body = baselineBody === undefined ? undefined : JSON.stringify(baselineBody);

    for (const parameter of parameters) {
      for (const value of invalidParamValues(parameter.schema)) {
        if (parameter.in === 'path') {
          await send(operation, pathFor(operation, { ...pathParams, [parameter.name]: value }), body === undefined ? {} : { body });
        } else if (parameter.in === 'query') {
          const qs = new URLSearchParams(value.split('\u0001').map((v) => [parameter.name, v])).toString();
          // A GET with a bad query must not change anything even when the operation is a write.
          await send(operation, `${pathFor(operation, pathParams)}?${qs}`, body === undefined ? {} : { body });
        } else if (parameter.in === 'header' && parameter.name === 'If-Match') {
          await send(operation, pathFor(operation, pathParams), { headers: { 'If-Match': value.replace(/[\u0000-\u001f\u007f-\uffff]/g, '?') || '"stale"' }, ...(body === undefined ? {} : { body }) });
        }
      }
    }
    if (!bodySchema || baselineBody === undefined) continue;
    const path = pathFor(operation, pathParams);
    const fields = flatten(bodySchema).properties ?? {};
    for (const [field, fieldSchema] of Object.entries(fields)) {
      for (const value of invalidBodyValues(fieldSchema)) {
        await send(operation, path, { body: JSON.stringify({ ...(baselineBody as object), [field]: value }) });
      }
      // Duplicate keys: JSON.parse keeps the last, which is invalid.
      const { [field]: _omitted, ...others } = baselineBody as Record<string, unknown>;
      const rest = JSON.stringify(others).slice(1, -1);
      const valid = JSON.stringify(validValue(fieldSchema, field));
      await send(operation, path, { body: `{${rest ? `${rest},` : ''}"${field}":${valid},"${field}":{"dup":true}}` });
    }
    for (const hostile of [JSON.stringify({ ...(baselineBody as object), unexpected_field: SQL }), JSON.stringify({ name: HUGE }), '{"broken": ', '[]', '"string"', 'null', '12']) {
      await send(operation, path, { body: hostile });
    }
  }

  t.deepEqual(failures, []);
  t.deepEqual(await snapshot(), before);
  t.log(`${requests} hostile requests across ${api.getOperations().length} operations: 0 non-4xx, database unchanged`);
  t.true(requests > 500);
});
