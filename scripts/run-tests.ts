/**
 * Runs the ava suite against one embedded PostgreSQL 16 started for this run (in a fresh folder
 * under the system temp dir, removed afterwards). The schema is migrated once into a template
 * database; each test file copies it into a database of its own. Prints `N passed, N failed`
 * last, counted from ava's TAP output, and exits with ava's code.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { openDatabase } from '../src/db/database.js';
import { ensureDatabase, startEmbeddedPostgres } from '../src/db/embedded.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { projectRoot } from '../src/config.js';
import { freePort } from '../src/free-port.js';

export const TEMPLATE_DATABASE = 'subscriptions_template';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'subscriptions-test-'));
// PostgreSQL runs as the `postgres` user when we are root: it must be able to enter the folder.
fs.chmodSync(root, 0o755);
const port = await freePort();
const started = Date.now();
const postgres = await startEmbeddedPostgres({
  dataDir: path.join(root, 'pg'),
  port,
  // Durability buys nothing in a throw-away test cluster.
  settings: { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off', shared_buffers: '128MB', max_connections: 200 },
});
let exitCode = 1;
try {
  await ensureDatabase(postgres.adminUrl, TEMPLATE_DATABASE);
  const template = openDatabase(postgres.urlFor(TEMPLATE_DATABASE));
  await migrateToLatest(template.db);
  await template.close();
  console.log(`# PostgreSQL 16 on port ${port} ready in ${Date.now() - started} ms (template ${TEMPLATE_DATABASE})`);

  const avaArgs = ['--tap', ...process.argv.slice(2)];
  const ava = spawn(path.join(projectRoot, 'node_modules', '.bin', 'ava'), avaArgs, {
    cwd: projectRoot,
    env: { ...process.env, TEST_PG_ADMIN_URL: postgres.adminUrl, TEST_PG_TEMPLATE: TEMPLATE_DATABASE },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let passed = 0;
  let failed = 0;
  let skipped = 0;
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
    }
  });
  const code = await new Promise<number>((resolve) => ava.on('close', (c) => resolve(c ?? 1)));
  await linesDone;
  // ava's TAP reporter can crash (e.g. on a timeout) before writing `not ok`: count that too.
  if (code !== 0 && failed === 0) failed = 1;
  exitCode = code !== 0 ? code : failed > 0 ? 1 : 0;
  await postgres.stop();
  fs.rmSync(root, { recursive: true, force: true });
  // The last line is exactly `N passed, N failed` (CI reads it); skipped tests are said just before.
  if (skipped) console.log(`${skipped} skipped (see their lines for why)`);
  console.log(`${passed} passed, ${failed} failed`);
} catch (err) {
  console.error(err);
  await postgres.stop().catch(() => {});
  fs.rmSync(root, { recursive: true, force: true });
  console.log('0 passed, 1 failed');
}
process.exit(exitCode);
