import type pg from 'pg';
import { RateLimiterPostgres, RateLimiterRes } from 'rate-limiter-flexible';
import { ApiError } from './problem.js';
import type { AppMiddleware } from './state.js';

export interface RateLimitOptions {
  /** Requests per API key per minute; 0 turns rate limiting off. */
  perMinute: number;
  /** The fixed window's length; each window allows perMinute * windowSeconds / 60 requests. */
  windowSeconds: number;
}

/** The table of db/migrations/0008_rate_limits.sql: one row per API key and window. */
const TABLE = 'rate_limits';

/** The quota of one window, checked at start-up: a whole number of requests, at least one. */
export function quotaPerWindow({ perMinute, windowSeconds }: RateLimitOptions): number {
  if (windowSeconds < 1) throw new Error(`RATE_LIMIT_WINDOW_SECONDS must be at least 1, got ${windowSeconds}`);
  const quota = (perMinute * windowSeconds) / 60;
  if (!Number.isInteger(quota) || quota < 1) {
    throw new Error(
      `RATE_LIMIT_PER_MINUTE × RATE_LIMIT_WINDOW_SECONDS / 60 is the number of requests a window allows and must be a whole number ≥ 1; ` +
        `${perMinute} × ${windowSeconds} / 60 = ${quota}`,
    );
  }
  return quota;
}

/**
 * Rate limiting per API key, shared by every process and instance on the database:
 * rate-limiter-flexible's RateLimiterPostgres, a fixed window per key kept in one row that each
 * request updates with a single atomic upsert (INSERT ... ON CONFLICT DO UPDATE ... RETURNING), on
 * our pool, as a statement prepared once per connection. Its table is created by our migration,
 * never by the library at run time. Once a key is over its quota, this process refuses it from
 * memory until the window ends, so a client hammering past its limit costs no database work.
 *
 * Every answer to an authenticated /api request carries the IETF draft's headers (the contract):
 * `RateLimit-Policy: "default";q=<quota>;w=<window seconds>` and
 * `RateLimit: "default";r=<remaining>;t=<seconds until the window resets>`; past the quota a 429
 * problem with Retry-After. Runs after the API key check: a request without a valid key costs no
 * database work and has no quota to report. Off (no headers) when perMinute is 0.
 */
export function rateLimit(pool: pg.Pool, options: RateLimitOptions): AppMiddleware | undefined {
  if (options.perMinute === 0) return undefined;
  const quota = quotaPerWindow(options);
  const limiter = new RateLimiterPostgres({
    storeClient: pool,
    storeType: 'pool',
    tableName: TABLE,
    tableCreated: true,
    keyPrefix: 'api',
    points: quota,
    duration: options.windowSeconds,
    inMemoryBlockOnConsumed: quota + 1,
  });
  const policy = `"default";q=${quota};w=${options.windowSeconds}`;
  const secondsLeft = (res: RateLimiterRes) => Math.max(1, Math.ceil(res.msBeforeNext / 1000));
  const current = (res: RateLimiterRes) => `"default";r=${res.remainingPoints};t=${secondsLeft(res)}`;

  return async (ctx, next) => {
    const client = ctx.state.client;
    if (client === undefined) return next();
    let res: RateLimiterRes;
    try {
      res = await limiter.consume(client);
    } catch (err) {
      // A RateLimiterRes is the refusal; anything else is the store failing (a 503 when the
      // database is unavailable, like any query of the request would be).
      if (!(err instanceof RateLimiterRes)) throw err;
      throw new ApiError(429, `this API key sent more than ${quota} requests in ${options.windowSeconds} s; retry after Retry-After seconds`, undefined, {
        'RateLimit-Policy': policy,
        RateLimit: current(err),
        'Retry-After': String(secondsLeft(err)),
      });
    }
    ctx.set('RateLimit-Policy', policy);
    ctx.set('RateLimit', current(res));
    await next();
  };
}
