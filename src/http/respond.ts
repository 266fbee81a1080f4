import { hash } from 'node:crypto';
import { StaleVersionError } from '../errors.js';
import type { CursorCodec, CursorValue } from './cursor.js';
import type { AppContext } from './state.js';

// crypto.hash: the one-shot digest, without a Hash object per response.
const etagOfJson = (json: string) => `"${hash('sha256', json, 'base64url').slice(0, 27)}"`;

/** A strong ETag: a hash of the representation, so it changes exactly when the object does. */
export function etagOf(representation: unknown): string {
  return etagOfJson(JSON.stringify(representation));
}

/**
 * The body as JSON text, serialized once: the ETag, the compression threshold and the socket all
 * read this one string (an object body would be serialized again by each).
 */
function sendJson(ctx: AppContext, status: number, json: string): void {
  ctx.status = status;
  // Set before the body, so that Koa keeps it: what ctx.type = 'application/json' sets, without its
  // MIME lookup and Koa's ctx.set (which builds arrays per call to accept lists and objects).
  ctx.res.setHeader('Content-Type', 'application/json; charset=utf-8');
  ctx.body = json;
}

/** Sends one object with its ETag (and Location for a 201); a matching If-None-Match on GET or HEAD is a 304. */
export function sendObject(ctx: AppContext, status: 200 | 201, representation: object, location?: string): void {
  sendJsonText(ctx, status, JSON.stringify(representation), location);
}

/** sendObject for a representation that PostgreSQL already wrote as JSON text (sent as it is). */
export function sendJsonText(ctx: AppContext, status: 200 | 201, json: string, location?: string): void {
  const etag = etagOfJson(json);
  ctx.res.setHeader('ETag', etag);
  if (location) ctx.res.setHeader('Location', location);
  if ((ctx.method === 'GET' || ctx.method === 'HEAD') && matchesAny(ctx.get('If-None-Match'), etag)) {
    ctx.status = 304;
    return;
  }
  sendJson(ctx, status, json);
}

function matchesAny(header: string, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === '*') return true;
  return header.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag);
}

/** Whether the request made its change conditional (If-Match present). */
export const hasIfMatch = (ctx: AppContext): boolean => ctx.get('If-Match') !== '';

/** 412 unless If-Match is absent or names the current representation (or `*`). */
export function checkIfMatch(ctx: AppContext, current: object): void {
  const header = ctx.get('If-Match');
  if (!header) return;
  // If-Match uses strong comparison: a weak tag never matches.
  const tags = header.split(',').map((t) => t.trim());
  if (tags.includes('*') || tags.includes(etagOf(current))) return;
  throw new StaleVersionError();
}

/** How a keyset list is asked for: page size and where the previous page ended. */
export interface PageRequest {
  limit: number;
  /** Keys of the last row of the previous page, or undefined for the first page. */
  after: CursorValue[] | undefined;
}

export const DEFAULT_LIMIT = 50;

export function pageRequest(codec: CursorCodec, query: { limit?: number; cursor?: string }, sort: string, arity: number): PageRequest {
  return {
    limit: query.limit ?? DEFAULT_LIMIT,
    after: query.cursor === undefined ? undefined : codec.decode(query.cursor, sort, arity),
  };
}

/**
 * Sends a list page. `rows` holds up to limit + 1 rows: the extra row only says there is a next
 * page. The cursor is taken from the last row sent; the Link header repeats the request with it.
 */
export function sendPage<Row, Item>(
  ctx: AppContext,
  codec: CursorCodec,
  page: PageRequest,
  sort: string,
  rows: Row[],
  toItem: (row: Row) => Item,
  keysOf: (row: Row) => CursorValue[],
): void {
  const hasMore = rows.length > page.limit;
  const shown = hasMore ? rows.slice(0, page.limit) : rows;
  const last = shown[shown.length - 1];
  const nextCursor = hasMore && last !== undefined ? codec.encode(sort, keysOf(last)) : null;
  if (nextCursor) {
    const params = new URLSearchParams(ctx.querystring);
    params.set('cursor', nextCursor);
    ctx.set('Link', `<${ctx.path}?${params.toString()}>; rel="next"`);
  }
  sendJson(ctx, 200, JSON.stringify({ data: shown.map(toItem), next_cursor: nextCursor }));
}
