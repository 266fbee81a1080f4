/**
 * Runs the ava suite against one embedded PostgreSQL 16 started for this run (in a fresh folder
 * under the system temp dir, removed afterwards). The schema is migrated once into a template
 * database; each test file copies it into a database of its own.
 *
 * The last line is always exactly `N passed, N failed`, and the exit status is 0 exactly when
 * N failed is 0. Counted as failed, besides tests that fail: ava exiting non-zero with no `not ok`
 * seen (its TAP reporter can crash on a timeout before writing it), a run in which no test passed
 * (every test skipped, or a --match that matches nothing: such a run proves nothing), under CI
 * every skipped test (a missing prerequisite must not pass CI), and PostgreSQL failing to start or
 * to stop. Each of these says why on a `#` line before the count.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { RunningPostgres } from '../src/db/embedded.js';

// The project's own modules are imported inside the run below, so that even a broken import
// ends with the count line.
const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const TEMPLATE_DATABASE = 'subscriptions_template';

/** CI as ava and most CI services mean it: CI set to anything but empty, 0 or false. */
const inCI = !['', '0', 'false'].includes((process.env.CI ?? '').toLowerCase());

/**
 * The variables with which ava (through ci-parallel-vars) would run only a share of the test files
 * on a CI machine. One run here is the whole suite: they are not passed on (and package.json sets
 * ava's utilizeParallelBuilds to false as well).
 */
const CI_PARALLEL_VARIABLES = [
  'CI_NODE_INDEX',
  'CI_NODE_TOTAL',
  'CIRCLE_NODE_INDEX',
  'CIRCLE_NODE_TOTAL',
  'BITBUCKET_PARALLEL_STEP',
  'BITBUCKET_PARALLEL_STEP_COUNT',
  'BUILDKITE_PARALLEL_JOB',
  'BUILDKITE_PARALLEL_JOB_COUNT',
  'SEMAPHORE_CURRENT_JOB',
  'SEMAPHORE_JOB_COUNT',
];

let passed = 0;
let failed = 0;
let skipped = 0;
/** ava's closing `# fail N`: missing when its TAP reporter crashed (it does on a test timeout). */
let sawSummary = false;
/** Why the run failed besides failed tests: each is counted as one failure. */
const runFailures: string[] = [];

/** Runs ava with TAP output, echoing it and counting its results. Returns ava's exit code. */
async function runAva(postgres: RunningPostgres): Promise<number> {
  const env: NodeJS.ProcessEnv = { ...process.env, TEST_PG_ADMIN_URL: postgres.adminUrl, TEST_PG_TEMPLATE: TEMPLATE_DATABASE };
  const dropped = CI_PARALLEL_VARIABLES.filter((name) => env[name] !== undefined);
  for (const name of dropped) delete env[name];
  if (dropped.length) console.log(`# ${dropped.join(', ')} not passed to ava: this run covers every test file`);
  const ava = spawn(path.join(projectRoot, 'node_modules', '.bin', 'ava'), ['--tap', ...process.argv.slice(2)], {
    cwd: projectRoot,
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = readline.createInterface({ input: ava.stdout! });
  const linesDone = new Promise((resolve) => lines.once('close', resolve));
  lines.on('line', (line) => {
    console.log(line);
    if (/^not ok \d+/.test(line)) {
      if (/# TODO/.test(line)) skipped++;
      else failed++;
    } else if (/^ok \d+/.test(line)) {
      if (/# (SKIP|TODO)/.test(line)) skipped++;
      else passed++;
    } else if (/^# fail \d+$/.test(line)) {
      sawSummary = true;
    }
  });
  const code = await new Promise<number>((resolve) => {
    ava.on('error', (err) => {
      console.error(err);
      resolve(1);
    });
    ava.on('close', (c) => resolve(c ?? 1));
  });
  await linesDone;
  return code;
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'subscriptions-test-'));
// PostgreSQL runs as the `postgres` user when we are root: it must be able to enter the folder.
fs.chmodSync(root, 0o755);
let postgres: RunningPostgres | undefined;
try {
  const { openDatabase } = await import('../src/db/database.js');
  const { ensureDatabase, startEmbeddedPostgres } = await import('../src/db/embedded.js');
  const { migrateToLatest } = await import('../src/db/migrate.js');
  const { freePort } = await import('../src/free-port.js');
  const port = await freePort();
  const started = Date.now();
  postgres = await startEmbeddedPostgres({
    dataDir: path.join(root, 'pg'),
    port,
    // Durability buys nothing in a throw-away test cluster.
    settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', shared_buffers: '128MB', max_connections: 200 },
  });
  await ensureDatabase(postgres.adminUrl, TEMPLATE_DATABASE);
  const template = openDatabase(postgres.urlFor(TEMPLATE_DATABASE));
  await migrateToLatest(template.db);
  await template.close();
  console.log(`# PostgreSQL 16 on port ${port} ready in ${Date.now() - started} ms (template ${TEMPLATE_DATABASE}), Node ${process.version}`);
  const code = await runAva(postgres);
  if (code !== 0 && !sawSummary) runFailures.push(`ava exited with code ${code} before its summary (a test timed out or ava crashed): see above`);
  else if (code !== 0 && failed === 0) runFailures.push(`ava exited with code ${code} without reporting a failed test`);
} catch (err) {
  console.error(err);
  runFailures.push(`the run did not complete: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
}
try {
  await postgres?.stop();
} catch (err) {
  console.error(err);
  runFailures.push(`stopping PostgreSQL failed: ${err instanceof Error ? err.message : String(err)}`);
}
try {
  fs.rmSync(root, { recursive: true, force: true });
} catch (err) {
  console.error(`# could not remove ${root}: ${err instanceof Error ? err.message : String(err)}`); // litter, not a failure
}

if (skipped && inCI) {
  // Each skipped test counts as failed: under CI a missing prerequisite must fail the run.
  console.log(`# failed: ${skipped} test(s) skipped under CI=${process.env.CI} (see their lines for why); each counts as failed`);
  failed += skipped;
} else if (skipped) {
  console.log(`# ${skipped} skipped (see their lines for why)`);
}
if (passed === 0 && failed === 0 && runFailures.length === 0) {
  runFailures.push(`no test passed (${skipped} skipped): a run that proves nothing fails`);
}
for (const reason of runFailures) console.log(`# failed: ${reason}`);
failed += runFailures.length;
// The last line is exactly `N passed, N failed` (CI reads it), and the exit status agrees with it.
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
