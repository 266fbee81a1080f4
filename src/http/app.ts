import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import Router from '@koa/router';
import Koa from 'koa';
import bodyParser from 'koa-bodyparser';
import { OpenAPIBackend, type Context as OperationContext, type Document } from 'openapi-backend';
import addFormats from 'ajv-formats';
import type { Ajv, ErrorObject } from 'ajv';
import YAML from 'yaml';
import { projectRoot } from '../config.js';
import type { Deps } from '../deps.js';
import { allHandlers } from '../resources/index.js';
import type { OperationHandlers } from './operation.js';
import { ApiKeys, authenticate, isApiPath, unauthorized } from './auth.js';
import { idempotency } from './idempotency.js';
import { toApiError } from './pg-errors.js';
import { ApiError } from './problem.js';
import { validationProblem } from './validation.js';
import { registerDocsRoutes } from './docs.js';

export const specPath = path.join(projectRoot, 'openapi', 'openapi.yaml');

/** The spec as written and as parsed, read once. */
export function loadSpec(): { yaml: string; document: Document } {
  const yaml = fs.readFileSync(specPath, 'utf8');
  return { yaml, document: YAML.parse(yaml) as Document };
}

export interface AppOptions {
  bodyLimitBytes: number;
  apiKeys: ApiKeys;
  /** Answers whether the database is reachable, for /readyz. */
  isReady: () => Promise<boolean>;
}

const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);
const JSON_TYPES = ['application/json', 'application/merge-patch+json', 'application/*+json'];

/** Builds openapi-backend with real format checks, registers every handler by operationId. */
export async function createApi(document: Document, handlers: OperationHandlers, apiKeys?: ApiKeys): Promise<OpenAPIBackend> {
  const api = new OpenAPIBackend({
    definition: structuredClone(document),
    apiRoot: '/api',
    strict: true,
    ignoreTrailingSlashes: true,
    coerceTypes: true,
    ajvOpts: { allErrors: true, useDefaults: true },
    customizeAjv: (ajv: Ajv) => {
      addFormats.default(ajv, { mode: 'full' });
      return ajv;
    },
  });
  for (const [operationId, handler] of Object.entries(handlers)) {
    api.register(operationId, (c: OperationContext, ctx: Koa.Context) =>
      // Path and query values as coerced to their schema types by the validator.
      (handler as (input: object) => Promise<void>)({
        path: c.validation.coerced?.params ?? c.request.params,
        query: c.validation.coerced?.query ?? {},
        body: c.request.requestBody,
        ctx,
      }),
    );
  }
  api.register({
    validationFail: (c: OperationContext) => {
      throw validationProblem((c.validation.errors ?? []) as ErrorObject[]);
    },
    notFound: (c: OperationContext) => {
      throw new ApiError(404, `no resource at ${c.request.path}`);
    },
    notImplemented: (c: OperationContext) => {
      throw new ApiError(501, `${c.operation.operationId ?? 'this operation'} is not implemented yet`);
    },
    methodNotAllowed: (c: OperationContext, ctx: Koa.Context) => {
      const allowed = ['get', 'post', 'put', 'patch', 'delete'].filter((method) =>
        api.router.matchOperation({ method, path: ctx.path, headers: {} }) !== undefined,
      );
      throw new ApiError(405, `${c.request.method.toUpperCase()} is not allowed on ${ctx.path}`, undefined, {
        Allow: allowed.map((m) => m.toUpperCase()).join(', '),
      });
    },
  });
  if (apiKeys) {
    // The spec's security scheme, checked before validation: no key, no information about the request.
    api.registerSecurityHandler('ApiKey', (c: OperationContext) => {
      const header = c.request.headers.authorization;
      return apiKeys.verify(ApiKeys.fromHeader(Array.isArray(header) ? header[0] : header));
    });
    api.register('unauthorizedHandler', () => {
      throw unauthorized();
    });
  }
  await api.init();
  return api;
}

