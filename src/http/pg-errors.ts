import { DatabaseUnavailableError } from '../db/unavailable.js';
import { ConflictError, InvalidInputError, NotFoundError, StaleVersionError } from '../errors.js';
import { ApiError, badRequest, conflict, unavailable, type FieldError } from './problem.js';

/** The fields of a pg DatabaseError we read; pg sets them from the server's error report. */
interface PgError {
  code?: string;
  constraint?: string;
  table?: string;
  column?: string;
  detail?: string;
  severity?: string;
  message: string;
}

/** A report from the server carries a five-character SQLSTATE; socket errors carry ECONNREFUSED and the like. */
const isPgError = (err: unknown): err is PgError => typeof err === 'object' && err !== null && /^[0-9A-Z]{5}$/.test(String((err as PgError).code));

/** What each named constraint means to a client, where the generic reading is not enough. */
const constraintMeanings: Record<string, { status: 400 | 409; pointer: string; message: string }> = {
  users_email_key: { status: 409, pointer: '/email', message: 'is already used by another user (ignoring case)' },
  features_name_key: { status: 409, pointer: '/name', message: 'is already used by another feature (ignoring case)' },
  subscription_features_pkey: { status: 409, pointer: '/feature_id', message: 'is already attached to this subscription' },
  subscriptions_end_date_check: { status: 400, pointer: '/end_date', message: 'must be on or after start_date' },
};

/** 'Key (user_id)=(42) is not present in table "users".' -> ['user_id', '42'] */
function keyOf(detail: string | undefined): [string, string] | undefined {
  const match = /^Key \(([^)]*)\)=\((.*)\)/.exec(detail ?? '');
  return match ? [match[1]!, match[2]!] : undefined;
}

/** The column a `<table>_<column>_check` or `<table>_<column>_fkey` constraint is about. */
function columnOf(err: PgError, suffix: string): string | undefined {
  const name = err.constraint ?? '';
  const prefix = `${err.table ?? ''}_`;
  if (!name.startsWith(prefix) || !name.endsWith(suffix)) return undefined;
  return name.slice(prefix.length, -suffix.length);
}

/**
 * Maps a PostgreSQL error to the problem the client should see, or returns undefined when it is
 * not the client's doing (the caller then answers 500 and logs it). The one place where
 * unique (23505), foreign-key (23503) and check (23514) violations are translated.
 */
export function problemFromPgError(err: unknown): ApiError | undefined {
  if (err instanceof DatabaseUnavailableError) return problemFromPgError(err.reason) ?? unavailable('the database is unavailable; retry shortly');
  if (isPgError(err)) {
    const code = err.code!;
    const known = err.constraint ? constraintMeanings[err.constraint] : undefined;
    if (known) {
      const error: FieldError = { pointer: known.pointer, message: known.message };
      return known.status === 409 ? conflict(`${known.pointer.slice(1)} ${known.message}`, [error]) : badRequest(`${known.pointer.slice(1)} ${known.message}`, [error]);
    }
    if (code === '23505') return conflict(`a unique value is already taken${err.detail ? `: ${err.detail}` : ''}`);
    if (code === '23503') {
      const key = keyOf(err.detail);
      if (err.message.startsWith('update or delete')) {
        return conflict(`it is still referenced from ${err.table ?? 'another table'}; remove those references first`);
      }
      const column = key?.[0] ?? columnOf(err, '_fkey') ?? 'reference';
      const value = key?.[1] ?? 'the given id';
      return badRequest(`${column} ${value} does not exist`, [{ pointer: `/${column}`, message: `refers to ${value}, which does not exist` }]);
    }
    if (code === '23514' || code === '23502') {
      const column = err.column ?? columnOf(err, '_check');
      return badRequest(`a value breaks the rule ${err.constraint ?? 'NOT NULL'}`, column ? [{ pointer: `/${column}`, message: 'is not allowed' }] : undefined);
    }
    // Class 22: data exceptions (out-of-range numbers or dates, NUL bytes in text): bad input.
    if (code.startsWith('22')) return badRequest(`a value cannot be stored: ${err.message}`);
    // Serialization failures and deadlocks: safe to retry.
    if (code === '40001' || code === '40P01') return unavailable('the change collided with a concurrent one; retry');
    if (code === '57014') return unavailable('the query ran longer than the statement timeout; retry shortly, or ask for less');
    // Shutdown, connection failures, too many connections, and any FATAL error
    // (the server ended or refused the session, e.g. a database not accepting connections, 55000).
    if (code.startsWith('57P') || code.startsWith('08') || code === '53300' || err.severity === 'FATAL' || err.severity === 'PANIC') {
      return unavailable('the database is unavailable or overloaded; retry shortly');
    }
    return undefined;
  }
  // Errors from the pool or the socket, before PostgreSQL said anything.
  const message = err instanceof Error ? err.message : '';
  const sysCode = (err as { code?: unknown } | null)?.code;
  if (
    /timeout exceeded when trying to connect|Connection terminated|connect ECONNREFUSED|Client has encountered a connection error|the database system is/i.test(message) ||
    sysCode === 'ECONNREFUSED' ||
    sysCode === 'ECONNRESET' ||
    sysCode === 'EPIPE'
  ) {
    // pg-pool's own words when PG_CONNECTION_TIMEOUT_MS passed with every connection busy (a
    // handler's query, or the rate limiter's, which uses the pool directly).
    if (/timeout exceeded when trying to connect/i.test(message)) return unavailable('no database connection became free in time: the service is at capacity; retry shortly');
    return unavailable('the database is unavailable; retry shortly');
  }
  return undefined;
}

/**
 * The one place where any error becomes the problem a client sees: domain errors, PostgreSQL's,
 * the body parser's. Undefined for what must be logged and answered as a 500.
 */
export function toApiError(err: unknown): ApiError | undefined {
  if (err instanceof ApiError) return err;
  // Domain errors (src/errors.ts), which know nothing of HTTP.
  if (err instanceof InvalidInputError) return badRequest(err.message, err.errors);
  if (err instanceof NotFoundError) return new ApiError(404, err.message);
  if (err instanceof ConflictError) return conflict(err.message, err.errors);
  if (err instanceof StaleVersionError) return new ApiError(412, err.message);
  const pg = problemFromPgError(err);
  if (pg) return pg;
  // Errors from koa-bodyparser / raw-body carry a 4xx status and a safe message.
  const status = (err as { status?: unknown; expose?: unknown } | null)?.status;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    const detail = status === 413 ? 'the body is larger than the limit' : status === 400 ? `the body is not valid JSON: ${(err as Error).message}` : (err as Error).message;
    return new ApiError(status, detail);
  }
  return undefined;
}
