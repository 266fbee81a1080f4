/**
 * make bench: seeds a database of its own (BENCH_SUBSCRIPTIONS, default 500,000), starts our service
 * as make run does, the floor server and, when asked, an older commit's service and a second
 * setting of ours; measures every comparison of bench/scenarios.ts in interleaved rounds
 * (BENCH_ROUNDS, default 3; 1 is a quick mode and never a verdict); prints the tables and ratio
 * lines and writes bench/results/<date>T<time>-<size>.json. Stops everything it started.
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { projectRoot } from '../src/config.js';
import { CursorCodec } from '../src/http/cursor.js';
import { maintenanceTriggerSwitch, reconcileHistory } from './analytics.js';
import { checkoutCommit, prepareBaseline, type BaselineCheckout } from './baseline.js';
import { appliedMigrations, copyForOlderCheckout, openBenchDatabase, seedBenchDatabase, statementProbe } from './database.js';
import { daysAgo, explainListVariants } from './explain.js';
import { num, previousAnalyticsP50, printComparison, printExplain, spreadLine, writeResults } from './report.js';
import { runComparison, verdict, warmUpServers, type ComparisonResult } from './rounds.js';
import { scenarios, type ScenarioContext } from './scenarios.js';
import { localPostmaster, processMemory, processName, processTree, requestHeaders, startFloor, startService, treeMemory, type Server } from './servers.js';
import { isVerdictRun, loadSettings, NOT_A_VERDICT } from './settings.js';

const log = (line: string) => console.log(line);
const settings = loadSettings();
const quick = !isVerdictRun(settings);
const resultsDir = path.join(projectRoot, 'bench', 'results');
const loadAverageAtStart = os.loadavg();
const generatorVersion =
  settings.loadGenerator === 'wrk' ? (spawnSync('wrk', ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0] ?? '').trim() : 'autocannon 9 (in the bench process)';
const autocannonWhy = process.env.BENCH_LOAD ? 'BENCH_LOAD=autocannon' : 'wrk not found';
log(`# load generator: ${generatorVersion}${settings.loadGenerator === 'autocannon' ? ` (${autocannonWhy}): autocannon shares the bench process and the two cores` : ''}`);
if (quick) log(`# BENCH_ROUNDS=${settings.rounds}: quick mode, ${NOT_A_VERDICT}`);

const baseline: BaselineCheckout | undefined = settings.baselineRef ? prepareBaseline(settings.baselineRef, settings.baselineNodeFlags, log) : undefined;
const bench = await openBenchDatabase(settings);
const servers: Record<string, Server> = {};
const stopAll = async () => {
  for (const server of Object.values(servers)) await server.stop().catch(() => {});
  await bench.stop().catch(() => {});
};

try {
  const seed = await seedBenchDatabase(bench, settings, log);

  // An older checkout that does not know some of our migrations gets a copy of the data (see copyForOlderCheckout).
  let baselineDatabaseUrl = bench.url;
  if (baseline) {
    const unknown = (await appliedMigrations(bench)).filter((m) => !baseline.migrations.includes(m));
    if (unknown.length) {
      log(`# baseline ${baseline.commit.slice(0, 12)} does not know migrations ${unknown.join(', ')}: it runs on a copy of the seeded database`);
      baselineDatabaseUrl = await copyForOlderCheckout(bench, baseline.migrations);
    }
  }
  const database = bench.handle;
  // PostgreSQL's CPU time per request is read from /proc when the server runs here (the embedded one does).
  const databasePid = localPostmaster(Number((await database.pool.query('SELECT pg_backend_pid() AS pid')).rows[0].pid));
  log(
    `# CPU time per request: the servers' process trees${databasePid ? ` and PostgreSQL's (postmaster ${databasePid})` : '; PostgreSQL is not on this machine, its CPU is not counted'}`,
  );

  // The service's cursor key, read as the service reads it: cursors made here are ones it issues.
  const secret = await database.db.selectFrom('service_secrets').select('value').where('name', '=', 'cursor_hmac_key').executeTakeFirstOrThrow();
  const cursors = new CursorCodec(secret.value);
  const maxId = Number((await database.pool.query('SELECT max(id) AS max FROM subscriptions')).rows[0].max ?? 0);
  const deepCursor = cursors.encode('id', [Math.floor(maxId * 0.9)]);

  log(`# EXPLAIN (ANALYZE, BUFFERS) of the subscription list variants: first page and a page 90% deep, median of ${settings.explainRuns} runs each`);
  const explained = await explainListVariants(database, cursors, settings.explainRuns);
  const triggers = await maintenanceTriggerSwitch(database, log);

  const context: ScenarioContext = {
    settings,
    database,
    triggers,
    servers,
    users: settings.users,
    subscriptions: maxId,
    deepCursor,
    sixMonthsAgo: daysAgo(182),
    baseline: Boolean(baseline),
    variant: Boolean(settings.variant),
    record: { restores: [], midFlight: [] },
  };
  const planned = scenarios(context);
  const comparisons = planned.comparisons.filter((c) => !settings.only || settings.only.test(c.name));
  const services = planned.services.filter((s) => comparisons.some((c) => c.sides.some((side) => side.server === s.name)));
  if (settings.only) log(`# BENCH_ONLY=${settings.only.source}: ${comparisons.map((c) => c.name).join(', ') || 'no comparison'}`);

  log(
    `# the services run with STATEMENT_TIMEOUT_MS=${settings.statementTimeoutMs} (default 10000; the plain-SQL analytics takes ~13 s at 5M), PG_POOL_SIZE=${settings.poolSize}, RATE_LIMIT_PER_MINUTE=0 (one key sends every request) unless a scenario says otherwise`,
  );
  const common = { databaseUrl: bench.url, poolSize: settings.poolSize, statementTimeoutMs: settings.statementTimeoutMs };
  const ours = await startService({ ...common, name: 'ours', cwd: projectRoot, ...settings.ours, commit: checkoutCommit(projectRoot) });
  servers.ours = ours;
  const uses = (server: string) => comparisons.some((c) => c.sides.some((s) => s.server === server));
  if (uses('floor')) servers.floor = await startFloor(bench.url, settings.poolSize);
  if (baseline && uses('baseline')) {
    servers.baseline = await startService({
      ...common,
      databaseUrl: baselineDatabaseUrl,
      name: 'baseline',
      cwd: baseline.dir,
      nodeFlags: baseline.nodeFlags,
      webConcurrency: undefined,
      commit: baseline.commit,
    });
  }
  if (settings.variant && uses('variant')) servers.variant = await startService({ ...common, name: 'variant', cwd: projectRoot, ...settings.variant });
  for (const extra of services) {
    const server = await startService({ ...common, name: extra.name, cwd: projectRoot, ...settings.ours, env: extra.env });
    servers[extra.name] = server;
    if (extra.verify) log(`# ${extra.name}: ${await extra.verify(server, ours)}`);
  }
  const idle = Object.fromEntries(Object.entries(servers).map(([name, s]) => [name, treeMemory(s.pid)]));
  for (const [name, s] of Object.entries(servers)) {
    log(`# ${name} ready on ${s.url}: ${idle[name]!.processes} process(es), RSS ${Math.round(idle[name]!.sumMb)} MB; ${JSON.stringify(s.description)}`);
  }

  const statements = settings.statements ? statementProbe(database.pool) : undefined;
  await warmUpServers(comparisons, { settings, servers, databasePid, log });
  const results: ComparisonResult[] = [];
  for (const comparison of comparisons) results.push(await runComparison(comparison, { settings, servers, databasePid, statements, log }));

  // Analytics must still equal the plain answer after the writes of the load (let the last writes land).
  await new Promise((r) => setTimeout(r, 2_000));
  const fetchJson = async (p: string) => (await fetch(`${ours.url}${p}`, { headers: requestHeaders })).json() as Promise<Record<string, unknown>>;
  const strip = ({ as_of: _a, ...rest }: Record<string, unknown>) => JSON.stringify(rest);
  const analyticsExact = strip(await fetchJson('/api/analytics/')) === strip(await fetchJson('/api/analytics/?source=base_tables'));
  // The history aggregates against the history, once, when the triggers-off inserts ran (their restores deleted rows).
  const historyReconcile = context.record.restores.length > 0 ? await reconcileHistory(database) : undefined;
  // Lifetime peak (VmHWM) of every process of each server's tree, read before they stop.
  const lifetimePeak = Object.fromEntries(
    Object.entries(servers).map(([name, s]) => [name, processTree(s.pid).map((pid) => ({ pid, name: processName(pid), peakMb: Math.round(processMemory(pid)?.peakMb ?? 0) }))]),
  );
  await stopAll();

  // ------------------------------------------------------------ report
  for (const c of results) printComparison(c, settings.rounds, log);
  printExplain(explained, settings.explainRuns, log);

  const allRatios = results.flatMap((c) => c.ratios.map((r) => ({ comparison: c.name, ...r })));
  const allLimits = results.flatMap((c) => c.limits.map((r) => ({ comparison: c.name, ...r })));
  const runs = results.flatMap((c) => c.sides.flatMap((s) => s.rounds));
  const errorsPerRun = runs.map((m) => m.errors);
  const totalErrors = errorsPerRun.reduce((a, b) => a + b, 0);
  const errorsVerdict = verdict(errorsPerRun, { op: '<=', value: 0 }, settings.rounds);
  const { midFlight, restores, feedWalk } = context.record;
  const midFlightMismatches = midFlight.reduce((n, c) => n + c.mismatches.length, 0);
  const midFlightErrors = midFlight.filter((c) => c.error).length;
  const restoreFailures = restores.filter((r) => r.check.error || r.check.mismatches.length > 0).length + (historyReconcile && historyReconcile.differences > 0 ? 1 : 0);
  const analyticsSide = results.flatMap((c) => c.sides).find((s) => s.name === 'analytics (maintained aggregates)');
  const at500k = settings.size === 500_000 ? undefined : previousAnalyticsP50(resultsDir, 500_000);
  const acrossRuns =
    at500k && analyticsSide
      ? { analytics_p50_this_size_over_500k: analyticsSide.summary.p50Ms.median / at500k.p50Ms, from: at500k.file, note: 'separate runs, not interleaved: no verdict' }
      : undefined;

  log(
    `\nseed: ${seed.totalRows.toLocaleString('en-US')} rows in ${seed.seconds.toFixed(1)} s (${Math.round(seed.rowsPerSecond).toLocaleString('en-US')} rows/s), then VACUUM ANALYZE and no autovacuum running before the first run`,
  );
  log(
    `\nRATIOS (${settings.rounds} interleaved round${settings.rounds === 1 ? '' : 's'} each${quick ? `: ${NOT_A_VERDICT}` : ''}; load average ${loadAverageAtStart[0]!.toFixed(1)} at start, ${os.loadavg()[0]!.toFixed(1)} at end on ${os.cpus().length} shared cores)`,
  );
  for (const r of allRatios) log(`ratio ${spreadLine(r, settings.rounds)}`);
  for (const r of allLimits) log(`figure ${spreadLine(r, settings.rounds)}`);
  log(`errors: ${totalErrors} in ${runs.length} timed runs; target 0: ${errorsVerdict}`);
  if (acrossRuns) log(`analytics p50 at ${settings.size} / at 500k (${acrossRuns.from}): ${num(acrossRuns.analytics_p50_this_size_over_500k)} (${acrossRuns.note})`);
  if (restores.length) log(`triggers disabled for the triggers-off inserts: ${triggers.names.join(', ')}`);
  for (const r of restores) {
    log(
      `after the triggers-off inserts ${r.round === 0 ? '(warm-up)' : `round ${r.round}`}: ${r.deleted} rows deleted and triggers enabled in ${r.restoreSeconds.toFixed(1)} s; analytics mismatches ${r.check.error ?? r.check.mismatches.length}`,
    );
    for (const m of r.check.mismatches.slice(0, 10)) log(`  ${m}`);
  }
  if (historyReconcile) {
    log(
      historyReconcile.differences < 0
        ? 'history_analytics_reconcile() does not exist: the history aggregates were not checked'
        : `history_analytics_reconcile() after the load: ${historyReconcile.differences} differences (${historyReconcile.seconds.toFixed(1)} s)`,
    );
    for (const row of historyReconcile.sample) log(`  ${JSON.stringify(row)}`);
  }
  if (feedWalk)
    log(`feed walked once for its cursors: ${feedWalk.events.toLocaleString('en-US')} events, ${feedWalk.pages.length} full pages, in ${feedWalk.seconds.toFixed(1)} s`);
  for (const c of midFlight) {
    log(
      `mid-flight check (${c.label}, ${c.startedAtMs}-${c.finishedAtMs} ms into the ${c.runSeconds} s run, ${c.subscriptionCount - c.rowsAtStartOfRun} rows inserted by then): ${c.error ?? `${c.mismatches.length} mismatches`}`,
    );
    for (const m of c.mismatches.slice(0, 10)) log(`  ${m}`);
  }
  log(`analytics mismatches mid-flight: ${midFlightMismatches} in ${midFlight.length} checks${midFlightErrors ? `, ${midFlightErrors} checks failed` : ''}`);
  log(`analytics equals the plain answer after the load: ${analyticsExact}`);
  for (const [name, peaks] of Object.entries(lifetimePeak)) {
    log(
      `${name} RSS: ${Math.round(idle[name]!.sumMb)} MB when ready (${idle[name]!.processes} process(es)); lifetime peak per process ${peaks.map((p) => `${p.name} ${p.peakMb} MB`).join(', ')}`,
    );
  }

  const file = writeResults(resultsDir, settings.size, quick ? 'quick' : settings.only ? 'partial' : 'full', {
    date: new Date().toISOString(),
    verdict: quick ? `BENCH_ROUNDS=${settings.rounds}: ${NOT_A_VERDICT}` : `${settings.rounds} interleaved rounds`,
    size: settings.size,
    users: settings.users,
    machine: {
      cpus: os.cpus().length,
      model: os.cpus()[0]?.model,
      memoryGiB: Math.round(os.totalmem() / 2 ** 30),
      node: process.version,
      postgres: bench.postgresVersion,
      loadAverageAtStart,
      loadAverageAtEnd: os.loadavg(),
      note: 'shared with other sessions running tests: every run records its load average',
    },
    settings,
    loadGenerator: { name: settings.loadGenerator, version: generatorVersion, threads: settings.loadGenerator === 'wrk' ? settings.wrkThreads : null },
    servers: Object.fromEntries(Object.entries(servers).map(([name, s]) => [name, { ...s.description, idle: idle[name], lifetimePeakPerProcess: lifetimePeak[name] }])),
    baseline: baseline ? { ...baseline, databaseUrl: baselineDatabaseUrl === bench.url ? 'the same database' : 'a copy of the seeded database' } : null,
    seed: { seconds: seed.seconds, rows: seed.totalRows, rowsPerSecond: seed.rowsPerSecond },
    ratios: allRatios,
    limits: allLimits,
    errors: { total: totalErrors, timedRuns: runs.length, verdict: errorsVerdict },
    acrossRuns: acrossRuns ?? null,
    comparisons: results,
    insertThroughput: { triggersDisabled: triggers.names, restores, historyReconcileAfterLoad: historyReconcile ?? null },
    feedWalk: feedWalk ? { events: feedWalk.events, fullPages: feedWalk.pages.length, seconds: feedWalk.seconds } : null,
    analyticsExactAfterLoad: analyticsExact,
    midFlight: { mismatches: midFlightMismatches, errors: midFlightErrors, checks: midFlight },
    explain: explained,
  });
  log(`written: ${path.relative(projectRoot, file)}${quick ? ` (${NOT_A_VERDICT})` : ''}`);
  const exact = analyticsExact && midFlightMismatches === 0 && midFlightErrors === 0 && restoreFailures === 0;
  process.exit(exact ? 0 : 1);
} catch (err) {
  await stopAll();
  throw err;
}
