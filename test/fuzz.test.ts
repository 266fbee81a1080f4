/**
 * Hostile input derived from the spec: for every operation, each parameter and each body field in
 * turn gets values its schema forbids (wrong types, out-of-range numbers, huge strings, unicode,
 * SQL fragments, duplicate keys) on top of an otherwise valid request. Body fields are found by
 * recursing through the schema: nested objects and the items of arrays (and their fields) get bad
 * values too. Header parameters (If-Match, Idempotency-Key) get bad values as far as the HTTP client
 * can send them. Every answer must be a 4xx problem+json, never a 5xx, and the database must be
 * unchanged after every single request (a cheap per-table fingerprint) and at the end (every row).
 */
import test from 'ava';
import type { Operation } from 'openapi-backend';
import { Contract, loadSpec } from '../src/http/contract.js';
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
  ids.subscription = await q(`INSERT INTO subscriptions (user_id, status, plan_cost, start_date) VALUES (${ids.user}, 'active', 9.99, '2024-01-15') RETURNING id`);
  await app.database.pool.query(`INSERT INTO subscription_features (subscription_id, feature_id) VALUES (${ids.subscription}, ${ids.feature})`);
});
test.after.always(async () => {
  await app?.close();
});

/** The tables whose content a hostile request must not change: all but the migrator's and the rate limiter's counters (every request counts). */
// Left out: rate_limits (every keyed request takes from its quota, valid or not) and the feed's JSON
// cache (event_json and its position, migration 0016), which the service fills in the background from
// committed events, whatever the requests; the events themselves are fingerprinted.
const TABLES_QUERY =
  "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE 'kysely%' AND tablename NOT IN ('rate_limits', 'event_json', 'event_json_position') ORDER BY 1";

/** A fingerprint of every table's content. */
async function snapshot(): Promise<Record<string, string>> {
  const { rows: tables } = await app.database.pool.query<{ name: string }>(TABLES_QUERY);
  const result: Record<string, string> = {};
  for (const { name } of tables) {
    const { rows } = await app.database.pool.query(`SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') AS h FROM "${name}" t`);
    result[name] = rows[0].h;
  }
  return result;
}

/**
 * A cheap per-table fingerprint, taken after every request: row count, the newest row version's
 * xmin (any INSERT or UPDATE, even one writing the same values, makes a row version with a newer
 * xmin; PostgreSQL keeps the raw xmin visible when it freezes a row) and a hash of the content. One
 * round trip for all tables; the test database holds a handful of rows, so it costs about a
 * millisecond. The query is built once, from the same table list as `snapshot`.
 */
let fingerprintQuery = '';
async function fingerprint(): Promise<Record<string, string>> {
  if (!fingerprintQuery) {
    const { rows: tables } = await app.database.pool.query<{ name: string }>(TABLES_QUERY);
    fingerprintQuery = tables
      .map(({ name }) => `SELECT '${name}' AS name, count(*) || ':' || coalesce(max(xmin::text::bigint), 0) || ':' || coalesce(sum(hashtext(t::text)), 0) AS fp FROM "${name}" t`)
      .join(' UNION ALL ');
  }
  const { rows } = await app.database.pool.query<{ name: string; fp: string }>(fingerprintQuery);
  return Object.fromEntries(rows.map((r) => [r.name, r.fp]));
}
const changedTables = (before: Record<string, string>, after: Record<string, string>) => Object.keys({ ...before, ...after }).filter((name) => before[name] !== after[name]);

const flatten = (schema: Schema): Schema => (schema.allOf ? Object.assign({}, ...schema.allOf.map(flatten), { ...schema, allOf: undefined }) : schema);

let serial = 0;
/** A value the schema accepts; `variant` > 0 makes it differ from variant 0 (for arrays of distinct items). */
function validValue(raw: Schema, name: string, variant = 0): unknown {
  const schema = flatten(raw);
  if (schema.oneOf) return validValue(schema.oneOf[0]!, name, variant);
  if (schema.enum) return schema.enum[variant % schema.enum.length];
  switch (schema.type) {
    case 'string':
      if (schema.format === 'email') return `fuzz.${process.pid}.${++serial}@example.com`;
      if (schema.format === 'date') return '2024-01-15';
      if (schema.format === 'date-time') return '2024-01-15T10:00:00Z';
      if (schema.pattern?.includes('[0-9]{1,10}')) return variant ? `${variant}.99` : '9.99';
      // A webhook target valid for the schema that the handler still refuses (not a public address): nothing is stored, no traffic.
      if (name === 'url') return 'http://127.0.0.1/fuzz';
      return variant ? `Fuzz value ${variant}` : 'Fuzz value';
    case 'integer':
      if (name === 'user_id') return ids.user + variant;
      if (name === 'feature_id') return ids.feature + variant;
      return Math.max(schema.minimum ?? 1, 1) + variant;
    case 'number':
      return 9.99 + variant;
    case 'boolean':
      return true;
    case 'array':
      return (schema.minItems ?? 0) > 0 ? validItems(schema.items!, schema.minItems!, name) : [];
    default: {
      const body: Record<string, unknown> = {};
      for (const field of schema.required ?? []) body[field] = validValue(schema.properties![field]!, field, variant);
      return body;
    }
  }
}

