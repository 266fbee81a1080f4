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
 *
 * Outside a transaction, requests for one name share their reads. A read answers every request
 * that arrived before its first statement was sent: that statement's snapshot is later than their
 * arrival, so it sees every change committed before any of them was made. A request that arrives
 * while a read is out waits for the next one, which starts when that read ends and answers every
 * request that waited for it. Under load one check (or one computation) then answers a whole batch
 * of requests instead of each sending its own.
 */
export function keptDocuments<Args>(root: Kysely<Database>, compute: ComputeDocument<Args>, name: (args: Args) => string, capacity: number) {
  const kept = new Map<string, KeptDocument>();

  /** The held document if the key is still the current one, else the document computed (and held) now. */
  async function read(id: string, args: Args): Promise<string> {
    const held = kept.get(id);
    if (held) {
      const [check] = await currentKey(root, []);
      if (check?.key === held.key) return AS_OF_PREFIX + check.as_of + held.afterAsOf;
    }
    const { document, key } = await compute(root, args);
    const end = document.indexOf('"', AS_OF_PREFIX.length);
    if (document.startsWith(AS_OF_PREFIX) && end > 0) {
      kept.delete(id);
      kept.set(id, { key, afterAsOf: document.slice(end) });
      if (kept.size > capacity) kept.delete(kept.keys().next().value!);
    }
    return document;
  }

  /** Per name: the read that is out, and the one the requests that came after it wait for. */
  const out = new Map<string, { ended: Promise<void>; next?: Promise<string> }>();
  function start(id: string, args: Args): Promise<string> {
    const reading = read(id, args);
    const flight = {
      ended: reading.then(
        () => undefined,
        () => undefined,
      ),
      next: undefined as Promise<string> | undefined,
    };
    void flight.ended.then(() => {
      if (out.get(id) === flight) out.delete(id);
    });
    out.set(id, flight);
    return reading;
  }

  return (db: Kysely<Database>, args: Args): Promise<string> => {
    // In a transaction: its own snapshot, which may be older than a kept document.
    if (db !== root) return compute(db, args).then((row) => row.document);
    const id = name(args);
    const flight = out.get(id);
    if (!flight) return start(id, args);
    return (flight.next ??= flight.ended.then(() => start(id, args)));
  };
}
