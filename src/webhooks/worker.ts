/**
 * The delivery worker, one per service process (started and stopped by startService). The queue is
 * PostgreSQL itself (db/migrations/0009_webhooks.sql); docs/webhooks.md has the design and why it
 * never loses or reorders an event:
 *
 * - An endpoint is served by one process at a time, the holder of its lease (claimed with
 *   FOR UPDATE SKIP LOCKED, committed at once, renewed by every write, checked by every write).
 * - Its next event is read from the feed after its cursor, below the horizon, by the very query of
 *   GET /api/events (eventPageQuery), and becomes its one pending delivery in the transaction that
 *   moves the cursor past it. The next one is read only when that delivery succeeded or was given up.
 * - Attempts run off the request path, at most `concurrency` at once per process, each bounded by
 *   the timeout; no database connection or transaction is held while a receiver answers.
 */
import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Database } from '../db/schema.js';
import { eventPageQuery, toEvent } from '../resources/events.js';
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

/** An endpoint being served by this process under its lease. */
interface Serving {
  lease: Lease;
  endpoint: { url: string; secret: string; event_types: string[] };
  /** Its place in the feed, as this process last read or wrote it. */
  cursor: FeedPosition;
  /** Its next events, read ahead in feed order, each with its body. */
  ahead: { xid: string; id: number; type: string; payload: string }[];
  /** The horizon of the last read when that read was complete: the place to move to once `ahead` is used up. */
  horizon?: FeedPosition;
}

/** Events of an endpoint's types read at once (deliveries are still made one after the other). */
const READ_AHEAD = 100;

/**
 * Steps one claim may take before the endpoint is released: a busy endpoint then queues behind the
 * others with work (least recently served first), so none starves while `concurrency` slots are full.
 */
