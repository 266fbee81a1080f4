/** The printed tables and ratio lines, and the results JSON (every round of every side kept). */
import fs from 'node:fs';
import path from 'node:path';
import type { VariantExplain } from './explain.js';
import { NOT_A_VERDICT } from './settings.js';
import type { ComparisonResult, Spread, SpreadResult } from './rounds.js';

const pad = (s: string | number, n: number) => String(s).padEnd(n);
/** Three significant figures at most, whole numbers from 100 up. */
export const num = (n: number) => (!Number.isFinite(n) ? String(n) : Math.abs(n) >= 100 ? Math.round(n).toLocaleString('en-US') : Number(n.toPrecision(3)).toString());
export const range = (s: Spread) => (s.min === s.max ? `${num(s.median)}` : `${num(s.median)} [${num(s.min)}-${num(s.max)}]`);

/** One ratio or limit: median, range, each round, target and verdict. */
export function spreadLine(r: SpreadResult, rounds: number): string {
  const target = r.target ? `; target ${r.target.op} ${r.target.value}: ${r.verdict}` : '';
  const quick = rounds < 3 && !r.target ? ` (${rounds} round: ${NOT_A_VERDICT})` : '';
  return `${r.name}: median ${num(r.median)}, range ${num(r.min)}-${num(r.max)} (rounds: ${r.perRound.map(num).join(', ')})${target}${quick}`;
}

export function printComparison(c: ComparisonResult, rounds: number, log: (line: string) => void): void {
  log(`\n== ${c.name} (${rounds} interleaved round${rounds === 1 ? '' : 's'}; median [min-max])${rounds < 3 ? `: ${NOT_A_VERDICT}` : ''}`);
  log(`${pad('side', 72)}${pad('conns', 14)}${pad('req/s', 22)}${pad('p50 ms', 20)}${pad('p99 ms', 20)}${pad('errors', 8)}${pad('CPU µs/req svc + PG', 24)}RSS max/process MB`);
  for (const s of c.sides) {
    const conns = s.amount ? `${s.connections} (${s.amount} req)` : s.connections;
    log(
      `${pad(s.name, 72)}${pad(conns, 14)}${pad(range(s.summary.requestsPerSecond), 22)}${pad(range(s.summary.p50Ms), 20)}${pad(range(s.summary.p99Ms), 20)}${pad(s.summary.errors, 8)}${pad(`${num(s.summary.serviceCpuUsPerRequest.median)} + ${num(s.summary.databaseCpuUsPerRequest.median)}`, 24)}${range(s.summary.rssMaxPerProcessMb)}`,
    );
  }
  for (const r of [...c.ratios, ...c.limits]) log(`  ${spreadLine(r, rounds)}`);
}

export function printExplain(explained: VariantExplain[], runs: number, log: (line: string) => void): void {
  log(`\nEXPLAIN (ANALYZE, BUFFERS): exact page queries (limit 50), median execution of ${runs} runs; deep = after the row at 90% of the matching rows`);
  log(`${pad('variant', 58)}${pad('matching', 10)}${pad('first ms', 10)}${pad('deep ms', 10)}${pad('deep/1st', 10)}${pad('seq scan', 10)}indexes (first | deep)`);
  for (const v of explained) {
    const seq = v.first.seqScanOnSubscriptions || v.deep?.seqScanOnSubscriptions ? 'YES' : 'no';
    const indexes = `${v.first.indexes.join(', ') || '-'} | ${v.deep?.indexes.join(', ') || '-'}`;
    log(
      `${pad(v.variant, 58)}${pad(v.matchingRows, 10)}${pad(v.first.executionMs, 10)}${pad(v.deep?.executionMs ?? '-', 10)}${pad(v.deepOverFirst ?? '-', 10)}${pad(seq, 10)}${indexes}`,
    );
  }
  const flagged = explained.filter((v) => v.flags.length > 0);
  if (flagged.length === 0) log('no list variant seq-scans subscriptions or has a deep page over 3x its first page');
  for (const v of flagged) {
    log(`\nFLAGGED ${v.variant}: ${v.flags.join('; ')}`);
    for (const [which, page] of [
      ['first', v.first],
      ['deep', v.deep],
    ] as const) {
      if (!page) continue;
      log(`  ${which} page, ${page.executionMs} ms (runs ${page.executionRunsMs.join(', ')}), buffers hit ${page.sharedHitBlocks} read ${page.sharedReadBlocks}:`);
      log(`    ${page.sql}`);
      log(`    parameters: ${JSON.stringify(page.parameters)}`);
      for (const line of page.plan) log(`    ${line}`);
    }
  }
}

/**
 * bench/results/<UTC date and time>-<size>[-quick|-partial].json: a quick run (BENCH_ROUNDS < 3) or a
 * partial one (BENCH_ONLY) never overwrites a full run or looks like one (both are git-ignored).
 */
export function writeResults(resultsDir: string, size: number, kind: 'full' | 'quick' | 'partial', report: unknown): string {
  const stamp = new Date().toISOString().slice(0, 16).replace(/:/g, '');
  const file = path.join(resultsDir, `${stamp}-${size}${kind === 'full' ? '' : `-${kind}`}.json`);
  fs.mkdirSync(resultsDir, { recursive: true });
  fs.writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  return file;
}

/**
 * The maintained analytics' p50 in the newest full run at another size (older results name it in
 * `rows`, newer ones in `comparisons`): compared across runs, so never a verdict.
 */
export function previousAnalyticsP50(resultsDir: string, size: number): { file: string; p50Ms: number } | undefined {
  const files = fs.existsSync(resultsDir)
    ? fs
        .readdirSync(resultsDir)
        .filter((f) => f.endsWith('.json') && !f.endsWith('-quick.json'))
        .sort()
    : [];
  for (const file of files.reverse()) {
    const report = JSON.parse(fs.readFileSync(path.join(resultsDir, file), 'utf8')) as {
      size?: number;
      rows?: Array<{ scenario: string; p50Ms: number }>;
      comparisons?: ComparisonResult[];
    };
    if (report.size !== size) continue;
    const side = report.comparisons?.flatMap((c) => c.sides).find((s) => s.name === 'analytics (maintained aggregates)');
    const p50Ms = side?.summary.p50Ms.median ?? report.rows?.find((r) => r.scenario === 'analytics (maintained aggregates)')?.p50Ms;
    if (p50Ms !== undefined) return { file, p50Ms };
  }
  return undefined;
}