/** The Koa application: problem errors, request ids, body parsing, the spec and docs, then /api. */
export async function createApp(deps: Deps, options: AppOptions): Promise<Koa> {
  const spec = loadSpec();
  const api = await createApi(spec.document, allHandlers(deps), options.apiKeys);
  const specJson = JSON.stringify(spec.document);

  const app = new Koa();
  app.proxy = false;

  // Request id and the one place where every error becomes an RFC 9457 problem.
  app.use(async (ctx, next) => {
    const incoming = ctx.get('X-Request-Id');
    const requestId = /^[\w.:-]{1,100}$/.test(incoming) ? incoming : randomUUID();
    ctx.state.requestId = requestId;
    // Every log line about this request carries its id.
    const log = deps.log.child({ requestId });
    ctx.state.log = log;
    ctx.set('X-Request-Id', requestId);
    ctx.set('X-Content-Type-Options', 'nosniff');
    if (isApiPath(ctx.path)) ctx.set('Cache-Control', 'no-store');
    const started = process.hrtime.bigint();
    try {
      await next();
      if (ctx.body === undefined || ctx.body === null) {
        // The router's own answers outside /api (404, and 405/501 from allowedMethods) become problems too.
        if (ctx.status === 404) throw new ApiError(404, `no resource at ${ctx.path}`);
        if (ctx.status === 405 || ctx.status === 501) {
          const allow = ctx.response.get('Allow');
          throw new ApiError(ctx.status, `${ctx.method} is not supported on ${ctx.path}`, undefined, allow ? { Allow: allow } : {});
        }
      }
    } catch (err) {
      const problem = toApiError(err);
      if (!problem) {
        log.error({ err, method: ctx.method, path: ctx.path }, 'unexpected error');
      }
      const apiError = problem ?? new ApiError(500, 'an unexpected error occurred; it has been logged with the request id');
      ctx.status = apiError.status;
      for (const [name, value] of Object.entries(apiError.headers)) ctx.set(name, value);
      ctx.body = apiError.toProblem(requestId);
      // Koa resets the type when an object is assigned to the body: set it after.
      ctx.type = 'application/problem+json';
    } finally {
      log.info({ method: ctx.method, path: ctx.path, status: ctx.status, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'request');
    }
  });

  app.use(authenticate(options.apiKeys));

  // A body must be JSON; anything else is refused before parsing.
  app.use(async (ctx, next) => {
    const hasBody = (ctx.request.length ?? 0) > 0 || ctx.get('Transfer-Encoding') !== '';
    if (BODY_METHODS.has(ctx.method) && hasBody && !ctx.is(JSON_TYPES)) {
      throw new ApiError(415, `the body must be application/json, not ${ctx.get('Content-Type') || 'unlabelled'}`);
    }
    await next();
  });
  app.use(
    bodyParser({
      enableTypes: ['json'],
      extendTypes: { json: ['application/merge-patch+json'] },
      jsonLimit: `${options.bodyLimitBytes}b`,
      strict: true,
    }),
  );

  app.use(idempotency(deps.db));

  const router = new Router();
  router.get('/healthz', (ctx) => {
    ctx.body = { status: 'ok' };
  });
  router.get('/readyz', async (ctx) => {
    const ready = await options.isReady().catch(() => false);
    if (!ready) throw new ApiError(503, 'the database is not reachable', undefined, { 'Retry-After': '1' });
    ctx.body = { status: 'ready' };
  });
  router.get('/openapi.json', (ctx) => {
    ctx.type = 'application/json';
    ctx.body = specJson;
  });
  router.get('/openapi.yaml', (ctx) => {
    ctx.type = 'application/yaml';
    ctx.body = spec.yaml;
  });
  registerDocsRoutes(router);
  router.all('/api{/*rest}', async (ctx) => {
    await api.handleRequest(
      { method: ctx.method, path: ctx.path, query: ctx.querystring, headers: ctx.headers as Record<string, string>, body: ctx.request.body },
      ctx,
    );
  });
  app.use(router.routes());
  app.use(router.allowedMethods());
  return app;
}
