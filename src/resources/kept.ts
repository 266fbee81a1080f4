/**
 * Documents computed from the maintained aggregates, kept by the service process and sent again
 * while they are still the answer (issue 17: GET /api/analytics; issue 13: GET /api/analytics/mrr).
 *
 * Migration 0023 keeps versions that every change to what these documents read moves up, in the
 * same transaction as the change: the analytics aggregates, the history's MRR movements and status
 * changes, users' names and emails, and any repair, rebuild, truncate or seed. A document is
 * computed together with its key (the UTC month and the versions' sum) in one statement, so in one
 * snapshot. A later request reads the key alone, in one small statement: when it equals the kept
 * document's key, the data the document was computed from is the data of this statement's
 * snapshot (a later snapshot than the document's, since the check is sent after the document
 * arrived: it sees every change the document saw, and any change after it would have moved a
 * version), so the document is exact now, apart from its as_of, which the check supplies.
 * Otherwise the whole statement runs again and its document is kept instead.
 *
 * Kept per process: nothing is shared between the processes of WEB_CONCURRENCY or between
 * instances, and none can serve another's stale document. Only outside a transaction (on the root
 * Kysely instance): a transaction's snapshot may be older than the kept document.
 */
import { sql, type Kysely } from 'kysely';
import { preparedQuery } from '../db/prepared.js';
import type { Database } from '../db/schema.js';

/**
 * The key of a document from the aggregates, as of the statement's snapshot: the UTC month (the
 * windows of the documents end at the current month) and the sum of migration 0023's versions.
 */
export const documentKey = sql<string>`to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM') || ' ' || (SELECT sum(version) FROM analytics_versions)`;

/** The check of a kept document: this statement's instant (as every document writes it), and the key now. */
const currentKey = preparedQuery((db) => db.selectNoFrom([sql<string>`to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`.as('as_of'), documentKey.as('key')]));

/** Every kept document starts with its as_of (the statement's instant), the only part the key does not vouch for. */
const AS_OF_PREFIX = '{"as_of":"';

interface KeptDocument {
  key: string;
  /** The document after its as_of value (`",` and the rest). */
  afterAsOf: string;
}

/** What computes a document: its JSON text, and documentKey read in the same statement. */
export type ComputeDocument<Args> = (db: Kysely<Database>, args: Args) => Promise<{ document: string; key: string }>;

/**
 * A reader of `compute`'s documents that keeps the last one per `name(args)` (at most `capacity`
 * names, the oldest forgotten first) and sends it again while its key is the current one.
 */
export function keptDocuments<Args>(root: Kysely<Database>, compute: ComputeDocument<Args>, name: (args: Args) => string, capacity: number) {
  const kept = new Map<string, KeptDocument>();
  return async (db: Kysely<Database>, args: Args): Promise<string> => {
    const id = name(args);
    const held = db === root ? kept.get(id) : undefined;
    if (held) {
      const [check] = await currentKey(db, []);
      if (check?.key === held.key) return AS_OF_PREFIX + check.as_of + held.afterAsOf;
    }
    const { document, key } = await compute(db, args);
    const end = document.indexOf('"', AS_OF_PREFIX.length);
    if (db === root && document.startsWith(AS_OF_PREFIX) && end > 0) {
      kept.delete(id);
      kept.set(id, { key, afterAsOf: document.slice(end) });
      if (kept.size > capacity) kept.delete(kept.keys().next().value!);
    }
    return document;
  };
}
