/**
 * Interleaved rounds: every side of a comparison is warmed up, then measured A, B, A, B, ... for
 * BENCH_ROUNDS rounds; each ratio is taken per round (the sides' runs of the same round), and
 * reported as median and range. A target is met or missed only when the whole range says so.
 */
import os from 'node:os';
import { runLoad, type LoadResult } from './load.js';
import type { BenchRequest } from './requests.js';
import { requestHeaders, sampleMemory, treeCpuMs, type Server, type TreeMemory } from './servers.js';
import { NOT_A_VERDICT, type BenchSettings } from './settings.js';

export interface Side {
  /** The row's label; ratios name sides by it. */
  name: string;
  /** Which server takes the load (ours, floor, baseline, variant). */
  server: string;
  /** Taken in turn, request after request. */
  requests: BenchRequest[];
  connections?: number;
  /** A fixed number of responses per run instead of the fixed duration (calls that take seconds). */
  amount?: number;
  /** Around every run of this side, its warm-up included. */
  before?: () => Promise<void>;
  after?: () => Promise<void>;
  /** Beside every timed run (started with it, given its start time), awaited after it. */
  during?: (since: number, round: number) => Promise<void>;
  /**
   * Drives the run itself instead of the load generator (a steady rate from this process, say):
   * its requests' figures, and figures of its own (`figures`, judged by limits that name them).
   */
  driver?: (seconds: number, round: number) => Promise<DriverResult>;
}

/** What a side's own driver measured: its requests as a load run does, and figures by name. */
export interface DriverResult extends LoadResult {
  figures: Record<string, number>;
}

export type Metric =
  'requestsPerSecond' | 'p50Ms' | 'p99Ms' | 'bytesPerRequest' | 'rssMaxPerProcessMb' | 'rssSumMb' | 'serviceCpuUsPerRequest' | 'databaseCpuUsPerRequest' | 'cpuUsPerRequest';
export interface Target {
  op: '>=' | '<=' | '<' | '>';
  value: number;
}
export interface RatioSpec {
  name: string;
  numerator: string;
  denominator: string;
  metric: Metric;
  target?: Target;
}
/**
 * A bound on one side's own figure (resident memory, say), judged on its range like a ratio: a
 * metric times `factor` (req/s x events per page = events/s), or a figure of the side's driver.
 */
export interface LimitSpec {
  name: string;
  side: string;
  metric: Metric | { figure: string };
  factor?: number;
  /** Without one, the figure is reported (median, range) and judged by nobody. */
  target?: Target;
}

/** Sides measured in interleaved rounds, and the ratios taken between them. */
export interface Comparison {
  name: string;
  sides: Side[];
  ratios?: RatioSpec[];
  limits?: LimitSpec[];
}

export interface Measurement extends LoadResult {
  round: number;
  startedAt: string;
  /** 1-minute load average of the machine when the run began (other agents share it). */
  loadAverage: number;
  rssMaxPerProcessMb: number;
  rssSumMb: number;
  processes: number;
  /**
   * CPU time per response during the run (from /proc, user + system): the server's process tree,
   * PostgreSQL's (every backend and worker, when it runs on this machine; else NaN), and both.
   * Steadier than req/s on a shared machine: other work slows a run but does not add to its CPU.
   */
  serviceCpuUsPerRequest: number;
  databaseCpuUsPerRequest: number;
  cpuUsPerRequest: number;
  /** A driver's own figures (empty for a load-generator run). */
  figures: Record<string, number>;
  /** The top statements of pg_stat_statements during the run (BENCH_STATEMENTS=1; timed runs only). */
  statements?: unknown[];
}
export interface Spread {
  median: number;
  min: number;
  max: number;
}
export type Verdict = 'met' | 'missed' | 'inconclusive' | typeof NOT_A_VERDICT;
export interface SideResult {
  name: string;
  server: string;
  connections: number;
  amount: number | null;
  rounds: Measurement[];
  summary: Record<Metric, Spread> & { errors: number; figures: Record<string, Spread> };
}
export interface SpreadResult extends Spread {
  name: string;
  /** A metric, `figure:<name>` for a driver's figure, with ` x <factor>` when scaled. */
  metric: string;
  perRound: number[];
  target: Target | null;
  verdict: Verdict | null;
}
export interface RatioResult extends SpreadResult {
  numerator: string;
  denominator: string;
}
export interface ComparisonResult {
  name: string;
  sides: SideResult[];
  ratios: RatioResult[];
  limits: SpreadResult[];
}

