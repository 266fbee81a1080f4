/**
 * Following the feed (issue 12): the cursors of the pages of GET /api/events, collected by walking
 * the feed once as a client would (next_cursor after next_cursor), so that a side can then request
 * full pages by cursor, at random, through one connection.
 */
import { requestHeaders } from './servers.js';

export interface FeedWalk {
  /** `&cursor=...` of every full page ('' for the first page): each answers `limit` events. */
  pages: string[];
  /** Events seen, the last (partial) page's included. */
  events: number;
  seconds: number;
}

/**
 * Walks the whole feed once. A page is full when it says more follow (Link rel="next", given only
 * when the page found more than `limit`); every 50th page is parsed to check that it holds `limit`
 * events. The feed is append-only and ordered, so a cursor answers the same events every time.
 */
export async function walkFeed(url: string, limit: number): Promise<FeedWalk> {
  const started = performance.now();
  const pages: string[] = [];
  let events = 0;
  let param = '';
  for (let page = 0; ; page++) {
    const response = await fetch(`${url}/api/events?limit=${limit}${param}`, { headers: { ...requestHeaders, 'accept-encoding': 'identity' } });
    const body = await response.text();
    if (response.status !== 200) throw new Error(`GET /api/events${param ? ' by cursor' : ''}: ${response.status} ${body.slice(0, 200)}`);
    const next = /"next_cursor":"([A-Za-z0-9_.-]+)"\}$/.exec(body)?.[1];
    if (!next) throw new Error('GET /api/events: no next_cursor at the end of the page');
    const full = /rel="next"/.test(response.headers.get('link') ?? '');
    if (full && page % 50 === 0) {
      const n = (JSON.parse(body) as { data: unknown[] }).data.length;
      if (n !== limit) throw new Error(`GET /api/events?limit=${limit}: a page with a next link holds ${n} events`);
    }
    if (!full) {
      events += (JSON.parse(body) as { data: unknown[] }).data.length;
      break;
    }
    pages.push(param);
    events += limit;
    param = `&cursor=${next}`;
  }
  return { pages, events, seconds: (performance.now() - started) / 1000 };
}
