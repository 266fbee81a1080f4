import type { PostgresPoolClient } from 'kysely';
import type pg from 'pg';

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
