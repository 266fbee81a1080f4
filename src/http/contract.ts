import fs from 'node:fs';
import path from 'node:path';
import addFormats from 'ajv-formats';
import type { Ajv, ErrorObject } from 'ajv';
import { OpenAPIBackend, type Document, type Operation } from 'openapi-backend';
import YAML from 'yaml';
import { projectRoot } from '../config.js';
import type { OperationId } from './operation.js';
import type { AppContext } from './state.js';
import { validationProblem } from './validation.js';

export const specPath = path.join(projectRoot, 'openapi', 'openapi.yaml');

/** The spec as written and as parsed, read once. */
export function loadSpec(): { yaml: string; document: Document } {
  const yaml = fs.readFileSync(specPath, 'utf8');
  return { yaml, document: YAML.parse(yaml) as Document };
}

/** One operation of the spec, as the service routes, secures and validates it. */
export interface ContractOperation {
  operationId: OperationId;
  /** Upper case, as Koa and @koa/router name methods. */
  method: string;
  /** The spec's template under /api in @koa/router's syntax: /users/{id} -> /api/users/:id */
  routePath: string;
  /** Whether the spec declares a request body. */
  hasBody: boolean;
  /** Alternatives of the spec's security requirements, each a list of scheme names; [] means open. */
  security: string[][];
  /** openapi-backend's operation object: its validators were compiled for it at start-up. */
  operation: Operation;
}

/** What the validator made of a request: path and query values coerced to their schema types. */
export interface ValidRequest {
  path: Record<string, unknown>;
  query: Record<string, unknown>;
}

/**
 * The spec as an engine: openapi-backend with real format checks (ajv-formats, full mode), its
 * request validators compiled once, and the table of operations the router is built from. Only
 * openapi-backend's validator is used per request, given the operation object: its own router
 * rebuilds every path's regular expression on each call (about 900 µs), so routing is done once,
 * at start-up, by @koa/router from this table.
 */
export class Contract {
  private constructor(
    readonly api: OpenAPIBackend,
    readonly operations: ContractOperation[],
  ) {}

  static async load(document: Document): Promise<Contract> {
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
    await api.init();
    // getOperations() merges the document's global security into each operation.
    const operations = api.router.getOperations().map((operation) => ({
      operationId: operation.operationId as OperationId,
      method: operation.method.toUpperCase(),
      routePath: `/api${operation.path.replace(/\{([^}]+)\}/g, ':$1')}`,
      hasBody: operation.requestBody !== undefined,
      security: (operation.security ?? []).map((requirement) => Object.keys(requirement)),
      operation,
    }));
    return new Contract(api, operations);
  }

  /** Validates the request against its operation (400 problem naming each field), returns coerced values. */
  validate(ctx: AppContext, operation: Operation): ValidRequest {
    const result = this.api.validator.validateRequest(
      { method: ctx.method, path: ctx.path, query: ctx.querystring, headers: ctx.headers as Record<string, string>, body: ctx.request.body },
      operation,
    );
    if (result.errors) throw validationProblem(result.errors as ErrorObject[]);
    const coerced = result.coerced as { params?: Record<string, unknown>; query?: Record<string, unknown> };
    return { path: coerced.params ?? {}, query: coerced.query ?? {} };
  }
}
