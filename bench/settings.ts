/** Every BENCH_* setting, read once from the environment with src/config.ts's parser. */
import fs from 'node:fs';
import path from 'node:path';
import { intFromEnv, loadConfig, projectRoot } from '../src/config.js';

export type LoadGeneratorName = 'wrk' | 'autocannon';

/** How one service is started: its V8 flags and worker count (unset: the service's own default). */
export interface ServiceSettings {
  nodeFlags: string[];
  webConcurrency: string | undefined;
}

export interface BenchSettings {
  size: number;
  users: number;
  /** Rounds per side; fewer than 3 is the quick mode, never a verdict. */
  rounds: number;
  seconds: number;
  warmupSeconds: number;
  /** Each server's warm-up after it starts, before the first comparison. */
  serverWarmupSeconds: number;
  connections: number;
  mixedConnections: number;
  poolSize: number;
  statementTimeoutMs: number;
  explainRuns: number;
  midFlightChecks: number;
  /** Webhook comparison: POSTs per second, and how long to wait for deliveries after the last answer. */
  webhookRate: number;
  webhookDrainSeconds: number;
  /** BENCH_STATEMENTS=1: pg_stat_statements in the bench's PostgreSQL, its top statements kept per timed run. */
  statements: boolean;
  loadGenerator: LoadGeneratorName;
  wrkThreads: number;
  ours: ServiceSettings;
  /** A second setting of our service to compare with the first (BENCH_VARIANT_*), when asked for. */
  variant: ServiceSettings | undefined;
  /** A git ref whose service is measured beside ours (BENCH_BASELINE_REF), when asked for. */
  baselineRef: string | undefined;
  baselineNodeFlags: string | undefined;
  /** Only the comparisons whose name matches (BENCH_ONLY, a regular expression), for development. */
  only: RegExp | undefined;
}

const split = (flags: string) => flags.split(/\s+/).filter(Boolean);

/** SERVICE_NODE_FLAGS as a Makefile sets it (`SERVICE_NODE_FLAGS ?= ...`), for a run outside make. */
export function makefileNodeFlags(root: string): string[] {
  const makefile = path.join(root, 'Makefile');
  if (!fs.existsSync(makefile)) return [];
  const line = /^SERVICE_NODE_FLAGS\s*\??=\s*(.*)$/m.exec(fs.readFileSync(makefile, 'utf8'));
  return split(line?.[1] ?? '');
}

function commandExists(name: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => dir && fs.existsSync(path.join(dir, name)));
}

export function loadSettings(env: NodeJS.ProcessEnv = process.env): BenchSettings {
  const int = (name: string, fallback: number) => intFromEnv(env, name, fallback);
  const size = int('BENCH_SUBSCRIPTIONS', 500_000);
  const asked = env.BENCH_LOAD as LoadGeneratorName | undefined;
  if (asked && asked !== 'wrk' && asked !== 'autocannon') throw new Error(`BENCH_LOAD must be wrk or autocannon, got "${asked}"`);
  const loadGenerator = asked ?? (commandExists('wrk') ? 'wrk' : 'autocannon');
  if (loadGenerator === 'wrk' && !commandExists('wrk')) throw new Error('BENCH_LOAD=wrk but wrk is not on PATH (make wrk installs it as root)');
  const variantAsked = env.BENCH_VARIANT_WEB_CONCURRENCY !== undefined || env.BENCH_VARIANT_NODE_FLAGS !== undefined;
  const ours: ServiceSettings = {
    nodeFlags: split(env.SERVICE_NODE_FLAGS ?? makefileNodeFlags(projectRoot).join(' ')),
    webConcurrency: env.BENCH_WEB_CONCURRENCY || env.WEB_CONCURRENCY || undefined,
  };
  return {
    size,
    users: int('BENCH_USERS', Math.max(1_000, Math.round(size / 5))),
    rounds: Math.max(1, int('BENCH_ROUNDS', 3)),
    seconds: Math.max(1, int('BENCH_SECONDS', 8)),
    warmupSeconds: int('BENCH_WARMUP_SECONDS', 2),
    serverWarmupSeconds: int('BENCH_SERVER_WARMUP_SECONDS', 5),
    connections: Math.max(1, int('BENCH_CONNECTIONS', 32)),
    mixedConnections: Math.max(1, int('BENCH_MIXED_CONNECTIONS', 64)),
    poolSize: Math.max(1, int('BENCH_POOL_SIZE', loadConfig({}).poolSize)),
    // The service's default is 10 s; the plain-SQL analytics (?source=base_tables) takes about 13 s at 5M.
    statementTimeoutMs: int('BENCH_STATEMENT_TIMEOUT_MS', 60_000),
    explainRuns: Math.max(1, int('BENCH_EXPLAIN_RUNS', 3)),
    midFlightChecks: Math.max(1, int('BENCH_MIDFLIGHT_CHECKS', 3)),
    webhookRate: Math.max(1, int('BENCH_WEBHOOK_RATE', 50)),
    webhookDrainSeconds: Math.max(1, int('BENCH_WEBHOOK_DRAIN_SECONDS', 30)),
    statements: env.BENCH_STATEMENTS === '1',
    loadGenerator,
    wrkThreads: Math.max(1, int('BENCH_WRK_THREADS', 1)),
    ours,
    variant: variantAsked
      ? {
          nodeFlags: env.BENCH_VARIANT_NODE_FLAGS !== undefined ? split(env.BENCH_VARIANT_NODE_FLAGS) : ours.nodeFlags,
          webConcurrency: env.BENCH_VARIANT_WEB_CONCURRENCY || ours.webConcurrency,
        }
      : undefined,
    baselineRef: env.BENCH_BASELINE_REF || undefined,
    baselineNodeFlags: env.BENCH_BASELINE_NODE_FLAGS,
    only: env.BENCH_ONLY ? new RegExp(env.BENCH_ONLY, 'i') : undefined,
  };
}

/** The quick mode's label, printed wherever a figure is. */
export const isVerdictRun = (settings: Pick<BenchSettings, 'rounds'>) => settings.rounds >= 3;
export const NOT_A_VERDICT = 'not a verdict';
