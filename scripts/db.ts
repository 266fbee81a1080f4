/** Database maintenance commands run by make: `migrate`. */
import { pino } from 'pino';
import { loadConfig } from '../src/config.js';
import { assertPostgres16, openDatabase } from '../src/db/database.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { provideDatabase } from '../src/service.js';

const command = process.argv[2];
const config = loadConfig();
const log = pino({ level: config.logLevel });
const { url, embedded } = await provideDatabase(config, log);
const database = openDatabase(url);
try {
  const version = await assertPostgres16(database.pool);
  if (command === 'migrate') {
    const applied = await migrateToLatest(database.db);
    console.log(`PostgreSQL ${version}: ${applied.length ? `applied ${applied.join(', ')}` : 'schema already up to date'}`);
  } else {
    throw new Error(`unknown command ${command ?? ''}`);
  }
} finally {
  await database.close();
  await embedded?.stop();
}
