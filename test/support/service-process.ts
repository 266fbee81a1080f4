/**
 * The service as a real process (`node --import tsx src/main.ts`), and the client side of the
 * crash and cluster tests: keyed POSTs over node:http that never hang, a seeded generator, and
 * the exactness checks those tests share. Every process started here is stopped by its caller.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { components } from '../../generated/api.js';
import { projectRoot } from '../../src/config.js';
import { checkResponse } from './app.js';

type Analytics = components['schemas']['Analytics'];
export type Subscription = components['schemas']['Subscription'];
type SubscriptionCreate = components['schemas']['SubscriptionCreate'];

/** A folder PostgreSQL (run as `postgres` when we are root) can enter. */
export function scratchDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  return dir;
}

/** Waits until the condition holds; the bound only guards against a hang, far above any plausible wait. */
export async function waitFor(what: string | (() => string), condition: () => boolean | Promise<boolean>, hangGuardMs = 60_000): Promise<void> {
  const deadline = Date.now() + hangGuardMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`still waiting after ${hangGuardMs} ms: ${typeof what === 'string' ? what : what()}`);
    await sleep(20);
  }
}

/**
 * A free loopback port below the kernel's ephemeral range, for a server that is stopped and
 * started again on the same port: while it is down, no outgoing connection of any process can
 * take it as its local port (a port from freePort() can be taken so, and the restart then fails).
 */
export async function restartablePort(): Promise<number> {
  let low = 32768;
  try {
    low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch {
    // not Linux: the usual default
  }
  const from = 20_000;
  const to = Math.max(from + 1000, Math.min(low, 32768));
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = from + Math.floor(Math.random() * (to - from));
    const free = await new Promise<boolean>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error(`no free port between ${from} and ${to}`);
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** mulberry32: a small seeded generator, so a seed reproduces every choice made from it. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The seed from `name` in the environment (to replay a run), else a fresh one. */
export function seedFromEnv(name: string): number {
  const raw = process.env[name];
  if (raw !== undefined && raw !== '') {
    const seed = Number(raw);
    if (!Number.isInteger(seed) || seed < 0) throw new Error(`${name} must be a non-negative integer, got "${raw}"`);
    return seed;
  }
  return Math.floor(Math.random() * 2 ** 32);
}

export interface ServiceProcess {
  child: ChildProcess;
  pid: number;
  /** Everything it wrote to stdout and stderr so far. */
  output(): string;
  /**
   * Which process answered each request, by the request's X-Request-Id, from the JSON log at
   * LOG_LEVEL=info (one line per request, with pino's pid on it).
   */
  answeredBy: Map<string, number>;
  /** When its banner (printed once it listens) appeared, in Date.now() terms. */
  listening: Promise<number>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL unless it has exited (and its children: cluster workers); waits for its exit. */
  kill(): Promise<void>;
}

/** Starts `node --import tsx src/main.ts` with these variables on top of this process's. */
export function spawnService(env: Record<string, string>): ServiceProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: projectRoot,
    env: { ...process.env, HOST: '127.0.0.1', SEED_WHEN_EMPTY: '0', WEB_CONCURRENCY: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  let onOutput = () => {};
  const answeredBy = new Map<string, number>();
  let partial = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    output += chunk;
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      // pino puts the pid on every line; the one line per request carries its requestId.
      if (!line.startsWith('{') || !line.includes('"msg":"request"')) continue;
      try {
        const entry = JSON.parse(line) as { pid?: number; requestId?: string };
        if (entry.requestId && entry.pid) answeredBy.set(entry.requestId, entry.pid);
      } catch {
        // not a log line after all
      }
    }
    onOutput();
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    output += chunk.toString();
    onOutput();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const listening = new Promise<number>((resolve, reject) => {
    // The banner's first line, printed by main.ts once the port is open.
    onOutput = () => {
      if (/^API: +http/m.test(output)) {
        resolve(Date.now());
        onOutput = () => {};
      }
    };
    void exited.then(({ code, signal }) => reject(new Error(`the service exited (${signal ?? `code ${code}`}) before listening:\n${output.slice(-3000)}`)));
  });
  listening.catch(() => {}); // a caller that never awaits it must not see an unhandled rejection
  return {
    child,
    pid: child.pid!,
    output: () => output,
    answeredBy,
    listening,
    exited,
    async kill() {
      const children = childPids(child.pid!);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      for (const pid of children) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    },
  };
}

/** Whether a process with this pid exists (a zombie counts until its parent reaps it). */
export function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The pids of a process's children, from /proc (Linux). */
export function childPids(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json: unknown;
  /** When the whole answer had arrived (Date.now()). */
  at: number;
}

/** No answer: the connection failed, was cut, or the hang guard fired. */
export interface NoAnswer {
  status: 'network';
  error: string;
  at: number;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  body?: unknown;
  /** node:http agent: a keep-alive one, or false for a connection per request. */
  agent?: http.Agent | false;
  /** Hang guard only. */
  timeoutMs?: number;
}

/**
 * One request that never hangs and never throws for the network: no answer is a value. Every
 * answer is checked against the spec (status declared, body schema, problem documents).
 */
export async function request(baseUrl: string, urlPath: string, options: RequestOptions = {}): Promise<Answer | NoAnswer> {
  const method = options.method ?? 'GET';
  const url = new URL(urlPath, baseUrl);
  const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
  const headers: Record<string, string> = { ...options.headers };
  if (payload !== undefined) {
    headers['content-type'] = 'application/json';
    headers['content-length'] = String(Buffer.byteLength(payload));
  }
  const answer = await new Promise<Answer | NoAnswer>((resolve) => {
    const req = http.request(url, { method, headers, agent: options.agent ?? false, timeout: options.timeoutMs ?? 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', (err) => resolve({ status: 'network', error: err.message, at: Date.now() }));
      res.on('aborted', () => resolve({ status: 'network', error: 'response aborted', at: Date.now() }));
      res.on('end', () => {
        if (!res.complete) return resolve({ status: 'network', error: 'incomplete response', at: Date.now() });
        const text = Buffer.concat(chunks).toString();
        let json: unknown;
        try {
          json = text ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode!, headers: res.headers, text, json, at: Date.now() });
      });
    });
    req.on('timeout', () => req.destroy(new Error('hang guard: no answer in time')));
    req.on('error', (err) => resolve({ status: 'network', error: (err as NodeJS.ErrnoException).code ?? err.message, at: Date.now() }));
    req.end(payload);
  });
  if (answer.status !== 'network') {
    const responseHeaders = new Headers();
    for (const [name, value] of Object.entries(answer.headers)) if (typeof value === 'string') responseHeaders.set(name, value);
    await checkResponse(method, url, new Response(answer.status === 204 ? null : answer.text, { status: answer.status, headers: responseHeaders }));
  }
  return answer;
}

