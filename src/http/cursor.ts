import { createHmac, timingSafeEqual } from 'node:crypto';
import { badRequest } from './problem.js';

export type CursorValue = string | number;

/**
 * Opaque, tamper-evident keyset cursors: base64url(JSON of the sort name and the last row's keys)
 * plus an HMAC of it. The key lives in the database, so cursors survive restarts and are valid
 * across instances.
 */
export class CursorCodec {
  constructor(private readonly key: string) {}

  private sign(payload: string): string {
    return createHmac('sha256', this.key).update(payload).digest('base64url').slice(0, 22);
  }

  encode(sort: string, keys: CursorValue[]): string {
    const payload = Buffer.from(JSON.stringify([sort, ...keys])).toString('base64url');
    return `${payload}.${this.sign(payload)}`;
  }

  /** The keys of a cursor made for `sort` with `arity` keys; anything else is a 400. */
  decode(cursor: string, sort: string, arity: number): CursorValue[] {
    const invalid = () => badRequest('cursor is not a cursor this list issued (it may be altered, or come from another sort)', [{ parameter: 'cursor', message: 'is invalid' }]);
    const [payload, signature, extra] = cursor.split('.');
    if (!payload || !signature || extra !== undefined) throw invalid();
    const expected = Buffer.from(this.sign(payload));
    const given = Buffer.from(signature);
    if (expected.length !== given.length || !timingSafeEqual(expected, given)) throw invalid();
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    } catch {
      throw invalid();
    }
    if (!Array.isArray(parsed) || parsed[0] !== sort || parsed.length !== arity + 1) throw invalid();
    const keys = parsed.slice(1);
    if (!keys.every((k) => typeof k === 'string' || typeof k === 'number')) throw invalid();
    return keys as CursorValue[];
  }
}