/** `count` distinct valid items for an array of `items`. */
const validItems = (items: Schema, count: number, name: string) => Array.from({ length: count }, (_, i) => validValue(items, name, i));
/** Arrays built by invalidBodyValues to break maxItems only (every item valid): checked to be refused for their size. */
const oversized = new WeakSet<unknown[]>();

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
    case 'array': {
      values.push('not-an-array', { 0: 1 }, [SQL]);
      const items = schema.items ?? {};
      if (schema.maxItems !== undefined) {
        // Valid, distinct items: refused for the size alone (checked against the validator when sent).
        const tooMany = validItems(items, schema.maxItems + 1, '');
        oversized.add(tooMany);
        values.push(tooMany);
      }
      if (schema.uniqueItems) {
        const [item] = validItems(items, 1, '');
        values.push([item, item]);
      }
      break;
    }
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
  if (schema.type === 'array')
    return ['bogus', SQL, ...(schema.maxItems ? [Array.from({ length: schema.maxItems + 1 }, () => String(schema.items?.enum?.[0] ?? 'x')).join('\u0001')] : [])];
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
  return { id: String(id), feature_id: String(ids.feature), delivery_id: '1' };
}

type Segment = string | number;
type Field = { path: Segment[]; schema: Schema; name: string };
const pointer = (path: Segment[]) => `/${path.join('/')}`;

/**
 * Every body field below the top level, found from the schema: the properties of nested objects and
 * the items of arrays (an array's item is the field `/name/0`), and their fields in turn, at any depth.
 */
function nestedFields(raw: Schema, path: Segment[] = [], name = ''): Field[] {
  const schema = flatten(raw);
  const found: Field[] = [];
  if (schema.type === 'array' && schema.items) {
    found.push({ path: [...path, 0], schema: schema.items, name }, ...nestedFields(schema.items, [...path, 0], name));
  } else if (schema.properties) {
    for (const [field, sub] of Object.entries(schema.properties)) {
      found.push({ path: [...path, field], schema: sub, name: field }, ...nestedFields(sub, [...path, field], field));
    }
  }
  // The top-level fields have their own loop (with the duplicate-key case as it always was).
  return path.length === 0 ? found.filter((field) => field.path.length > 1) : found;
}

/** A copy of `doc` with `value` at `path`; missing parents are made valid (an empty array gets the item). */
function setAt(doc: unknown, root: Schema, path: Segment[], value: unknown): unknown {
  const copy = structuredClone(doc) as Record<Segment, unknown>;
  let node = copy;
  let schema = flatten(root);
  for (const segment of path.slice(0, -1)) {
    const sub = flatten(typeof segment === 'number' ? schema.items! : schema.properties![segment]!);
    if (node[segment] === undefined || node[segment] === null) node[segment] = validValue(sub, String(segment));
    node = node[segment] as Record<Segment, unknown>;
    schema = sub;
  }
  node[path.at(-1)!] = value;
  return copy;
}

/**
 * Header values. Node's fetch (undici) refuses some before anything is sent, so they cannot reach the
 * service from this client (Node's HTTP parser on the server would refuse them as well): NUL, CR and
 * LF ("invalid header value" from Headers), the other C0 controls and DEL (UND_ERR_INVALID_ARG) and
 * characters above U+00FF (not a ByteString). Those are tried anyway and skipped only when the client
 * itself refuses them (`refusedByClient`), so a client that starts sending one gets it fuzzed. What
 * the client can send: horizontal tab, and bytes 0x80-0xFF (C1 controls, Latin-1, or raw UTF-8 as a
 * real client sends non-ASCII; the server reads header bytes as Latin-1, so the key it stores is the
 * string given here).
 */
