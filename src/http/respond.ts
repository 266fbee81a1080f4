import { createHash } from 'node:crypto';
import type Koa from 'koa';
import type { CursorCodec, CursorValue } from './cursor.js';
import { ApiError } from './problem.js';

/** A strong ETag: a hash of the representation, so it changes exactly when the object does. */
export function etagOf(representation: unknown): string {
  return `"${createHash('sha256').update(JSON.stringify(representation)).digest('base64url').slice(0, 27)}"`;
}

/** Sends one object with its ETag (and Location for a 201); a matching If-None-Match on GET is a 304. */
export function sendObject(ctx: Koa.Context, status: 200 | 201, representation: object, location?: string): void {
  const etag = etagOf(representation);
  ctx.set('ETag', etag);
  if (location) ctx.set('Location', location);
  if (ctx.method === 'GET' && matchesAny(ctx.get('If-None-Match'), etag)) {
    ctx.status = 304;
    return;
  }
  ctx.status = status;
  ctx.body = representation;
}

function matchesAny(header: string, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === '*') return true;
  return header.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag);
}

/** Whether the request made its change conditional (If-Match present). */
export const hasIfMatch = (ctx: Koa.Context): boolean => ctx.get('If-Match') !== '';

/** 412 unless If-Match is absent or names the current representation (or `*`). */
export function checkIfMatch(ctx: Koa.Context, current: object): void {
  const header = ctx.get('If-Match');
  if (!header) return;
  // If-Match uses strong comparison: a weak tag never matches.
  const tags = header.split(',').map((t) => t.trim());
  if (tags.includes('*') || tags.includes(etagOf(current))) return;
  throw new ApiError(412, 'If-Match does not match the current ETag: the object changed since it was read; fetch it again');
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
  ctx: Koa.Context,
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
  ctx.status = 200;
  ctx.body = { data: shown.map(toItem), next_cursor: nextCursor };
}
