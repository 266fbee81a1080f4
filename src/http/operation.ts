import type { Kysely } from 'kysely';
import type { operations } from '../../generated/api.js';
import type { Database } from '../db/schema.js';
import type { AppContext } from './state.js';

/** Every operationId of the spec. */
export type OperationId = keyof operations;

type Operation<K extends OperationId> = operations[K];
type PathOf<K extends OperationId> = Operation<K>['parameters'] extends { path: infer P } ? (P extends undefined ? {} : P) : {};
type QueryOf<K extends OperationId> = Operation<K>['parameters'] extends { query?: infer Q } ? NonNullable<Q> : {};
type BodyOf<K extends OperationId> = Operation<K> extends { requestBody: { content: { 'application/json': infer B } } } ? B : undefined;

/** The response body the spec declares for an operation and status. */
export type ResponseBody<K extends OperationId, S extends keyof Operation<K>['responses']> = Operation<K>['responses'][S] extends { content: { 'application/json': infer R } }
  ? R
  : never;

/** What a handler receives: the request as the spec types it, already validated and coerced. */
export interface OperationInput<K extends OperationId> {
  path: PathOf<K>;
  query: QueryOf<K>;
  body: BodyOf<K>;
  ctx: AppContext;
  /**
   * Where the handler reads and writes: the pool, or, for a request with an Idempotency-Key, the
   * transaction that also stores its response (so the effect and the record commit together).
   */
  db: Kysely<Database>;
}

export type OperationHandler<K extends OperationId> = (input: OperationInput<K>) => Promise<void>;

/**
 * A handler for every operation of the spec, keyed by operationId: an operation added to the spec
 * without its handler does not compile (src/resources/index.ts must satisfy this type).
 */
export type OperationHandlers = { [K in OperationId]: OperationHandler<K> };

/** What a resource module returns: handlers for some operations, each typed by its operationId. */
export type ResourceHandlers<K extends OperationId> = Pick<OperationHandlers, K>;
