import fs from 'node:fs/promises';
import path from 'node:path';
import { Migrator, sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';
import { projectRoot } from '../config.js';

export const migrationsDir = path.join(projectRoot, 'db', 'migrations');

/** Each db/migrations/NNNN_name.sql file is one migration, applied in file-name order. */
class SqlFileMigrationProvider implements MigrationProvider {
  constructor(private readonly dir: string) {}

  async getMigrations(): Promise<Record<string, Migration>> {
    const files = (await fs.readdir(this.dir)).filter((f) => f.endsWith('.sql')).sort();
    const migrations: Record<string, Migration> = {};
    for (const file of files) {
      const text = await fs.readFile(path.join(this.dir, file), 'utf8');
      // No parameters, so pg sends it as one simple query: several statements are fine.
      migrations[file.replace(/\.sql$/, '')] = { up: async (db) => void (await sql.raw(text).execute(db)) };
    }
    return migrations;
  }
}

/**
 * Applies pending migrations, each in its own transaction. Kysely's migrator takes a PostgreSQL
 * advisory lock first, so two processes starting at once apply each migration exactly once.
 */
export async function migrateToLatest(db: Kysely<any>): Promise<string[]> {
  // Kysely locks only around applying migrations; creating its own bookkeeping tables
  // (CREATE TABLE IF NOT EXISTS) races on a fresh database. One session-level advisory lock
  // held on one connection serializes the whole run across processes.
  return db.connection().execute(async (connection) => {
    // Waiting for another process's migrations, and applying them, are not requests: no statement timeout.
    await sql`SET statement_timeout = 0`.execute(connection);
    await sql`SELECT pg_advisory_lock(hashtext('subscriptions-api migrations'))`.execute(connection);
    try {
      return await applyPending(connection);
    } finally {
      await sql`SELECT pg_advisory_unlock(hashtext('subscriptions-api migrations'))`.execute(connection);
      await sql`RESET statement_timeout`.execute(connection);
    }
  });
}

async function applyPending(db: Kysely<any>): Promise<string[]> {
  // Work on several branches lands migrations out of number order (0007 applied here before 0006
  // arrived): each is still applied once; Kysely would otherwise refuse the database for good.
  const migrator = new Migrator({ db, provider: new SqlFileMigrationProvider(migrationsDir), allowUnorderedMigrations: true });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    throw new Error(`migration ${failed ?? ''} failed: ${error instanceof Error ? error.message : String(error)}`);
  }
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}
