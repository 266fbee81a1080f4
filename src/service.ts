import type { Server } from 'node:http';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import type { Config } from './config.js';
import { assertPostgres16, openDatabase, type DatabaseHandle } from './db/database.js';
import { ensureDatabase, startEmbeddedPostgres, type RunningPostgres } from './db/embedded.js';
import { migrateToLatest } from './db/migrate.js';
import { createApp } from './http/app.js';
import { CursorCodec } from './http/cursor.js';

export const EMBEDDED_DATABASE = 'subscriptions';

/** Server settings for the embedded cluster: sized for a 500k-5M row dataset on a small machine. */
export const embeddedSettings = {
  shared_buffers: '512MB',
  work_mem: '16MB',
  maintenance_work_mem: '512MB',
  max_wal_size: '4GB',
  checkpoint_timeout: '15min',
};

export interface RunningService {
  url: string;
  databaseUrl: string;
  postgresVersion: string;
  database: DatabaseHandle;
  log: Logger;
  stop(): Promise<void>;
}

/** Where the database comes from: DATABASE_URL, or the embedded PostgreSQL 16 under DATA_DIR. */
export async function provideDatabase(config: Config, log: Logger): Promise<{ url: string; embedded?: RunningPostgres }> {
  if (config.databaseUrl) return { url: config.databaseUrl };
  const embedded = await startEmbeddedPostgres({
    dataDir: path.join(config.dataDir, 'pg16'),
    port: config.embeddedPgPort,
    settings: embeddedSettings,
    log: (line) => log.debug({ postgres: line }),
  });
  await ensureDatabase(embedded.adminUrl, EMBEDDED_DATABASE);
  return { url: embedded.urlFor(EMBEDDED_DATABASE), embedded };
}

/** Opens the database, checks it is PostgreSQL 16+, migrates it, and serves the API. */
export async function startService(config: Config, log: Logger = pino({ level: config.logLevel })): Promise<RunningService> {
  const { url: databaseUrl, embedded } = await provideDatabase(config, log);
  const database = openDatabase(databaseUrl, {
    max: config.poolSize,
    statementTimeoutMs: config.statementTimeoutMs,
    onError: (err) => log.warn({ err }, 'idle database connection lost'),
  });
  let server: Server | undefined;
  try {
    const postgresVersion = await assertPostgres16(database.pool);
    const applied = await migrateToLatest(database.db);
    log.info({ applied }, applied.length ? `applied migrations: ${applied.join(', ')}` : 'database schema is up to date');
    const secret = await database.db.selectFrom('service_secrets').select('value').where('name', '=', 'cursor_hmac_key').executeTakeFirstOrThrow();
    const app = await createApp(
      { db: database.db, cursors: new CursorCodec(secret.value), log },
      {
        bodyLimitBytes: config.bodyLimitBytes,
        isReady: async () => (await database.pool.query('SELECT 1')).rowCount === 1,
      },
    );
    server = await new Promise<Server>((resolve, reject) => {
      const s = app.listen(config.port, config.host, () => resolve(s));
      s.once('error', reject);
    });
    const address = server.address();
    const port = typeof address === 'object' && address ? address.port : config.port;
    const listening = server;
    return {
      url: `http://${config.host}:${port}`,
      databaseUrl,
      postgresVersion,
      database,
      log,
      async stop() {
        await new Promise<void>((resolve) => listening.close(() => resolve()));
        await database.close();
        await embedded?.stop();
      },
    };
  } catch (err) {
    server?.close();
    await database.close();
    await embedded?.stop();
    throw err;
  }
}
