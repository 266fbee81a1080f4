import type Koa from 'koa';
import type { Logger } from 'pino';

/** What the request's middleware learn about it, typed once: Koa's ctx.state for this service. */
export interface RequestState {
  /** The client's X-Request-Id when sane, else a new UUID; in every log line and problem. */
  requestId: string;
  /** The service's logger bound to this request's id. */
  log: Logger;
  /** The caller's non-secret name (a digest prefix of its API key), once the key is verified. */
  client?: string;
}

export type AppContext = Koa.ParameterizedContext<RequestState>;
export type AppMiddleware = Koa.Middleware<RequestState>;
