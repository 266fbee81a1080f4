import type pg from 'pg';
import type { Logger } from 'pino';

export interface EventJsonFillSettings {
  /** EVENT_JSON_FILL_MS: time between two batches; 0 turns the filler off. */
  intervalMs: number;
  /** EVENT_JSON_FILL_BATCH: events rendered per batch (one transaction). */
  batch: number;
}

/**
 * Fills the cache of the events' JSON texts (migration 0016, docs/events.md "The JSON cache"), off
 * the request path: every intervalMs, one batch of the next events below the feed's horizon, in
 * feed order, rendered and stored by event_json_fill in one transaction that also moves the cache's
 * position. One filler works at a time across workers and instances (the position row's lock; the
 * others skip their turn). A failure (the database down) is logged and the next turn tries again.
 */
export class EventJsonFiller {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopping = false;
  /** Events rendered by this filler since it started. */
  rendered = 0;

  constructor(
    private readonly pool: pg.Pool,
    private readonly settings: EventJsonFillSettings,
    private readonly log: Logger,
  ) {}

  start(): void {
    if (this.settings.intervalMs > 0) this.schedule();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** One batch: how many events were rendered, or null when another filler held the position. */
  async fillOnce(): Promise<number | null> {
    const { rows } = await this.pool.query<{ n: number | null }>('SELECT event_json_fill($1) AS n', [this.settings.batch]);
    const n = rows[0]?.n ?? null;
    if (n) this.rendered += n;
    return n;
  }

  private schedule(): void {
    if (this.stopping) return;
    this.timer = setTimeout(() => {
      this.running = this.fillOnce().then(
        () => undefined,
        (err: unknown) => this.log.warn({ err }, 'event JSON cache: filling failed; trying again later'),
      );
      void this.running.then(() => this.schedule());
    }, this.settings.intervalMs);
    this.timer.unref();
  }
}
