import type Koa from 'koa';
import type { operations } from '../../generated/api.js';

/** Every operationId of the spec. */
export type OperationId = keyof operations;

type Operation<K extends OperationId> = operations[K];
type PathOf<K extends OperationId> = Operation<K>['parameters'] extends { path: infer P } ? (P extends undefined ? {} : P) : {};
type QueryOf<K extends OperationId> = Operation<K>['parameters'] extends { query?: infer Q } ? NonNullable<Q> : {};
type BodyOf<K extends OperationId> = Operation<K> extends { requestBody: { content: { 'application/json': infer B } } } ? B : undefined;

/** The response body the spec declares for an operation and status. */
export type ResponseBody<K extends OperationId, S extends keyof Operation<K>['responses']> =
  Operation<K>['responses'][S] extends { content: { 'application/json': infer R } } ? R : never;

/** What a handler receives: the request as the spec types it, already validated and coerced. */
export interface OperationInput<K extends OperationId> {
  path: PathOf<K>;
  query: QueryOf<K>;
  body: BodyOf<K>;
  ctx: Koa.Context;
}

export type OperationHandler<K extends OperationId> = (input: OperationInput<K>) => Promise<void>;

/** A resource module's handlers, keyed by operationId so the compiler checks names and types. */
export type OperationHandlers = { [K in OperationId]?: OperationHandler<K> };