const METRICS: Metric[] = [
  'requestsPerSecond',
  'p50Ms',
  'p99Ms',
  'bytesPerRequest',
  'rssMaxPerProcessMb',
  'rssSumMb',
  'serviceCpuUsPerRequest',
  'databaseCpuUsPerRequest',
  'cpuUsPerRequest',
];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
export const spread = (values: number[]): Spread => ({ median: median(values), min: Math.min(...values), max: Math.max(...values) });

const holds = (value: number, { op, value: bound }: Target) => (op === '>=' ? value >= bound : op === '<=' ? value <= bound : op === '<' ? value < bound : value > bound);

/** Met when every round meets the target, missed when none does, inconclusive between; never from fewer than 3 rounds. */
export function verdict(values: number[], target: Target, rounds: number): Verdict {
  if (rounds < 3) return NOT_A_VERDICT;
  if (values.length === 0 || values.some((v) => !Number.isFinite(v))) return 'inconclusive';
  if (values.every((v) => holds(v, target))) return 'met';
  if (values.every((v) => !holds(v, target))) return 'missed';
  return 'inconclusive';
}

export interface RunContext {
  settings: BenchSettings;
  servers: Record<string, Server>;
  /** PostgreSQL's postmaster when it runs on this machine (its tree's CPU time per request). */
  databasePid?: number | undefined;
  /** pg_stat_statements around each timed run (BENCH_STATEMENTS=1). */
  statements?: { reset(): Promise<void>; read(): Promise<unknown[]> } | undefined;
  log: (line: string) => void;
}

async function measureOnce(side: Side, ctx: RunContext, seconds: number, round: number): Promise<Measurement> {
  const server = ctx.servers[side.server];
  if (!server) throw new Error(`side "${side.name}" names server "${side.server}", which is not running`);
  const warmup = round === 0;
  await side.before?.();
  const startedAt = new Date().toISOString();
  const loadAverage = os.loadavg()[0]!;
  const memory = sampleMemory(server);
  if (!warmup) await ctx.statements?.reset();
  const cpuBefore = { service: treeCpuMs(server.pid), database: ctx.databasePid ? treeCpuMs(ctx.databasePid) : Number.NaN };
  const since = performance.now();
  const running: Promise<LoadResult & { figures?: Record<string, number> }> = side.driver
    ? side.driver(seconds, round)
    : runLoad(
        ctx.settings.loadGenerator,
        {
          url: server.url,
          requests: side.requests,
          connections: side.connections ?? ctx.settings.connections,
          seconds: side.amount ? 600 : seconds,
          ...(side.amount ? { amount: warmup ? Math.min(2, side.amount) : side.amount } : {}),
          headers: requestHeaders,
        },
        ctx.settings.wrkThreads,
      );
  const beside = warmup ? undefined : side.during?.(since, round);
  const { figures = {}, ...result } = await running;
  const perRequest = (ms: number) => (result.requests > 0 ? (ms * 1000) / result.requests : Number.NaN);
  const serviceCpuUsPerRequest = perRequest(treeCpuMs(server.pid) - cpuBefore.service);
  const databaseCpuUsPerRequest = perRequest((ctx.databasePid ? treeCpuMs(ctx.databasePid) : Number.NaN) - cpuBefore.database);
  const statements = warmup ? undefined : await ctx.statements?.read();
  await beside;
  const peak: TreeMemory = memory();
  await side.after?.();
  return {
    ...result,
    round,
    startedAt,
    loadAverage,
    rssMaxPerProcessMb: peak.maxPerProcessMb,
    rssSumMb: peak.sumMb,
    processes: peak.processes,
    serviceCpuUsPerRequest,
    databaseCpuUsPerRequest,
    cpuUsPerRequest: serviceCpuUsPerRequest + databaseCpuUsPerRequest,
    figures,
    ...(statements ? { statements } : {}),
  };
}

/**
 * Before any comparison, each server serves every request any side will send it, for
 * BENCH_SERVER_WARMUP_SECONDS: a fresh process answers its first thousands of requests several
 * times slower (compilation, pools, caches), which would otherwise land in the first comparison.
 */
