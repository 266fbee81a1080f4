import type { Compilable, CompiledQuery, Kysely, PostgresPoolClient } from 'kysely';
import type pg from 'pg';
import type { Database } from './schema.js';

/** SQL text -> statement name, for the texts registered with prepareOnEachConnection. */
const names = new Map<string, string>();

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
  return async (db, parameters) => {
    if (!compiled) {
      compiled = build(db).compile();
      prepareOnEachConnection(compiled.sql);
    }
    return (await db.executeQuery<Row>({ ...compiled, parameters })).rows;
  };
}
