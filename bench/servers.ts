/**
 * The servers under load, each a child process: our service as make run starts it, a baseline
 * commit's service, a variant setting of ours, and the floor. Resident memory is read from /proc
 * for the whole process tree (a cluster primary and its workers).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { loadConfig, projectRoot } from '../src/config.js';
import { freePort } from '../src/free-port.js';

export const API_KEY = 'bench-key';
export const requestHeaders = { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' };

export interface Server {
  /** ours, floor, baseline, variant. */
  name: string;
  url: string;
  pid: number;
  /** How it was started, for the report. */
  description: Record<string, unknown>;
  stop(): Promise<void>;
}

export interface ServiceOptions {
  name: string;
  /** The checkout whose src/main.ts runs. */
  cwd: string;
  nodeFlags: string[];
  webConcurrency: string | undefined;
  databaseUrl: string;
  poolSize: number;
  statementTimeoutMs: number;
  commit?: string;
  /** Settings of this service beyond the bench's (RATE_LIMIT_PER_MINUTE, say). */
  env?: Record<string, string>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function startProcess(name: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, port: number, description: Record<string, unknown>): Promise<Server> {
  // Its log (one line per request at the service's default level, as make run logs) goes to a file of its
  // own, kept until the next run; errors before it listens also reach the bench's stderr.
  const logDir = path.join(loadConfig().dataDir, 'bench-logs');
  fs.mkdirSync(logDir, { recursive: true });
  const log = fs.openSync(path.join(logDir, `${name.replace(/[^\w.-]+/g, '_')}.log`), 'w');
  const child: ChildProcess = spawn(process.execPath, args, { cwd, env, stdio: ['ignore', log, 'inherit'] });
  fs.closeSync(log);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(killer);
  };
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode}) before it was ready`);
    if (
      await fetch(`${url}/readyz`).then(
        (r) => r.ok,
        () => false,
      )
    ) {
      return { name, url, pid: child.pid!, description: { ...description, args }, stop };
    }
    await sleep(100);
  }
  await stop();
  throw new Error(`${name} not ready on ${url}/readyz after 60 s`);
}

/** A service checkout started as make run starts it, with the bench's key, database and log level. */
export async function startService(options: ServiceOptions): Promise<Server> {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DATABASE_URL: options.databaseUrl,
    PORT: String(port),
    HOST: '127.0.0.1',
    API_KEYS: API_KEY,
    STATEMENT_TIMEOUT_MS: String(options.statementTimeoutMs),
    PG_POOL_SIZE: String(options.poolSize),
    // One API key sends every request: a per-key limit would answer 429 within a second.
    RATE_LIMIT_PER_MINUTE: '0',
    // The webhook comparison's receiver is on 127.0.0.1 (no endpoint exists outside that comparison).
    WEBHOOK_ALLOW_PRIVATE: '1',
    ...options.env,
  };
  delete env.SEED_WHEN_EMPTY;
  delete env.WEB_CONCURRENCY;
  if (options.webConcurrency) env.WEB_CONCURRENCY = options.webConcurrency;
  const args = [...options.nodeFlags, '--import', 'tsx', 'src/main.ts'];
  return startProcess(options.name, args, options.cwd, env, port, {
    cwd: options.cwd,
    commit: options.commit,
    nodeFlags: options.nodeFlags.join(' '),
    webConcurrency: options.webConcurrency ?? '(service default)',
    poolSize: options.poolSize,
    env: { RATE_LIMIT_PER_MINUTE: '0', WEBHOOK_ALLOW_PRIVATE: '1', ...options.env },
  });
}

/** bench/floor.ts: node:http + pg, one prepared SELECT by primary key, V8's default flags. */
export async function startFloor(databaseUrl: string, poolSize: number): Promise<Server> {
  const port = await freePort();
  const env = { ...process.env, FLOOR_DATABASE_URL: databaseUrl, FLOOR_PORT: String(port), FLOOR_POOL_SIZE: String(poolSize) };
  const args = ['--import', 'tsx', path.join('bench', 'floor.ts')];
  return startProcess('floor', args, projectRoot, env, port, { poolSize, nodeFlags: '' });
}

// ---------------------------------------------------------------- CPU time from /proc

/** Linux's USER_HZ (getconf CLK_TCK): /proc/<pid>/stat counts CPU time in 1/100 s. */
const TICKS_PER_SECOND = 100;

/**
 * CPU time in ms (user + system, and that of children already reaped, so that a process that ends
 * between two readings keeps counting, through its parent) of a process and its descendants.
 */
export function treeCpuMs(root: number): number {
  let ticks = 0;
  for (const pid of processTree(root)) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // utime, stime, cutime, cstime: fields 14-17 of proc(5), 11-14 after the command name.
      ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
    } catch {
      // gone meanwhile: its time is in its parent's cutime/cstime once reaped
    }
  }
  return (ticks * 1000) / TICKS_PER_SECOND;
}

/**
 * The postmaster of a PostgreSQL server on this machine (the parent of this connection's backend),
 * whose tree is every backend and worker; undefined when the server is not local (its backend's pid
 * is not a postgres process here).
 */
export function localPostmaster(backendPid: number): number | undefined {
  const parent = (pid: number) => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      return undefined;
    }
  };
  const postmaster = parent(backendPid);
  return postmaster && processName(backendPid) === 'postgres' && processName(postmaster) === 'postgres' ? postmaster : undefined;
}

// ---------------------------------------------------------------- resident memory from /proc

/** The process and all its descendants (a cluster primary and its workers). */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      // gone meanwhile
    }
  }
  const tree = [root];
  for (let i = 0; i < tree.length; i++) tree.push(...(children.get(tree[i]!) ?? []));
  return tree;
}

/** The process's command name (node, esbuild: tsx keeps an esbuild child), or '?' once it is gone. */
export function processName(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}

/** VmRSS and VmHWM (lifetime peak) of one process, in MB; undefined once it is gone. */
export function processMemory(pid: number): { rssMb: number; peakMb: number } | undefined {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
    return { rssMb: kb('VmRSS') / 1024, peakMb: kb('VmHWM') / 1024 };
  } catch {
    return undefined;
  }
}

export interface TreeMemory {
  processes: number;
  /** The largest process's RSS, and the sum over the tree, at the sample where each peaked. */
  maxPerProcessMb: number;
  sumMb: number;
}

export function treeMemory(root: number): TreeMemory {
  const rss = processTree(root).map((pid) => processMemory(pid)?.rssMb ?? 0);
  return { processes: rss.length, maxPerProcessMb: Math.max(0, ...rss), sumMb: rss.reduce((a, b) => a + b, 0) };
}

/** Samples a server's tree every 500 ms until stopped; returns the peaks seen. */
export function sampleMemory(server: Server): () => TreeMemory {
  let peak: TreeMemory = treeMemory(server.pid);
  const take = () => {
    const now = treeMemory(server.pid);
    peak = {
      processes: Math.max(peak.processes, now.processes),
      maxPerProcessMb: Math.max(peak.maxPerProcessMb, now.maxPerProcessMb),
      sumMb: Math.max(peak.sumMb, now.sumMb),
    };
  };
  const timer = setInterval(take, 500);
  return () => {
    clearInterval(timer);
    take();
    return peak;
  };
}
