import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { isApiPath } from './auth.js';
import { toApiError } from './pg-errors.js';
import { ApiError } from './problem.js';
import type { AppMiddleware, RequestState } from './state.js';

const SANE_REQUEST_ID = /^[\w.:-]{1,100}$/;

/** ctx.state: the request's own logger is made only when something logs through it (most requests log one line, through the service's). */
class RequestStateOf implements RequestState {
  client?: string;
  private requestLog: Logger | undefined;

  constructor(
    readonly requestId: string,
    private readonly serviceLog: Logger,
  ) {}

  get log(): Logger {
    return (this.requestLog ??= this.serviceLog.child({ requestId: this.requestId }));
  }
}

/**
 * The first middleware: gives the request its id and logger, sets the headers every answer has,
 * and is the one place where every error leaves as an RFC 9457 problem (unexpected ones are
 * logged with the request id; the client sees no internals). One log line per request.
 */
export function requestContext(log: Logger): AppMiddleware {
  return async (ctx, next) => {
    const incoming = ctx.get('X-Request-Id');
    const requestId = SANE_REQUEST_ID.test(incoming) ? incoming : randomUUID();
    ctx.state = new RequestStateOf(requestId, log);
    // Straight to node's response: Koa's ctx.set builds arrays per call to accept lists and objects.
    ctx.res.setHeader('X-Request-Id', requestId);
    ctx.res.setHeader('X-Content-Type-Options', 'nosniff');
    if (isApiPath(ctx.path)) ctx.res.setHeader('Cache-Control', 'no-store');
    const started = process.hrtime.bigint();
    try {
      await next();
      if (ctx.body === undefined || ctx.body === null) {
        // The router's own answers (404; 405 and 501 with Allow) become problems too.
        if (ctx.status === 404) throw new ApiError(404, `no resource at ${ctx.path}`);
        if (ctx.status === 405 || ctx.status === 501) {
          const allow = ctx.response.get('Allow');
          throw new ApiError(ctx.status, `${ctx.method} is not allowed on ${ctx.path}`, undefined, allow ? { Allow: allow } : {});
        }
      }
    } catch (err) {
      const problem = toApiError(err);
      if (!problem) ctx.state.log.error({ err, method: ctx.method, path: ctx.path }, 'unexpected error');
      const apiError = problem ?? new ApiError(500, 'an unexpected error occurred; it has been logged with the request id');
      ctx.status = apiError.status;
      for (const [name, value] of Object.entries(apiError.headers)) ctx.set(name, value);
      ctx.body = apiError.toProblem(requestId);
      // Koa resets the type when an object is assigned to the body: set it after.
      ctx.type = 'application/problem+json';
    } finally {
      log.info({ requestId, method: ctx.method, path: ctx.path, status: ctx.status, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'request');
    }
  };
}
