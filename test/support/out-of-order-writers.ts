/**
 * A workload of writers whose transactions commit out of xid order, some rolling back: what the
 * feed (and the JSON cache's filler) must cope with. Records which events were committed and which
 * rolled back, for the tests to check what readers saw.
 */
import type pg from 'pg';
import type { TestApp } from './app.js';
import { eventPage, type Event } from './events.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const random = (n: number) => Math.floor(Math.random() * n);

/** The events a transaction of this client wrote so far (before it commits or rolls back). */
export async function ownEvents(client: pg.PoolClient): Promise<number[]> {
  const { rows } = await client.query<{ id: number }>('SELECT id FROM events WHERE xid = pg_current_xact_id() ORDER BY id');
  return rows.map((r) => r.id);
}

async function currentXid(client: pg.PoolClient): Promise<string> {
  const {
    rows: [x],
  } = await client.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
  return x!.xid;
}

export interface OutOfOrderWorkload {
  /** Short writers running at once, each on its own connection. */
  writers: number;
  /** Transactions each short writer runs one after the other. */
  transactions: number;
  /** A transaction makes 1 to this many calls of `write`. */
  maxStatements: number;
  /** Pause after each `write`: a random 0 to maxPauseMs - 1 ms. */
  maxPauseMs: number;
  /** One statement (or a few) of writer `writer`'s current transaction. */
  write(client: pg.PoolClient, writer: number): Promise<void>;
  /** What the long transaction writes before it waits to commit last. */
  writeLong(client: pg.PoolClient): Promise<void>;
  /**
   * Writers that touch each other's rows collide (a deadlock, a serialization failure): with this
   * set, that transaction counts as rolled back (its events are not recorded) and the writer goes on.
   */
  carryOnAfterCollision: boolean;
}

export class OutOfOrderWriters {
  readonly committed = new Set<number>();
  readonly rolledBack = new Set<number>();
  /** The xids of the committed transactions, in the order they committed. */
  readonly commitOrder: string[] = [];
  /** True until every writer has finished (readers and fillers may stop once it is false and they caught up). */
  writing = true;

  constructor(
    private readonly pool: pg.Pool,
    private readonly workload: OutOfOrderWorkload,
  ) {}

  /** Runs the long writer and the short ones to the end. */
  async run(): Promise<void> {
    const long = this.longWriter();
    // The long transaction has its xid before the short writers start.
    await sleep(20);
    await Promise.all(Array.from({ length: this.workload.writers }, (_, w) => this.writer(w)));
    await long;
    this.writing = false;
  }

  /** How many commits came after a transaction with a higher xid had committed. */
  inversions(): number {
    return this.commitOrder.filter((xid, i) => this.commitOrder.slice(0, i).some((earlier) => BigInt(earlier) > BigInt(xid))).length;
  }

  /** Transactions of random length; about one in four rolls back. */
  private async writer(w: number): Promise<void> {
    const { transactions, maxStatements, maxPauseMs, write, carryOnAfterCollision } = this.workload;
    const client = await this.pool.connect();
    try {
      for (let round = 0; round < transactions; round++) {
        try {
          await client.query('BEGIN');
          for (let s = 1 + random(maxStatements); s > 0; s--) {
            await write(client, w);
            await sleep(random(maxPauseMs));
          }
          const own = await ownEvents(client);
          const xid = await currentXid(client);
          if (random(4) === 0) {
            await client.query('ROLLBACK');
            own.forEach((id) => this.rolledBack.add(id));
          } else {
            await client.query('COMMIT');
            own.forEach((id) => this.committed.add(id));
            this.commitOrder.push(xid);
          }
        } catch (err) {
          await client.query('ROLLBACK').catch(() => {});
          if (!carryOnAfterCollision || !/deadlock|could not serialize/.test(String(err))) throw err;
        }
      }
    } finally {
      client.release();
    }
  }

  /** Starts first and commits last, so that some commits surely come out of xid order. */
  private async longWriter(): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await this.workload.writeLong(client);
      const own = await ownEvents(client);
      const xid = await currentXid(client);
      await sleep(400);
      await client.query('COMMIT');
      own.forEach((id) => this.committed.add(id));
      this.commitOrder.push(xid);
    } finally {
      client.release();
    }
  }
}

/**
 * Follows the feed from `cursor` in pages of 7 while the writers run, until they have finished and
 * every committed event has come: the events in the order read. Small pages: many cursors to get wrong.
 */
export async function followFeedWhileWriting(app: TestApp, cursor: string, writers: OutOfOrderWriters): Promise<Event[]> {
  const seen: Event[] = [];
  const seenIds = new Set<number>();
  const deadline = Date.now() + 90_000;
  for (;;) {
    const page = await eventPage(app, { cursor, limit: 7 });
    seen.push(...page.data);
    for (const e of page.data) seenIds.add(e.id);
    cursor = page.next_cursor;
    if (page.data.length === 0) {
      if (!writers.writing && [...writers.committed].every((id) => seenIds.has(id))) return seen;
      if (Date.now() > deadline) throw new Error('the reader did not see every committed event in time');
      await sleep(5);
    }
  }
}