const utf8Bytes = (text: string) => Buffer.from(text, 'utf8').toString('latin1');
const ODD_HEADER_VALUES = [
  'a\tb',
  'ünïcødé',
  utf8Bytes('ünïcødé ☃ 😀'),
  '\u0085\u009b\u00ff',
  '\u0000',
  'a\u0001b',
  'a\u001bb',
  'a\u007fb',
  'a\r\nX-Injected: 1',
  'a\nb',
  '☃',
  '😀',
];
/** A header value as JSON, with DEL and C1 controls escaped too (for messages). */
const show = (value: string) => JSON.stringify(value).replace(/[\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
function refusedByClient(err: Error): boolean {
  const code = (err.cause as { code?: string } | undefined)?.code;
  return err instanceof TypeError && (/invalid header value|ByteString/.test(err.message) || code === 'UND_ERR_INVALID_ARG');
}

test('invalid values for every parameter and body field are 4xx problems and change nothing', async (t) => {
  const started = Date.now();
  const api = (await Contract.load(loadSpec().document)).api;
  const before = await snapshot();
  let requests = 0;
  let fingerprintMs = 0;
  const failures: string[] = [];
  /** Header values the client refused to send, and how many requests that left out. */
  const skipped = new Map<string, number>();
  /** Requests per operation and per kind of input mutated, and per HTTP method. */
  const counts: Record<string, Record<string, number>> = {};
  const byMethod: Record<string, number> = {};
  /** Keys the service rightly remembers (a 4xx to a well-formed Idempotency-Key): checked, then removed at the end. */
  const rememberedKeys: string[] = [];
  let last = await fingerprint();

  const validate = (operation: Operation, path: string, body: unknown) =>
    api.validator.validateRequest({ method: operation.method, path, headers: { 'content-type': 'application/json' }, query: {}, body }, operation);

  /**
   * Sends one hostile request; it must be answered with a 4xx problem+json and change no table. With
   * `remembers`, the only change allowed is the one row the service keeps for that Idempotency-Key
   * (holding this very 4xx). With `mayBeRefused` (the value, for the log), a header value the HTTP
   * client will not send is skipped; any other failure to send is a failure.
   */
  async function send(
    operation: Operation,
    kind: string,
    path: string,
    init: { headers?: Record<string, string>; body?: string },
    options: { mayBeRefused?: string; remembers?: string } = {},
  ): Promise<{ status: number; replayed: string | null } | undefined> {
    const headers = Object.entries(init.headers ?? {})
      .map(([name, value]) => ` ${name}: ${show(value)}`)
      .join('');
    const where = `${operation.operationId} ${operation.method.toUpperCase()} ${path}${headers} ${init.body?.slice(0, 120) ?? ''}`;
    const response = await app
      .fetch(path, {
        method: operation.method.toUpperCase(),
        headers: { ...(init.body !== undefined ? { 'content-type': 'application/json' } : {}), ...init.headers },
        ...(init.body !== undefined ? { body: init.body } : {}),
      })
      .catch((err: Error) => ({ status: 0, err }) as const);
    if (!('headers' in response) && options.mayBeRefused !== undefined && refusedByClient(response.err)) {
      skipped.set(options.mayBeRefused, (skipped.get(options.mayBeRefused) ?? 0) + 1);
      return undefined;
    }
    requests++;
    counts[operation.operationId!] ??= {};
    counts[operation.operationId!]![kind] = (counts[operation.operationId!]![kind] ?? 0) + 1;
    byMethod[operation.method.toUpperCase()] = (byMethod[operation.method.toUpperCase()] ?? 0) + 1;
    let result: { status: number; replayed: string | null } | undefined;
    if (!('headers' in response)) {
      failures.push(`${where}: ${response.err.message}`);
    } else {
      const type = response.headers.get('content-type');
      const text = await response.text();
      if (response.status < 400 || response.status >= 500 || type !== 'application/problem+json') {
        failures.push(`${where} -> ${response.status} ${type} ${text.slice(0, 300)}`);
      }
      result = { status: response.status, replayed: response.headers.get('idempotent-replayed') };
    }
    // Nothing may be stored by this request: compare every table's fingerprint with the one before it.
    const fingerprintStarted = Date.now();
    const now = await fingerprint();
    const changed = changedTables(last, now);
    if (options.remembers !== undefined && result) {
      const { rows } = await app.database.pool.query<{ status: number }>('SELECT status FROM idempotency_keys WHERE key = $1', [options.remembers]);
      if (changed.join() !== 'idempotency_keys' || rows.length !== 1 || rows[0]!.status !== result.status) {
        failures.push(
          `${where}: expected only the key's own row (status ${result.status}) to be stored; changed: ${changed.join(', ') || 'nothing'}; rows ${JSON.stringify(rows)}`,
        );
      }
      rememberedKeys.push(options.remembers);
    } else if (changed.length) {
      failures.push(`${where}: stored something (changed: ${changed.join(', ')})`);
    }
    fingerprintMs += Date.now() - fingerprintStarted;
    last = now;
    return result;
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
    const withBody = body === undefined ? {} : { body };

    for (const parameter of parameters) {
      for (const value of invalidParamValues(parameter.schema)) {
        if (parameter.in === 'path') {
          await send(operation, 'path', pathFor(operation, { ...pathParams, [parameter.name]: value }), withBody);
        } else if (parameter.in === 'query') {
          const qs = new URLSearchParams(value.split('\u0001').map((v) => [parameter.name, v])).toString();
          // A GET with a bad query must not change anything even when the operation is a write.
          await send(operation, 'query', `${pathFor(operation, pathParams)}?${qs}`, withBody);
        } else if (parameter.in === 'header' && parameter.name === 'If-Match') {
          await send(operation, 'header', pathFor(operation, pathParams), {
            headers: { 'If-Match': value.replace(/[\u0000-\u001f\u007f-\uffff]/g, '?') || '"stale"' },
            ...withBody,
          });
        }
      }
    }

    const path = pathFor(operation, pathParams);
    for (const parameter of parameters.filter((p) => p.in === 'header')) {
      if (parameter.name === 'If-Match') {
        // Control characters and non-ASCII, as they are (no ETag looks like these: a 412 or a 400).
        for (const value of ODD_HEADER_VALUES) await send(operation, 'header', path, { headers: { 'If-Match': value }, ...withBody }, { mayBeRefused: show(value) });
      } else if (parameter.name === 'Idempotency-Key') {
        // Keys the schema forbids (empty, over 255 characters), on an otherwise valid request. White
        // space around a header value is not part of it (the client and the server both trim it).
        const forbidden = [...invalidParamValues(parameter.schema), '   ', '\t', 'ü'.repeat(256), `${'a\t'.repeat(127)}aa`];
        for (const value of forbidden) await send(operation, 'header', path, { headers: { 'Idempotency-Key': value }, ...withBody }, { mayBeRefused: show(value) });
        // Control characters, non-ASCII, SQL and the longest key are keys the schema allows (1 to 255
        // characters): on a valid body they would rightly create the object. So they go with a body the
        // service must refuse; it then keeps that 4xx under the key (as the spec says) and must replay
        // it, storing nothing more, when the same request comes again.
        for (const odd of [...ODD_HEADER_VALUES, SQL]) {
          const key = `${operation.operationId}:${odd}`;
          const init = { headers: { 'Idempotency-Key': key }, body: JSON.stringify({ ...(baselineBody as object), unexpected_field: SQL }) };
          const first = await send(operation, 'header', path, init, { mayBeRefused: show(odd), remembers: key });
          if (!first) continue;
          const again = await send(operation, 'header', path, init);
          if (again && (again.status !== first.status || again.replayed !== 'true')) {
            failures.push(`${operation.operationId} Idempotency-Key ${JSON.stringify(key)}: retry got ${again.status} (replayed: ${again.replayed}), first ${first.status}`);
          }
        }
        const longest = `${operation.operationId}:`.padEnd(255, 'k');
        const init = { headers: { 'Idempotency-Key': longest }, body: JSON.stringify({ ...(baselineBody as object), unexpected_field: SQL }) };
        await send(operation, 'header', path, init, { remembers: longest });
      } else {
        t.fail(`${operation.operationId}: header parameter ${parameter.name} is not fuzzed`);
      }
    }

    if (!bodySchema || baselineBody === undefined) continue;
    /** An array made to break maxItems alone must be refused for that alone; one item fewer must pass. */
    const checkOversized = (value: unknown, doc: (v: unknown) => unknown, where: string) => {
      if (!Array.isArray(value) || !oversized.has(value)) return;
      const result = validate(operation, path, doc(value));
      t.true(!result.valid && (result.errors ?? []).every((e) => e.keyword === 'maxItems'), `${operation.operationId} ${where}: ${JSON.stringify(result.errors)}`);
      const fewer = validate(operation, path, doc(value.slice(0, -1)));
      t.true(fewer.valid, `${operation.operationId} ${where} with maxItems items: ${JSON.stringify(fewer.errors)}`);
    };
    const fields = flatten(bodySchema).properties ?? {};
    for (const [field, fieldSchema] of Object.entries(fields)) {
      for (const value of invalidBodyValues(fieldSchema)) {
        checkOversized(value, (v) => ({ ...(baselineBody as object), [field]: v }), `/${field}`);
        await send(operation, 'body', path, { body: JSON.stringify({ ...(baselineBody as object), [field]: value }) });
      }
      // Duplicate keys: JSON.parse keeps the last, which is invalid.
      const { [field]: _omitted, ...others } = baselineBody as Record<string, unknown>;
      const rest = JSON.stringify(others).slice(1, -1);
      const valid = JSON.stringify(validValue(fieldSchema, field));
      await send(operation, 'body', path, { body: `{${rest ? `${rest},` : ''}"${field}":${valid},"${field}":{"dup":true}}` });
    }
    for (const field of nestedFields(bodySchema)) {
      const where = pointer(field.path);
      // With a valid value there, the document passes: a rejection below is the bad value's doing.
      const validDoc = setAt(baselineBody, bodySchema, field.path, validValue(field.schema, field.name));
      const check = validate(operation, path, validDoc);
      t.true(check.valid, `${operation.operationId} ${where} valid: ${JSON.stringify(check.errors)}`);
      for (const value of invalidBodyValues(field.schema)) {
        checkOversized(value, (v) => setAt(baselineBody, bodySchema, field.path, v), where);
        await send(operation, 'nested', path, { body: JSON.stringify(setAt(baselineBody, bodySchema, field.path, value)) });
      }
      const name = field.path.at(-1);
      if (typeof name === 'string') {
        // A duplicate key inside the nested object.
        const sentinel = `fuzz-duplicate-${process.pid}`;
        const text = JSON.stringify(setAt(baselineBody, bodySchema, field.path, sentinel));
        const key = JSON.stringify(name);
        const duplicated = text.replace(`${key}:${JSON.stringify(sentinel)}`, `${key}:${JSON.stringify(validValue(field.schema, field.name))},${key}:{"dup":true}`);
        t.not(duplicated, text);
        await send(operation, 'nested', path, { body: duplicated });
      }
    }
    for (const hostile of [JSON.stringify({ ...(baselineBody as object), unexpected_field: SQL }), JSON.stringify({ name: HUGE }), '{"broken": ', '[]', '"string"', 'null', '12']) {
      await send(operation, 'whole body', path, { body: hostile });
    }
  }

  // The counts first, so that they are there to read when an assertion below fails.
  const kinds = ['path', 'query', 'header', 'body', 'nested', 'whole body'];
  const totals: Record<string, number> = {};
  for (const [operationId, byKind] of Object.entries(counts)) {
    for (const [kind, n] of Object.entries(byKind)) totals[kind] = (totals[kind] ?? 0) + n;
    t.log(
      `${operationId}: ${kinds
        .filter((k) => byKind[k])
        .map((k) => `${byKind[k]} ${k}`)
        .join(', ')}`,
    );
  }
  t.log(`by kind: ${kinds.map((k) => `${totals[k] ?? 0} ${k}`).join(', ')}`);
  t.log(
    `by method: ${Object.entries(byMethod)
      .map(([method, n]) => `${n} ${method}`)
      .join(', ')}`,
  );
  const notSent = [...skipped.values()].reduce((a, b) => a + b, 0);
  t.log(`${notSent} header requests not sent, the HTTP client refusing their value: ${[...skipped.keys()].join(', ')}`);

  t.deepEqual(failures, []);
  // The 4xx answers kept under well-formed keys are all there is in idempotency_keys; they go, then every row must be as before.
  const { rows: keys } = await app.database.pool.query<{ key: string }>('SELECT key FROM idempotency_keys');
  t.deepEqual(keys.map((row) => row.key).sort(), [...rememberedKeys].sort());
  await app.database.pool.query('DELETE FROM idempotency_keys WHERE key = ANY($1)', [rememberedKeys]);
  t.deepEqual(await snapshot(), before);
  t.log(`${requests} hostile requests across ${api.getOperations().length} operations: 0 non-4xx, database unchanged after each (fingerprints ${fingerprintMs} ms) and at the end`);
  t.log(`took ${Date.now() - started} ms`);
  t.true(requests > 500);
});
