import { randomBytes } from 'node:crypto';
import type { TestFn } from 'ava';
import createClient, { type Client, type Middleware } from 'openapi-fetch';
import { Ajv } from 'ajv';
import { pino } from 'pino';
import type { paths } from '../../generated/api.js';
import { loadConfig } from '../../src/config.js';
import { openDatabase, type DatabaseHandle } from '../../src/db/database.js';
import { ensureDatabase } from '../../src/db/embedded.js';
import { Contract, loadSpec } from '../../src/http/contract.js';
import { startService, type RunningService } from '../../src/service.js';

/** The key every test client sends (the service under test accepts only it). */
export const TEST_API_KEY = `test_${randomBytes(12).toString('hex')}`;

/** A wrong method has no operation to declare its 405. */
const UNDECLARED_OK = new Set([405]);

export interface TestApp {
  /** The API's base URL, e.g. http://127.0.0.1:41234 */
  url: string;
  /** Typed by generated/; every response is checked against the spec. */
  client: Client<paths>;
  /** fetch against the service, with the same response check (for malformed requests). */
  fetch(path: string, init?: RequestInit): Promise<Response>;
  /** The test's own database, for checking what was (not) stored. */
  database: DatabaseHandle;
  databaseUrl: string;
  service: RunningService;
  close(): Promise<void>;
}

/** A fresh database copied from the migrated template, for one test file. */
export async function createTestDatabase(): Promise<string> {
  const adminUrl = process.env.TEST_PG_ADMIN_URL;
  const template = process.env.TEST_PG_TEMPLATE;
  if (!adminUrl || !template) throw new Error('run the tests with `make test` (it starts PostgreSQL 16 for them)');
  const name = `test_${randomBytes(6).toString('hex')}`;
  await ensureDatabase(adminUrl, name, template);
  return `${adminUrl}/${name}`;
}

const spec = loadSpec();
const problemSchema = (spec.document.components?.schemas as Record<string, object>).Problem!;
const ajv = new Ajv({ allErrors: true, strict: false });
const validateProblem = ajv.compile(problemSchema);
const apiForValidation = Contract.load(spec.document).then((contract) => contract.api);

/** Checks one response against the spec: declared status, body schema, problem documents. */
export async function checkResponse(method: string, url: URL, response: Response): Promise<void> {
  const api = await apiForValidation;
  const where = `${method} ${url.pathname}${url.search} -> ${response.status}`;
  const type = response.headers.get('content-type') ?? '';
  const text = await response.clone().text();
  // HEAD has headers only: test/http.test.ts compares them with the GET's, whose body is checked here.
  if (method.toUpperCase() === 'HEAD') {
    if (text !== '') throw new Error(`${where}: HEAD with a body`);
    return;
  }
  if (response.status >= 400) {
    if (!type.startsWith('application/problem+json')) throw new Error(`${where}: error without problem+json (${type})`);
    const body = JSON.parse(text) as { status?: number };
    if (!validateProblem(body)) throw new Error(`${where}: not a valid problem: ${ajv.errorsText(validateProblem.errors)}`);
    if (body.status !== response.status) throw new Error(`${where}: problem.status ${body.status} differs`);
  }
  if (!url.pathname.startsWith('/api')) return;
  const operation = api.matchOperation({ method, path: url.pathname, headers: {} });
  if (!operation) return; // unknown paths and methods: the problem check above is all there is
  if (!operation.responses?.[String(response.status)] && !UNDECLARED_OK.has(response.status) && response.status !== 304) {
    throw new Error(`${where}: status not declared for ${operation.operationId}`);
  }
  if (response.status < 300 && response.status !== 204) {
    if (!type.startsWith('application/json')) throw new Error(`${where}: content-type ${type}`);
    const result = api.validateResponse(JSON.parse(text), operation, response.status);
    if (result.errors?.length) throw new Error(`${where}: response breaks the spec: ${JSON.stringify(result.errors)}`);
  }
}

const validating: Middleware = {
  async onResponse({ request, response }) {
    await checkResponse(request.method, new URL(request.url), response);
    return undefined;
  },
};

/** Starts the service on a free port over a fresh database. */
export async function startTestApp(env: Record<string, string> = {}): Promise<TestApp> {
  const databaseUrl = await createTestDatabase();
  // Rate limiting stays on (every answer goes through it and carries its headers) with a quota no
  // test reaches unless it sets its own (rate-limit.test.ts).
  const config = { ...loadConfig({ RATE_LIMIT_PER_MINUTE: '6000000', ...process.env, ...env }), databaseUrl, port: 0, host: '127.0.0.1', apiKeys: [TEST_API_KEY] };
  const service = await startService(config, pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }));
  const client = createClient<paths>({ baseUrl: `${service.url}/api`, headers: { Authorization: `Bearer ${TEST_API_KEY}` } });
  client.use(validating);
  const database = openDatabase(databaseUrl);
  return {
    url: service.url,
    client,
    async fetch(path, init) {
      const method = init?.method ?? 'GET';
      const headers = new Headers(init?.headers);
      if (!headers.has('Authorization')) headers.set('Authorization', `Bearer ${TEST_API_KEY}`);
      const response = await fetch(`${service.url}${path}`, { ...init, headers });
      await checkResponse(method, new URL(`${service.url}${path}`), response);
      return response;
    },
    database,
    databaseUrl,
    service,
    async close() {
      await database.close();
      await service.stop();
    },
  };
}

/**
 * The service for one test file: started before its tests, stopped after them all. The returned
 * object is filled in by the before hook, so tests use it as they would the TestApp itself.
 */
export function useTestApp(test: TestFn, env: Record<string, string> = {}): TestApp {
  const app = {} as TestApp;
  test.before(async () => {
    Object.assign(app, await startTestApp(env));
  });
  test.after.always(async () => {
    await app.close?.();
  });
  return app;
}
