import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { preparingClient, registerPool } from './prepared.js';
import { DatabaseUnavailableError } from './unavailable.js';
import type { Database } from './schema.js';

// How values cross from PostgreSQL into TypeScript, decided once:
// bigint ids and counts fit in a JS number (< 2^53); numeric (money) stays a decimal string;
// date stays 'YYYY-MM-DD' (the default parser would shift it through the local time zone).
const PG_INT8 = 20;
const PG_DATE = 1082;
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === PG_INT8) return (value: string) => Number(value);
    if (oid === PG_DATE) return (value: string) => value;
    return pg.types.getTypeParser(oid, format as 'text');
  },
} as pg.CustomTypesConfig;

export interface PoolOptions {
  max?: number;
  statementTimeoutMs?: number;
  connectionTimeoutMs?: number;
  onError?: (err: Error) => void;
}

export interface DatabaseHandle {
  db: Kysely<Database>;
  pool: pg.Pool;
  close(): Promise<void>;
}

export function openDatabase(connectionString: string, options: PoolOptions = {}): DatabaseHandle {
  const pool = new pg.Pool({
    connectionString,
    max: options.max ?? 10,
    // Never wait forever for a connection: an exhausted pool becomes a 503, not a hang.
    connectionTimeoutMillis: options.connectionTimeoutMs ?? 5_000,
    statement_timeout: options.statementTimeoutMs ?? 10_000,
    idle_in_transaction_session_timeout: 60_000,
    application_name: 'subscriptions-api',
    types,
  });
  // An idle client losing its connection (database restart) must not crash the process.
  const onError = options.onError ?? (() => {});
  pool.on('error', onError);
  // A checked-out client can also receive a server error between queries (e.g. an admin
  // shutdown); without a listener that error event would crash the process.
  pool.on('connect', (client) => client.on('error', onError));
  // Failing to get a connection means the database is unavailable (a 503), whatever pg's message.
  const connect = () =>
    pool.connect().then(preparingClient, (err: unknown) => {
      throw new DatabaseUnavailableError(err);
    });
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: { connect, end: () => pool.end() } }) });
  registerPool(db, pool);
  return { db, pool, close: () => db.destroy() };
}

/** Refuses anything older than PostgreSQL 16, with a message that says what was found. */
export async function assertPostgres16(pool: pg.Pool): Promise<string> {
  const { rows } = await pool.query<{ num: string; version: string }>("SELECT current_setting('server_version_num') AS num, current_setting('server_version') AS version");
  const row = rows[0]!;
  if (Number(row.num) < 160000) {
    throw new Error(`PostgreSQL 16 or newer is required, but the database runs PostgreSQL ${row.version}`);
  }
  return row.version;
}
