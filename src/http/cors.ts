import cors from '@koa/cors';
import { isApiPath } from './auth.js';
import type { AppMiddleware } from './state.js';

/** What a browser may send: the key, JSON bodies, the retry and precondition headers, a request id. */
const ALLOWED_REQUEST_HEADERS = ['Authorization', 'Content-Type', 'Idempotency-Key', 'If-Match', 'X-Request-Id'];
/** What a browser client needs to read besides the CORS-safelisted headers. */
export const EXPOSED_HEADERS = ['ETag', 'Link', 'Location', 'RateLimit', 'RateLimit-Policy', 'Retry-After', 'X-Request-Id', 'Idempotent-Replayed', 'WWW-Authenticate'];
/** How long a browser may cache a preflight's answer. */
const PREFLIGHT_MAX_AGE_SECONDS = 600;

/** The paths a page on another origin may call: the API and the spec. Not /docs, /metrics or health. */
const isCorsPath = (path: string) => isApiPath(path) || path === '/openapi.json' || path === '/openapi.yaml';

/**
 * CORS (@koa/cors) for the origins of CORS_ORIGINS, exactly as listed (scheme, host and port):
 * a request from one of them gets Access-Control-Allow-Origin naming it (with Vary: Origin);
 * from any other origin, no CORS header at all, so the browser withholds the answer. A preflight
 * is answered here, before the API key is checked (a browser never sends credentials on one).
 * No credentials mode: the API key travels in Authorization, not in cookies. Undefined (no
 * middleware, no headers) when no origin is configured.
 */
export function corsForOrigins(origins: string[]): AppMiddleware | undefined {
  if (origins.length === 0) return undefined;
  const allowed = new Set(origins.map((origin) => origin.replace(/\/+$/, '')));
  const middleware = cors({
    origin: (ctx) => {
      const origin = ctx.get('Origin');
      return allowed.has(origin) ? origin : '';
    },
    allowMethods: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
    allowHeaders: ALLOWED_REQUEST_HEADERS,
    exposeHeaders: EXPOSED_HEADERS,
    maxAge: PREFLIGHT_MAX_AGE_SECONDS,
    credentials: false,
  }) as unknown as AppMiddleware;
  return (ctx, next) => (isCorsPath(ctx.path) ? middleware(ctx, next) : next());
}