export async function warmUpServers(comparisons: Comparison[], ctx: RunContext): Promise<void> {
  const seconds = ctx.settings.serverWarmupSeconds;
  if (seconds <= 0) return;
  for (const name of Object.keys(ctx.servers)) {
    const requests = comparisons.flatMap((c) => c.sides.filter((s) => s.server === name && !s.amount && !s.before && !s.driver).flatMap((s) => s.requests));
    if (requests.length === 0) continue;
    const unique = [...new Set(requests)];
    const r = await runLoad(
      ctx.settings.loadGenerator,
      { url: ctx.servers[name]!.url, requests: unique, connections: ctx.settings.connections, seconds, headers: requestHeaders },
      ctx.settings.wrkThreads,
    );
    ctx.log(`# warm-up of ${name}: ${unique.length} request kind(s) for ${seconds} s, ${fmt(r.requestsPerSecond)} req/s, errors ${r.errors}`);
  }
}

const fmt = (n: number) => (Math.abs(n) >= 100 ? String(Math.round(n)) : n.toFixed(2));

/** Warm-up of each side, then the interleaved rounds; ratios and limits per round. */
export async function runComparison(comparison: Comparison, ctx: RunContext): Promise<ComparisonResult> {
  const { rounds, seconds, warmupSeconds } = ctx.settings;
  const runs = new Map<string, Measurement[]>(comparison.sides.map((s) => [s.name, []]));
  if (warmupSeconds > 0) for (const side of comparison.sides) await measureOnce(side, ctx, warmupSeconds, 0);
  for (let round = 1; round <= rounds; round++) {
    for (const side of comparison.sides) {
      await sleep(500); // the previous run's last requests finish before this one starts
      const m = await measureOnce(side, ctx, seconds, round);
      runs.get(side.name)!.push(m);
      const figures = Object.entries(m.figures).map(([k, v]) => `, ${k} ${fmt(v)}`);
      ctx.log(
        `# ${comparison.name} | ${side.name} | round ${round}/${rounds}: ${fmt(m.requestsPerSecond)} req/s, p50 ${fmt(m.p50Ms)} ms, p99 ${fmt(m.p99Ms)} ms, ` +
          `errors ${m.errors}, CPU/request ${Math.round(m.serviceCpuUsPerRequest)} µs service + ${Math.round(m.databaseCpuUsPerRequest)} µs PostgreSQL, RSS max/process ${Math.round(m.rssMaxPerProcessMb)} MB (${m.processes} processes, sum ${Math.round(m.rssSumMb)} MB), load avg ${m.loadAverage.toFixed(1)}${figures.join('')}`,
      );
    }
  }
  const sides: SideResult[] = comparison.sides.map((side) => {
    const measured = runs.get(side.name)!;
    const summary = Object.fromEntries(METRICS.map((metric) => [metric, spread(measured.map((m) => m[metric]))])) as Record<Metric, Spread>;
    return {
      name: side.name,
      server: side.server,
      connections: side.connections ?? ctx.settings.connections,
      amount: side.amount ?? null,
      rounds: measured,
      summary: {
        ...summary,
        errors: measured.reduce((n, m) => n + m.errors, 0),
        figures: Object.fromEntries(Object.keys(measured[0]?.figures ?? {}).map((k) => [k, spread(measured.map((m) => m.figures[k] ?? Number.NaN))])),
      },
    };
  });
  const valuesOf = (name: string, metric: Metric) => {
    const measured = runs.get(name);
    if (!measured) throw new Error(`comparison "${comparison.name}" has no side "${name}"`);
    return measured.map((m) => m[metric]);
  };
  const judged = (name: string, metric: string, perRound: number[], target: Target | undefined): SpreadResult => ({
    name,
    metric,
    perRound,
    ...spread(perRound),
    target: target ?? null,
    verdict: target ? verdict(perRound, target, rounds) : null,
  });
  const ratios = (comparison.ratios ?? []).map((r) => {
    const denominators = valuesOf(r.denominator, r.metric);
    const perRound = valuesOf(r.numerator, r.metric).map((v, i) => v / denominators[i]!);
    return { ...judged(r.name, r.metric, perRound, r.target), numerator: r.numerator, denominator: r.denominator };
  });
  const limits = (comparison.limits ?? []).map((l) => {
    const factor = l.factor ?? 1;
    const measured = runs.get(l.side);
    if (!measured) throw new Error(`comparison "${comparison.name}" has no side "${l.side}"`);
    const metric = typeof l.metric === 'string' ? l.metric : `figure:${l.metric.figure}`;
    const values = measured.map((m) => (typeof l.metric === 'string' ? m[l.metric] : (m.figures[l.metric.figure] ?? Number.NaN)) * factor);
    return judged(l.name, factor === 1 ? metric : `${metric} x ${factor}`, values, l.target);
  });
  return { name: comparison.name, sides, ratios, limits };
}