/** A subscription whose plan_name is its Idempotency-Key, so rows per key can be counted. */
export function subscriptionFor(key: string, random: () => number, userIds: number[]): SubscriptionCreate {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const month = new Date();
  month.setUTCDate(1);
  month.setUTCMonth(month.getUTCMonth() - Math.floor(random() * 14));
  return {
    user_id: pick(userIds),
    status: pick(['active', 'active', 'active', 'trialing', 'past_due', 'paused', 'canceled', 'expired'] as const),
    plan_name: key,
    plan_cost: `${Math.floor(random() * 10_000)}.${String(Math.floor(random() * 100)).padStart(2, '0')}`,
    billing_period: pick(['month', 'month', 'year'] as const),
    start_date: `${month.toISOString().slice(0, 7)}-${String(1 + Math.floor(random() * 28)).padStart(2, '0')}`,
  };
}

/** Inserts `count` users straight into the database; returns their ids. */
export async function insertUsers(databaseUrl: string, count: number, label: string): Promise<number[]> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ id: string }>(
      `INSERT INTO users (name, email) SELECT $1 || ' ' || n, $1 || '.' || n || '@example.com' FROM generate_series(1, $2) AS n RETURNING id`,
      [label, count],
    );
    return rows.map((row) => Number(row.id));
  } finally {
    await client.end();
  }
}

export interface RowsPerKey {
  /** Keys with no subscription. */
  missing: string[];
  /** Keys with more than one. */
  duplicated: { key: string; count: number }[];
  /** The one row's id, per key that has exactly one. */
  idOf: Map<string, number>;
  /** Stored answers of these keys that are not 201s. */
  storedOther: number;
}

/** Counts subscriptions per key (plan_name carries it) and the answers stored for the keys. */
export async function rowsPerKey(databaseUrl: string, keys: string[]): Promise<RowsPerKey> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ plan_name: string; count: string; id: string }>(
      'SELECT plan_name, count(*) AS count, min(id) AS id FROM subscriptions WHERE plan_name = ANY($1) GROUP BY plan_name',
      [keys],
    );
    const stored = await client.query<{ n: string }>('SELECT count(*) AS n FROM idempotency_keys WHERE key = ANY($1) AND status <> 201', [keys]);
    const found = new Map(rows.map((row) => [row.plan_name, row]));
    return {
      missing: keys.filter((key) => !found.has(key)),
      duplicated: rows.filter((row) => Number(row.count) > 1).map((row) => ({ key: row.plan_name, count: Number(row.count) })),
      idOf: new Map(rows.filter((row) => Number(row.count) === 1).map((row) => [row.plan_name, Number(row.id)])),
      storedOther: Number(stored.rows[0]!.n),
    };
  } finally {
    await client.end();
  }
}

/**
 * The analytics endpoint (from the aggregates) and the same metrics from plain SQL over the base
 * tables (`?source=base_tables`), both without as_of, and what analytics_reconcile() finds amiss.
 */
export async function analyticsBothWays(
  baseUrl: string,
  auth: Record<string, string>,
  databaseUrl: string,
): Promise<{ aggregates: unknown; baseTables: unknown; reconcile: unknown[] }> {
  const read = async (urlPath: string) => {
    const answer = await request(baseUrl, urlPath, { headers: auth });
    if (answer.status !== 200) throw new Error(`GET ${urlPath} -> ${answer.status}: ${'text' in answer ? answer.text : answer.error}`);
    const { as_of: _, ...metrics } = answer.json as Analytics;
    return metrics;
  };
  const aggregates = await read('/api/analytics');
  const baseTables = await read('/api/analytics?source=base_tables');
  // After the reads: analytics_reconcile() repairs what it reports.
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query('SELECT * FROM analytics_reconcile()');
    return { aggregates, baseTables, reconcile: rows };
  } finally {
    await client.end();
  }
}

/** Runs `work` over `items` with at most `concurrency` at a time. */
export async function eachConcurrently<T>(items: readonly T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}
