/**
 * The delivery worker, one per service process (started and stopped by startService). The queue is
 * PostgreSQL itself (db/migrations/0009_webhooks.sql); docs/webhooks.md has the design and why it
 * never loses or reorders an event:
 *
 * - An endpoint is served by one process at a time, the holder of its lease (claimed with
 *   FOR UPDATE SKIP LOCKED, committed at once, renewed by every write, checked by every write).
 * - Its next event is read from the feed after its cursor, below the horizon taken in the same
 *   statement (as GET /api/events reads it), and becomes its one pending delivery in the transaction
 *   that moves the cursor past it (webhook_next_delivery, migration 0014). The next one is read only
 *   when that delivery succeeded or was given up: in the round trip that records that attempt.
 * - Attempts run off the request path, at most `concurrency` at once per process, each bounded by
 *   the timeout; no database connection or transaction is held while a receiver answers.
 */
import { CompiledQuery, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import { prepareOnEachConnection } from '../db/prepared.js';
import type { Database } from '../db/schema.js';
import { WebhookSender, type AttemptResult } from './sender.js';
import type { WebhookDeliveryStatus } from './tables.js';

export interface WebhookSettings {
  /** WEBHOOK_ALLOW_PRIVATE=1: deliver to loopback and private addresses too. */
  allowPrivate: boolean;
  /** Longest one attempt may take, name resolution to the end of the answer. */
  timeoutMs: number;
  /** The first retry's delay; each later one doubles, up to retryMaxMs (each with +-20% jitter). */
  retryBaseMs: number;
  retryMaxMs: number;
  /** How long a delivery is retried before it is given up (failed), from its first attempt. */
  retryForMs: number;
  /** Endpoints served at once by one process. */
  concurrency: number;
  /** How often the worker looks for new events and due retries. */
  pollMs: number;
}

/** The delay before the attempt after `failedAttempts` failures: base * 2^(n-1), +-20%, capped. */
export function retryDelayMs(failedAttempts: number, settings: Pick<WebhookSettings, 'retryBaseMs' | 'retryMaxMs'>, random = Math.random): number {
  const exponential = settings.retryBaseMs * 2 ** Math.min(Math.max(failedAttempts - 1, 0), 40);
  return Math.round(Math.min(settings.retryMaxMs, exponential * (0.8 + 0.4 * random())));
}

interface Lease {
  endpointId: number;
  token: string;
}

interface DueDelivery {
  id: number;
  event_id: number;
  payload: string;
  status: WebhookDeliveryStatus;
  attempt_count: number;
  first_attempt_at: Date | null;
  next_attempt_at: Date | null;
  retry_requested: boolean;
}

/** A place in the feed: after the event (xid, id); xid8 as a decimal string. */
interface FeedPosition {
  xid: string;
  id: number;
}

/** An endpoint as claimed: its lease, what a delivery needs, and its place in the feed. */
interface Claimed {
  id: number;
  lease_token: string;
  url: string;
  secret: string;
  event_types: string[];
  cursor_xid: string;
  cursor_id: number;
}

/** An endpoint being served by this process under its lease. */
interface Serving {
  lease: Lease;
  endpoint: { url: string; secret: string; event_types: string[] };
  /** Its place in the feed, as this process last read or wrote it. */
  cursor: FeedPosition;
  /** When it last had an attempt to make (Date.now()). */
  lastWorkAt: number;
}

/** What the functions of migration 0014 answer: the place in the feed now, and the delivery to attempt next (id null: none). */
type Next = { cursor_xid: string | null; cursor_id: number | null } & (({ id: number } & DueDelivery) | { [K in keyof DueDelivery]: null });

/**
 * Steps one claim may take before the endpoint is released: a busy endpoint then queues behind the
 * others with work (least recently served first), so none starves while `concurrency` slots are full.
 */
const STEPS_PER_CLAIM = 50;

/**
 * An endpoint that just had an attempt keeps its lease a little while and asks every LINGER_POLL_MS
 * whether events follow its place (one index probe, prepared), so that a steady stream of events is
 * delivered within milliseconds of its commits instead of waiting for the next claim
 * (WEBHOOK_POLL_MS). It lingers at most LINGER_MS after its last attempt, holding one of the
 * `concurrency` slots.
 */
const LINGER_MS = 500;
const LINGER_POLL_MS = 5;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A statement with a fixed text sent as a named prepared statement (parsed and planned once per
 * connection, src/db/prepared.ts), executed with each call's parameters ($1, $2, ... in order).
 */
function prepared<Row>(text: string): (db: Kysely<Database>, parameters: unknown[]) => Promise<Row[]> {
  prepareOnEachConnection(text);
  return async (db, parameters) => (await db.executeQuery<Row>(CompiledQuery.raw(text, parameters))).rows;
}

/**
 * Leases up to $2 enabled endpoints that have work: a due attempt, or no pending delivery and
 * events after their place in the feed below the horizon. One statement, committed at once (no
 * transaction is held while delivering); SKIP LOCKED and the lease check on the locked row make it
 * exclusive. Whether events wait is read from the first event after the place in the feed index
 * ((xid, id) order: if the first one is not below the horizon, none is): one index probe. (An
 * EXISTS over `(xid, id) > place AND xid < horizon` was planned as a sequential scan of events,
 * 100-150 ms at 500k when nothing waits.)
 */
const claimStatement = prepared<Claimed>(`
  UPDATE webhook_endpoints e
  SET lease_token = gen_random_uuid(), lease_until = now() + $1::bigint * interval '1 millisecond'
  FROM (
    SELECT w.id FROM webhook_endpoints w
    WHERE w.enabled AND (w.lease_token IS NULL OR w.lease_until < now())
      AND (EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.next_attempt_at <= now())
           OR (NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.status = 'pending')
               AND (SELECT v.xid FROM events v WHERE (v.xid, v.id) > (w.cursor_xid, w.cursor_id) ORDER BY v.xid, v.id LIMIT 1)
                   < pg_snapshot_xmin(pg_current_snapshot())))
    ORDER BY w.lease_until NULLS FIRST, w.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
  ) c
  WHERE e.id = c.id
  RETURNING e.id, e.lease_token::text AS lease_token, e.url, e.secret, e.event_types, e.cursor_xid::text AS cursor_xid, e.cursor_id`);

const DELIVERY_COLUMNS = 'id, event_id, payload, status, attempt_count, first_attempt_at, next_attempt_at, retry_requested';

/** The delivery to attempt next: a manual retry of a finished one first, else the pending one (index of 0014). */
const currentStatement = prepared<DueDelivery>(`
  SELECT ${DELIVERY_COLUMNS} FROM webhook_deliveries
  WHERE endpoint_id = $1 AND (status = 'pending' OR retry_requested)
  ORDER BY status = 'pending', id
  LIMIT 1`);

/** The next event of the endpoint's types made its pending delivery, or its place moved to the horizon (0014). */
const nextStatement = prepared<Next>(`
  SELECT cursor_xid::text AS cursor_xid, cursor_id, ${DELIVERY_COLUMNS}
  FROM webhook_next_delivery($1::bigint, $2::uuid, $3::bigint, $4::xid8, $5::bigint, $6::text[])`);

/** Whether events follow the place ($1, $2) below the horizon (0014). */
const eventsWaitStatement = prepared<{ waiting: boolean }>(`SELECT webhook_events_wait($1::xid8, $2::bigint) AS waiting`);

/** Releases the lease; lease_until says when the endpoint was last served. */
const releaseStatement = prepared(`UPDATE webhook_endpoints SET lease_token = NULL, lease_until = now() WHERE id = $1::bigint AND lease_token = $2::uuid`);

/** An attempt and its delivery's new state; the next event made the pending delivery if this one is done (0014). */
const recordStatement = prepared<Next>(`
  SELECT cursor_xid::text AS cursor_xid, cursor_id, ${DELIVERY_COLUMNS}
  FROM webhook_record_attempt($1::bigint, $2::uuid, $3::bigint, $4::bigint, $5::integer, $6::text, $7::timestamptz, $8::integer,
                              $9::integer, $10::text, $11::text, $12::bigint, $13::xid8, $14::bigint, $15::text[])`);

export class WebhookWorker {
  private readonly sender: WebhookSender;
  /** A lease outlives any attempt: twice the timeout, plus time to record it. */
  private readonly leaseMs: number;
  private readonly serving = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;
  /** A look is under way; `again`: look once more as soon as it ends. */
  private looking = false;
  private again = false;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly settings: WebhookSettings,
    private readonly log: Logger,
  ) {
    this.sender = new WebhookSender({ allowPrivate: settings.allowPrivate, lookupTimeoutMs: settings.timeoutMs }, settings.timeoutMs, settings.concurrency);
    this.leaseMs = 2 * settings.timeoutMs + 5_000;
  }

  start(): void {
    this.schedule(0);
  }

  /** Stops claiming, lets the attempts under way finish and be recorded, releases the leases. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    await Promise.allSettled([...this.serving]);
    this.sender.close();
  }

  private schedule(ms: number): void {
    if (this.stopping) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  /** Looks for work at once (or right after the look under way). */
  private wake(): void {
    if (this.looking) this.again = true;
    else this.schedule(0);
  }

  private async tick(): Promise<void> {
    let delay = this.settings.pollMs;
    this.looking = true;
    try {
      const free = this.settings.concurrency - this.serving.size;
      if (free > 0) {
        for (const claimed of await claimStatement(this.db, [this.leaseMs, free])) {
          const served: Promise<void> = this.serve(claimed).then(
            (busy) => {
              this.serving.delete(served);
              // Released with work left (its step budget used up): look again at once, not a poll later.
              if (busy) this.wake();
            },
            () => {
              this.serving.delete(served);
            },
          );
          this.serving.add(served);
        }
      }
    } catch (err) {
      // The database is away (restart, outage): nothing is lost, the queue is in it; look again soon.
      this.log.warn({ err }, 'webhooks: looking for work failed');
      delay = Math.max(delay, 1_000);
    }
    this.looking = false;
    if (this.again) delay = 0;
    this.again = false;
    this.schedule(delay);
  }

  /** Serves one leased endpoint until it has nothing due, then releases it. Whether it may have work left. */
  private async serve(claimed: Claimed): Promise<boolean> {
    const lease: Lease = { endpointId: claimed.id, token: claimed.lease_token };
    const serving: Serving = { lease, endpoint: claimed, cursor: { xid: claimed.cursor_xid, id: claimed.cursor_id }, lastWorkAt: 0 };
    let busy = false;
    try {
      const [first] = await currentStatement(this.db, [lease.endpointId]);
      let current: DueDelivery | undefined = first;
      let step = 0;
      for (; step < STEPS_PER_CLAIM && !this.stopping; step++) {
        if (current && current.status !== 'pending') {
          // A manual retry of a delivery already done (succeeded or given up): one attempt, out of band.
          const outcome = await this.attempt(serving, current, 'manual');
          if (!outcome.goOn) break;
          current = outcome.current;
          continue;
        }
        if (!current) {
          const next = await this.nextDelivery(serving);
          if (next === 'lost') break;
          current = next;
          if (!current) {
            if (!(await this.linger(serving))) break;
            continue;
          }
        }
        if (!current.next_attempt_at || current.next_attempt_at.getTime() > Date.now()) break;
        serving.lastWorkAt = Date.now();
        const outcome = await this.attempt(serving, current, current.retry_requested ? 'manual' : 'scheduled');
        if (!outcome.goOn) break;
        current = outcome.current;
      }
      busy = step >= STEPS_PER_CLAIM && !this.stopping;
    } catch (err) {
      this.log.warn({ err, endpoint: lease.endpointId }, 'webhooks: serving an endpoint failed; its lease will expire');
    } finally {
      await releaseStatement(this.db, [lease.endpointId, lease.token]).catch(() => undefined);
    }
    return busy;
  }

  /**
   * With nothing to deliver: whether to look again. An endpoint that had an attempt within LINGER_MS
   * keeps its lease and asks every LINGER_POLL_MS whether events follow its place below the horizon
   * (true as soon as they do); else it is released and waits for the next claim.
   */
  private async linger(serving: Serving): Promise<boolean> {
    while (!this.stopping && Date.now() - serving.lastWorkAt <= LINGER_MS) {
      await sleep(LINGER_POLL_MS);
      const [probe] = await eventsWaitStatement(this.db, [serving.cursor.xid, serving.cursor.id]);
      if (probe?.waiting) return true;
    }
    return false;
  }

  /** Takes the place in the feed and the next delivery from an answer of 0014's functions. */
  private follow(serving: Serving, next: Next | undefined): DueDelivery | undefined | 'lost' {
    // No answer, or no place: the lease was lost, the endpoint disabled or deleted, or its place moved
    // by another process; stop, the next claim reads its place again.
    if (!next || next.cursor_xid === null || next.cursor_id === null) return 'lost';
    serving.cursor = { xid: next.cursor_xid, id: next.cursor_id };
    return next.id === null ? undefined : next;
  }

  /**
   * The endpoint's next event of its types becomes its pending delivery, in the one statement that
   * reads it below the horizon and moves its place in the feed past it (and only if its place is
   * still where this process read from); with none, its place moves to the horizon.
   */
  private async nextDelivery(serving: Serving): Promise<DueDelivery | undefined | 'lost'> {
    const { lease } = serving;
    const [next] = await nextStatement(this.db, [lease.endpointId, lease.token, this.leaseMs, serving.cursor.xid, serving.cursor.id, serving.endpoint.event_types]);
    return this.follow(serving, next);
  }

  /**
   * Sends one attempt and records it; when the attempt ends the pending delivery, the endpoint's next
   * event becomes its pending delivery in the same round trip. Whether the endpoint may go on at
   * once, and the delivery to attempt next.
   */
  private async attempt(serving: Serving, delivery: DueDelivery, trigger: 'scheduled' | 'manual'): Promise<{ goOn: boolean; current: DueDelivery | undefined }> {
    const { lease, endpoint } = serving;
    const attemptedAt = new Date();
    const result = await this.sender.send({ url: endpoint.url, secret: endpoint.secret, id: `evt_${delivery.event_id}`, payload: delivery.payload });
    const number = delivery.attempt_count + 1;
    let status: WebhookDeliveryStatus = delivery.status;
    let retryInMs: number | null = null;
    if (result.succeeded) status = 'succeeded';
    else if (delivery.status === 'pending') {
      const firstAt = delivery.first_attempt_at ?? attemptedAt;
      if (attemptedAt.getTime() - firstAt.getTime() >= this.settings.retryForMs) status = 'failed';
      else retryInMs = retryDelayMs(number, this.settings);
    }
    const next = this.follow(serving, await this.record(serving, delivery, { number, trigger, attemptedAt, result, status, retryInMs }));
    if (!result.succeeded) {
      this.log.info({ endpoint: lease.endpointId, event: delivery.event_id, attempt: number, status: result.statusCode, error: result.error, retryInMs }, 'webhook attempt failed');
    }
    if (next === 'lost') return { goOn: false, current: undefined };
    return { goOn: result.succeeded || status === 'failed' || trigger === 'manual', current: next };
  }

  /**
   * Records an attempt and the delivery's new state, renewing the lease, in one statement that
   * does nothing unless this process still holds the lease (webhook_record_attempt, migration 0014,
   * which also makes the next event the pending delivery once none is). While the database is away
   * it is tried again until the lease would run out (then the attempt is made again: at least once).
   */
  private async record(
    serving: Serving,
    delivery: DueDelivery,
    outcome: { number: number; trigger: 'scheduled' | 'manual'; attemptedAt: Date; result: AttemptResult; status: WebhookDeliveryStatus; retryInMs: number | null },
  ): Promise<Next> {
    const { lease, cursor, endpoint } = serving;
    const { number, trigger, attemptedAt, result, status, retryInMs } = outcome;
    const parameters = [
      lease.endpointId,
      lease.token,
      this.leaseMs,
      delivery.id,
      number,
      trigger,
      attemptedAt,
      result.durationMs,
      result.statusCode,
      result.error,
      status,
      retryInMs,
      cursor.xid,
      cursor.id,
      endpoint.event_types,
    ];
    const deadline = Date.now() + this.leaseMs - this.settings.timeoutMs;
    for (let wait = 100; ; wait = Math.min(wait * 2, 2_000)) {
      try {
        const [row] = await recordStatement(this.db, parameters);
        if (!row) throw new Error('lease lost or endpoint deleted: the attempt is not recorded');
        return row;
      } catch (err) {
        if ((err as Error).message.startsWith('lease lost') || Date.now() + wait > deadline) throw err;
        await sleep(wait);
      }
    }
  }
}
