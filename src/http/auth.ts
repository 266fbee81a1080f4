import { hash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ApiError } from './problem.js';
import type { AppMiddleware } from './state.js';

const digest = (key: string) => hash('sha256', key, 'buffer') as unknown as Buffer;
const nameOf = (keyDigest: Buffer) => keyDigest.toString('hex').slice(0, 16);

/**
 * The API keys the service accepts, held only as SHA-256 digests. A presented key is hashed and
 * compared with every digest in constant time, so neither timing nor memory gives a key away.
 */
export class ApiKeys {
  private readonly digests: Buffer[];

  constructor(keys: string[]) {
    this.digests = keys.map(digest);
  }

  get size(): number {
    return this.digests.length;
  }

  /** The key from `Authorization: Bearer <key>`, or undefined. */
  static fromHeader(header: string | undefined): string | undefined {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
    return match?.[1];
  }

  verify(key: string | undefined): boolean {
    return this.identify(key) !== undefined;
  }

  /** The caller's name (see clientId) when the key is one of ours, else undefined: the key is hashed once. */
  identify(key: string | undefined): string | undefined {
    if (!key) return undefined;
    const presented = digest(key);
    let matched = false;
    for (const known of this.digests) matched = timingSafeEqual(known, presented) || matched;
    return matched ? nameOf(presented) : undefined;
  }

  /** A stable, non-secret name of the caller, for scoping idempotency keys. */
  static clientId(key: string): string {
    return nameOf(digest(key));
  }
}

/**
 * With no API_KEYS configured, one key is generated on first start and kept in
 * DATA_DIR/api-key (readable only by its owner), so `make run` prints the same key every time.
 */
export function loadOrCreateKeyFile(dataDir: string): string {
  const file = path.join(dataDir, 'api-key');
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o755 });
  const key = `sk_${randomBytes(24).toString('base64url')}`;
  fs.writeFileSync(file, `${key}\n`, { mode: 0o600 });
  return key;
}

/** The 401 of every /api request without a valid key: it says nothing about the resource. */
export const unauthorized = () =>
  new ApiError(401, 'a valid API key is required: send Authorization: Bearer <key>', undefined, {
    'WWW-Authenticate': 'Bearer realm="api"',
  });

export const isApiPath = (path: string) => path === '/api' || path.startsWith('/api/');

/**
 * The key is checked first, before the body is read or the idempotency store is touched: a caller
 * without a valid key gets a 401 whatever it sends, costs no parsing and no database work, and a
 * revoked key replays nothing. Each operation's security requirement is then checked against this
 * result (operations.ts), without hashing the key again. Sets ctx.state.client, the caller's non-secret name.
 */
export function authenticate(apiKeys: ApiKeys): AppMiddleware {
  // Not async: it hands on next()'s promise (koa-compose turns a throw into a rejection).
  return (ctx, next) => {
    if (!isApiPath(ctx.path)) return next();
    const client = apiKeys.identify(ApiKeys.fromHeader(ctx.get('Authorization')));
    if (client === undefined) throw unauthorized();
    ctx.state.client = client;
    return next();
  };
}
