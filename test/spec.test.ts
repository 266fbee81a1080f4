/**
 * The spec is the user's documentation: these checks keep it complete (every operation, parameter
 * and field described, examples for every request and response) and honest (every example is
 * valid against the schema it illustrates, every problem example has the status it is shown under).
 */
import test from 'ava';
import { Ajv } from 'ajv';
import addFormats from 'ajv-formats';
import { loadSpec } from '../src/http/contract.js';

type Json = Record<string, unknown>;
const spec = loadSpec().document as unknown as Json;
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

const escapePointer = (segment: string) => segment.replace(/~/g, '~0').replace(/\//g, '~1');
const pointerOf = (path: string[]) => `#/${path.map(escapePointer).join('/')}`;

/** The object a local `$ref` names, and its pointer. */
function resolve(node: Json, path: string[]): { node: Json; path: string[] } {
  let current = { node, path };
  while (typeof current.node.$ref === 'string') {
    const ref = current.node.$ref;
    if (!ref.startsWith('#/')) throw new Error(`only local refs are expected, got ${ref}`);
    const segments = ref
      .slice(2)
      .split('/')
      .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    const target = segments.reduce<unknown>((value, key) => (value as Json | undefined)?.[key], spec);
    if (!target || typeof target !== 'object') throw new Error(`unresolved ref ${ref}`);
    current = { node: target as Json, path: segments };
  }
  return current;
}

// Ajv reads the whole spec as one schema document, so every example is checked against the very
// schema node (and the refs inside it) that the spec gives for it, OpenAPI's `nullable` included.
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats.default(ajv);
ajv.addSchema(spec, 'spec');
const validatorFor = (schemaPath: string[]) => ajv.compile({ $ref: `spec${pointerOf(schemaPath)}` });

interface Example {
  where: string;
  value: unknown;
  schemaPath: string[];
  /** The HTTP status a response example is shown under. */
  status?: number;
}

interface MediaTypeUse {
  where: string;
  mediaType: Json;
  path: string[];
  status?: number;
  kind: 'request' | 'response';
}

const operations: { where: string; op: Json; path: string[] }[] = [];
const mediaTypes: MediaTypeUse[] = [];
const parameters: { where: string; parameter: Json; path: string[] }[] = [];
const errorResponses: { where: string; response: Json; status: number }[] = [];

for (const [route, item] of Object.entries((spec.paths ?? {}) as Record<string, Json>)) {
  ((item.parameters ?? []) as Json[]).forEach((parameter, i) => {
    const r = resolve(parameter, ['paths', route, 'parameters', String(i)]);
    parameters.push({ where: `${route} parameter`, parameter: r.node, path: r.path });
  });
  for (const method of METHODS) {
    const op = item[method] as Json | undefined;
    if (!op) continue;
    const opPath = ['paths', route, method];
    const where = `${method.toUpperCase()} ${route}`;
    operations.push({ where, op, path: opPath });
    (op.parameters as Json[] | undefined)?.forEach((parameter, i) => {
      const r = resolve(parameter, [...opPath, 'parameters', String(i)]);
      parameters.push({ where: `${where} parameter`, parameter: r.node, path: r.path });
    });
    if (op.requestBody) {
      const body = resolve(op.requestBody as Json, [...opPath, 'requestBody']);
      for (const [type, mediaType] of Object.entries((body.node.content ?? {}) as Record<string, Json>)) {
        mediaTypes.push({ where: `${where} request ${type}`, mediaType, path: [...body.path, 'content', type], kind: 'request' });
      }
    }
    for (const [code, raw] of Object.entries((op.responses ?? {}) as Record<string, Json>)) {
      const response = resolve(raw, [...opPath, 'responses', code]);
      const status = Number(code);
      if (status >= 400) errorResponses.push({ where: `${where} ${code}`, response: response.node, status });
      for (const [type, mediaType] of Object.entries((response.node.content ?? {}) as Record<string, Json>)) {
        mediaTypes.push({ where: `${where} ${code} ${type}`, mediaType, path: [...response.path, 'content', type], status, kind: 'response' });
      }
    }
  }
}

/** Every example the spec holds: on media types (inline or from components/examples), parameters and schemas. */
function collectExamples(): Example[] {
  const examples: Example[] = [];
  const fromHolder = (where: string, holder: Json, schemaPath: string[], status?: number) => {
    if ('example' in holder) examples.push({ where, value: holder.example, schemaPath, status });
    for (const [name, raw] of Object.entries((holder.examples ?? {}) as Record<string, Json>)) {
      const example = resolve(raw, []).node;
      if ('value' in example) examples.push({ where: `${where} example ${name}`, value: example.value, schemaPath, status });
    }
  };
  for (const use of mediaTypes) if (use.mediaType.schema) fromHolder(use.where, use.mediaType, [...use.path, 'schema'], use.status);
  for (const { where, parameter, path } of parameters) if (parameter.schema) fromHolder(`${where} ${String(parameter.name)}`, parameter, [...path, 'schema']);
  // Schema-level examples, anywhere under components/schemas and inline in paths.
  const walk = (node: unknown, path: string[]) => {
    if (!node || typeof node !== 'object') return;
    if (Array.isArray(node)) return node.forEach((child, i) => walk(child, [...path, String(i)]));
    const object = node as Json;
    const isSchema = path.includes('schema') || (path[0] === 'components' && path[1] === 'schemas');
    if (isSchema && 'example' in object && path.at(-1) !== 'properties') {
      examples.push({ where: `schema ${pointerOf(path)}`, value: object.example, schemaPath: path });
    }
    for (const [key, child] of Object.entries(object)) if (key !== 'example' && key !== 'examples') walk(child, [...path, key]);
  };
  walk(spec.components, ['components']);
  walk(spec.paths, ['paths']);
  return examples;
}
const examples = collectExamples();

test('the spec holds examples, and every one is valid against its schema', (t) => {
  t.true(examples.length > 0);
  for (const example of examples) {
    const validate = validatorFor(example.schemaPath);
    t.true(validate(example.value), `${example.where}: ${ajv.errorsText(validate.errors)}`);
  }
});

test('every problem example has the status it is shown under', (t) => {
  let checked = 0;
  for (const example of examples) {
    if (example.status === undefined || example.status < 400) continue;
    checked++;
    t.is((example.value as { status?: unknown }).status, example.status, example.where);
  }
  t.true(checked > 0);
});

test('every operation has a summary, a description and at least one tag', (t) => {
  for (const { where, op } of operations) {
    t.truthy(op.summary, `${where} summary`);
    t.truthy(op.description, `${where} description`);
    t.true(Array.isArray(op.tags) && op.tags.length > 0, `${where} tags`);
  }
});

test('every request body and every response with a body shows an example', (t) => {
  for (const use of mediaTypes) {
    const schema = use.mediaType.schema ? resolve(use.mediaType.schema as Json, []).node : undefined;
    const shown = 'example' in use.mediaType || Object.keys((use.mediaType.examples ?? {}) as Json).length > 0 || (schema !== undefined && 'example' in schema);
    t.true(shown, `${use.where} has no example`);
  }
});

test('every error response shows a problem example', (t) => {
  for (const { where, response } of errorResponses) {
    const problem = (response.content as Record<string, Json> | undefined)?.['application/problem+json'];
    t.truthy(problem, `${where} is not application/problem+json`);
    t.true(Object.keys((problem?.examples ?? {}) as Json).length > 0 || (problem !== undefined && 'example' in problem), `${where} has no example`);
  }
});

test('every parameter and every field is described', (t) => {
  for (const { where, parameter } of parameters) t.truthy(parameter.description, `${where} ${String(parameter.name)}`);
  const described = (schema: Json) => Boolean(schema.description) || (typeof schema.$ref === 'string' && Boolean(resolve(schema, []).node.description));
  const walk = (node: unknown, path: string[]) => {
    if (!node || typeof node !== 'object') return;
    if (Array.isArray(node)) return node.forEach((child, i) => walk(child, [...path, String(i)]));
    const object = node as Json;
    if (path.at(-1) !== 'properties' && object.properties && typeof object.properties === 'object') {
      for (const [name, property] of Object.entries(object.properties as Record<string, Json>)) {
        t.true(described(property), `${pointerOf(path)} field ${name} has no description`);
      }
    }
    for (const [key, child] of Object.entries(object)) if (key !== 'example' && key !== 'examples') walk(child, [...path, key]);
  };
  walk(spec.components, ['components']);
  walk(spec.paths, ['paths']);
});
