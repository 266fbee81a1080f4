import type Router from '@koa/router';
import type { Kysely } from 'kysely';
import bodyParser from 'koa-bodyparser';
import type { Database } from '../db/schema.js';
import type { Contract, ContractOperation } from './contract.js';
import type { Idempotency } from './idempotency.js';
import { unauthorized } from './auth.js';
import type { OperationHandlers, OperationInput, OperationId } from './operation.js';
import { ApiError } from './problem.js';
import type { AppContext, AppMiddleware, RequestState } from './state.js';

const JSON_TYPES = ['application/json', 'application/merge-patch+json', 'application/*+json'];

/** A body must be JSON; anything else is refused before it is read. */
const requireJsonBody: AppMiddleware = async (ctx, next) => {
  const hasBody = (ctx.request.length ?? 0) > 0 || ctx.get('Transfer-Encoding') !== '';
  if (hasBody && !ctx.is(JSON_TYPES)) {
    throw new ApiError(415, `the body must be application/json, not ${ctx.get('Content-Type') || 'unlabelled'}`);
  }
  await next();
};

/** How each security scheme of the spec is satisfied: the key was verified once, before routing (auth.ts). */
const SCHEMES: Record<string, (state: RequestState) => boolean> = {
  ApiKey: (state) => state.client !== undefined,
};

/** The operation's own security requirements (any one alternative, all of its schemes), given what was verified. */
function requireSecurity(op: ContractOperation): AppMiddleware {
  for (const scheme of op.security.flat()) {
    if (!SCHEMES[scheme]) throw new Error(`${op.operationId}: security scheme ${scheme} has no check in operations.ts`);
  }
  if (op.security.length === 0) return (_ctx, next) => next();
  return (ctx, next) => {
    if (!op.security.some((schemes) => schemes.every((scheme) => SCHEMES[scheme]!(ctx.state)))) throw unauthorized();
    return next();
  };
}

export interface OperationRoutesOptions {
  db: Kysely<Database>;
  bodyLimitBytes: number;
  /** Idempotency-Key on POST: runs the rest of the request, with the executor it gives. */
  idempotency: Idempotency;
}

/**
 * Registers every operation of the spec on the router, each with only the stages it needs:
 * its security requirement, for bodies the 415 check and the JSON parser, for POST the
 * Idempotency-Key, then validation by openapi-backend and the handler. No route is written by
 * hand; a GET route answers HEAD as well (@koa/router), and a path with other methods a 405
 * with Allow. Throws at start-up when an operation has no handler.
 */
export function routeOperations(router: Router<RequestState>, contract: Contract, handlers: OperationHandlers, options: OperationRoutesOptions): void {
  const parseBody = bodyParser({
    enableTypes: ['json'],
    extendTypes: { json: ['application/merge-patch+json'] },
    jsonLimit: `${options.bodyLimitBytes}b`,
    strict: true,
  }) as AppMiddleware;
  for (const op of contract.operations) {
    const handler = handlers[op.operationId] as ((input: OperationInput<OperationId>) => Promise<void>) | undefined;
    if (!handler) throw new Error(`the spec's operation ${op.operationId} has no handler (src/resources/index.ts)`);
    const stages: AppMiddleware[] = [requireSecurity(op)];
    if (op.method === 'POST' || op.method === 'PUT' || op.method === 'PATCH') stages.push(requireJsonBody, parseBody);
    const run = (ctx: AppContext, db: Kysely<Database>) => {
      const { path, query } = op.validate(ctx);
      return handler({ path, query, body: ctx.request.body, ctx, db } as OperationInput<OperationId>);
    };
    stages.push(op.method === 'POST' ? (ctx) => options.idempotency.run(ctx, (db) => run(ctx, db)) : (ctx) => run(ctx, options.db));
    router.register(op.routePath, [op.method], stages);
  }
}