const STEPS_PER_CLAIM = 50;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class WebhookWorker {
  private readonly sender: WebhookSender;
  /** A lease outlives any attempt: twice the timeout, plus time to record it. */
  private readonly leaseMs: number;
  private readonly serving = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;

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
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private async tick(): Promise<void> {
    let delay = this.settings.pollMs;
    try {
      const free = this.settings.concurrency - this.serving.size;
      if (free > 0) {
        for (const lease of await this.claim(free)) {
          const served: Promise<void> = this.serve(lease).finally(() => this.serving.delete(served));
          this.serving.add(served);
        }
      }
    } catch (err) {
      // The database is away (restart, outage): nothing is lost, the queue is in it; look again soon.
      this.log.warn({ err }, 'webhooks: looking for work failed');
      delay = Math.max(delay, 1_000);
    }
    this.schedule(delay);
  }

  /**
   * Leases up to `limit` enabled endpoints that have work: a due attempt, or no pending delivery and
   * events after their cursor below the horizon. One statement, committed at once (no transaction
   * is held while delivering); SKIP LOCKED and the lease check on the locked row make it exclusive.
   */
  private async claim(limit: number): Promise<Lease[]> {
    const { rows } = await sql<{ id: number; lease_token: string }>`
      UPDATE webhook_endpoints e
      SET lease_token = gen_random_uuid(), lease_until = now() + ${this.leaseMs} * interval '1 millisecond'
      FROM (
        SELECT w.id FROM webhook_endpoints w
        WHERE w.enabled AND (w.lease_token IS NULL OR w.lease_until < now())
          AND (EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.next_attempt_at <= now())
               OR (NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.status = 'pending')
                   AND EXISTS (SELECT 1 FROM events v WHERE (v.xid, v.id) > (w.cursor_xid, w.cursor_id)
                                                      AND v.xid < pg_snapshot_xmin(pg_current_snapshot()))))
        ORDER BY w.lease_until NULLS FIRST, w.id
        LIMIT ${limit}
        FOR UPDATE SKIP LOCKED
      ) c
      WHERE e.id = c.id
      RETURNING e.id, e.lease_token::text AS lease_token`.execute(this.db);
    return rows.map((row) => ({ endpointId: row.id, token: row.lease_token }));
  }

  /** Serves one leased endpoint until it has nothing due, then releases it. */
  private async serve(lease: Lease): Promise<void> {
    try {
      const endpoint = await this.db
        .selectFrom('webhook_endpoints')
        .select(['url', 'secret', 'enabled', 'event_types', 'cursor_xid', 'cursor_id'])
        .where('id', '=', lease.endpointId)
        .where('lease_token', '=', lease.token)
        .executeTakeFirst();
      if (!endpoint?.enabled) return; // deleted, disabled, or the lease was lost
      const serving: Serving = { lease, endpoint, cursor: { xid: endpoint.cursor_xid, id: endpoint.cursor_id }, ahead: [] };
      for (let step = 0; step < STEPS_PER_CLAIM && !this.stopping; step++) {
        if (!(await this.step(serving))) break;
      }
    } catch (err) {
      this.log.warn({ err, endpoint: lease.endpointId }, 'webhooks: serving an endpoint failed; its lease will expire');
    } finally {
      await this.db
        .updateTable('webhook_endpoints')
        .set({ lease_token: null, lease_until: sql<Date>`now()` })
        .where('id', '=', lease.endpointId)
        .where('lease_token', '=', lease.token)
        .execute()
        .catch(() => undefined);
    }
  }

  /** One thing for the endpoint: a manual retry, or its pending delivery's next attempt. Whether to go on. */
  private async step(serving: Serving): Promise<boolean> {
    // First a manual retry of a delivery already done (succeeded or given up): one attempt, out of
    // band. Else the pending delivery, or the next event made one.
    const current = await this.db
      .selectFrom('webhook_deliveries')
      .select(['id', 'event_id', 'payload', 'status', 'attempt_count', 'first_attempt_at', 'next_attempt_at', 'retry_requested'])
      .where('endpoint_id', '=', serving.lease.endpointId)
      .where((eb) => eb.or([eb('status', '=', 'pending'), eb('retry_requested', '=', true)]))
      .orderBy(sql`status = 'pending'`)
      .orderBy('id')
      .limit(1)
      .executeTakeFirst();
    if (current && current.status !== 'pending') return this.attempt(serving, current, 'manual');
    const head = current ?? (await this.nextDelivery(serving));
    if (!head?.next_attempt_at || head.next_attempt_at.getTime() > Date.now()) return false;
    return this.attempt(serving, head, head.retry_requested ? 'manual' : 'scheduled');
  }

  /**
   * The endpoint's next event of its types becomes its pending delivery, in the one statement that
   * moves its place in the feed past it (and only if its place is still where this process read
   * from). Events are read ahead a page at a time, in feed order after its place and below the
   * horizon, with the query of GET /api/events. When a complete page is used up, the place moves to
   * that page's horizon: every event below it has been seen.
   */
  private async nextDelivery(serving: Serving): Promise<DueDelivery | undefined> {
    const { lease } = serving;
    if (serving.ahead.length === 0) {
      if (serving.horizon) {
        const horizon = serving.horizon;
        serving.horizon = undefined;
        await this.moveCursor(serving, horizon);
        return undefined;
      }
      const types = serving.endpoint.event_types as NonNullable<Parameters<typeof eventPageQuery>[1]['type']>;
      const rows = await eventPageQuery(this.db, { type: types }, serving.cursor, READ_AHEAD).execute();
      const events = rows.filter((row): row is typeof row & Parameters<typeof toEvent>[0] => row.id !== null);
      // Exactly what GET /api/events/{id} answers (sendObject writes JSON.stringify of it).
      serving.ahead = events.map((event) => ({ xid: event.xid, id: event.id, type: event.type, payload: JSON.stringify(toEvent(event)) }));
      if (events.length <= READ_AHEAD) serving.horizon = { xid: rows[0]!.horizon, id: 0 };
      if (serving.ahead.length === 0) return this.nextDelivery(serving);
    }
    const event = serving.ahead.shift()!;
    const { rows } = await sql<DueDelivery>`
      WITH moved AS (
        UPDATE webhook_endpoints
        SET cursor_xid = ${event.xid}::xid8, cursor_id = ${event.id}, lease_until = now() + ${this.leaseMs} * interval '1 millisecond'
        WHERE id = ${lease.endpointId} AND lease_token = ${lease.token}::uuid AND enabled
          AND cursor_xid = ${serving.cursor.xid}::xid8 AND cursor_id = ${serving.cursor.id}
        RETURNING id
      )
      INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, payload, next_attempt_at)
      SELECT id, ${event.id}, ${event.type}, ${event.payload}, now() FROM moved
      RETURNING id, event_id, payload, status, attempt_count, first_attempt_at, next_attempt_at, retry_requested`.execute(this.db);
    // The lease was lost, the endpoint disabled or deleted: stop; the next claim reads its place again.
    if (rows.length !== 1) return undefined;
    serving.cursor = { xid: event.xid, id: event.id };
    return rows[0];
  }

  /** Moves the endpoint's place forward to `position` (the horizon of a complete read). */
  private async moveCursor(serving: Serving, position: FeedPosition): Promise<void> {
    const { lease } = serving;
    const moved = await this.db
      .updateTable('webhook_endpoints')
      .set({ cursor_xid: position.xid, cursor_id: position.id })
      .set(sql`lease_until`, sql`now() + ${this.leaseMs} * interval '1 millisecond'`)
      .where('id', '=', lease.endpointId)
      .where('lease_token', '=', lease.token)
      .where(sql<boolean>`(cursor_xid, cursor_id) = (${serving.cursor.xid}::xid8, ${serving.cursor.id}::bigint)`)
      .where(sql<boolean>`(cursor_xid, cursor_id) < (${position.xid}::xid8, ${position.id}::bigint)`)
      .executeTakeFirst();
    if (moved.numUpdatedRows === 1n) serving.cursor = position;
  }

  /** Sends one attempt and records it; whether the endpoint may go on at once. */
  private async attempt(serving: Serving, delivery: DueDelivery, trigger: 'scheduled' | 'manual'): Promise<boolean> {
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
    await this.record(lease, delivery, { number, trigger, attemptedAt, result, status, retryInMs });
    if (!result.succeeded) {
      this.log.info({ endpoint: lease.endpointId, event: delivery.event_id, attempt: number, status: result.statusCode, error: result.error, retryInMs }, 'webhook attempt failed');
    }
    return result.succeeded || status === 'failed' || trigger === 'manual';
  }

  /**
   * Records an attempt and the delivery's new state, renewing the lease, in one statement that
   * does nothing unless this process still holds the lease. While the database is away it is
   * tried again until the lease would run out (then the attempt is made again: at least once).
   */
  private async record(
    lease: Lease,
    delivery: DueDelivery,
    outcome: { number: number; trigger: 'scheduled' | 'manual'; attemptedAt: Date; result: AttemptResult; status: WebhookDeliveryStatus; retryInMs: number | null },
  ): Promise<void> {
    const { number, trigger, attemptedAt, result, status, retryInMs } = outcome;
    const statement = sql<{ attempt: number }>`
      WITH lease AS (
        UPDATE webhook_endpoints SET lease_until = now() + ${this.leaseMs} * interval '1 millisecond'
        WHERE id = ${lease.endpointId} AND lease_token = ${lease.token}::uuid
        RETURNING id
      ), delivery AS (
        UPDATE webhook_deliveries
        SET attempt_count = ${number}, status = ${status}, retry_requested = false,
            first_attempt_at = coalesce(first_attempt_at, ${attemptedAt}::timestamptz),
            next_attempt_at = CASE WHEN ${retryInMs}::bigint IS NULL THEN NULL ELSE now() + ${retryInMs}::bigint * interval '1 millisecond' END
        WHERE id = ${delivery.id} AND attempt_count = ${number - 1} AND endpoint_id IN (SELECT id FROM lease)
        RETURNING id
      )
      INSERT INTO webhook_attempts (delivery_id, attempt, trigger, attempted_at, duration_ms, status_code, error)
      SELECT id, ${number}, ${trigger}, ${attemptedAt}::timestamptz, ${result.durationMs}, ${result.statusCode}, ${result.error} FROM delivery
      RETURNING attempt`;
    const deadline = Date.now() + this.leaseMs - this.settings.timeoutMs;
    for (let wait = 100; ; wait = Math.min(wait * 2, 2_000)) {
      try {
        const { rows } = await statement.execute(this.db);
        if (rows.length !== 1) throw new Error('lease lost or endpoint deleted: the attempt is not recorded');
        return;
      } catch (err) {
        if ((err as Error).message.startsWith('lease lost') || Date.now() + wait > deadline) throw err;
        await sleep(wait);
      }
    }
  }
}
