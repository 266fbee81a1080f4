import { CompiledQuery, type Compilable, type Kysely, type PostgresPoolClient } from 'kysely';
import type pg from 'pg';
import type { Database } from './schema.js';
import { DatabaseUnavailableError } from './unavailable.js';

/** SQL text -> statement name, for the texts registered with prepareOnEachConnection. */
const names = new Map<string, string>();

/** Each root Kysely instance of openDatabase and its pool (a transaction is another instance: not here). */
const pools = new WeakMap<Kysely<Database>, pg.Pool>();

/** Lets runPrepared send this instance's statements through its pool directly (openDatabase calls it). */
export function registerPool(db: Kysely<Database>, pool: pg.Pool): void {
  pools.set(db, pool);
}

/**
 * Runs a registered (prepared) statement: outside a transaction through the pool itself, as
 * pool.query would, which costs the service about 30 us of CPU per query against Kysely's 40-45
 * (its connection provider, driver and result layers, per query; 20,000 by-id reads, 8 at a time,
 * 4 interleaved rounds); in a transaction (or on any other instance) through Kysely. Either way the
 * statement is prepared once per connection, and a connection that cannot be had is a
 * DatabaseUnavailableError.
 */
export async function runPrepared<Row>(db: Kysely<Database>, sqlText: string, parameters: readonly unknown[]): Promise<Row[]> {
  prepareOnEachConnection(sqlText);
  const pool = pools.get(db);
  if (!pool) return (await db.executeQuery<Row>(CompiledQuery.raw(sqlText, parameters as unknown[]))).rows;
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    throw new DatabaseUnavailableError(err);
  }
  try {
    return (await client.query({ name: names.get(sqlText)!, text: sqlText, values: parameters as unknown[] })).rows as Row[];
  } finally {
    // As Kysely releases its connections: kept (a broken one is dropped by the pool's error handling).
    client.release();
  }
}

/**
 * Sends this SQL text (a compiled Kysely query) as a named prepared statement from now on, so
 * PostgreSQL parses and plans it once per connection instead of on every call. Meant for hot
 * queries with a fixed text whose parse and plan cost more than their execution.
 */
export function prepareOnEachConnection(sqlText: string): void {
  if (!names.has(sqlText)) names.set(sqlText, `kysely_prepared_${names.size + 1}`);
}

/** Kysely's view of a pooled client: registered texts go out by name, everything else as is. */
export function preparingClient(client: pg.PoolClient): PostgresPoolClient {
  const query = (text: unknown, parameters?: ReadonlyArray<unknown>) => {
    const name = typeof text === 'string' ? names.get(text) : undefined;
    if (name) return client.query({ name, text: text as string, values: parameters as unknown[] });
    return (client.query as (text: unknown, values?: unknown) => unknown)(text, parameters);
  };
  return { query: query as PostgresPoolClient['query'], release: (destroy) => client.release(destroy) };
}

/**
 * A hot query built by Kysely once, at its first use, with placeholder values, then executed with
 * each call's parameters (in the order the compiled SQL numbers them) as a prepared statement:
 * neither the query builder nor PostgreSQL's parser and planner run again per request.
 */
export function preparedQuery<Row>(build: (db: Kysely<Database>) => Compilable<Row>): (db: Kysely<Database>, parameters: unknown[]) => Promise<Row[]> {
  let compiled: CompiledQuery<Row> | undefined;
  return (db, parameters) => {
    if (!compiled) {
      compiled = build(db).compile();
      prepareOnEachConnection(compiled.sql);
    }
    return runPrepared<Row>(db, compiled.sql, parameters);
  };
}
