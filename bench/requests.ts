/**
 * Requests as templates: `path\`/api/users/${int(100)}\`` is a path with a random id in 1..100 per
 * request. One template drives either load generator: it becomes a Lua expression for wrk and a
 * function for autocannon.
 */
import { randomUUID } from 'node:crypto';

/** A random integer in 1..max, one of the choices, or a fresh UUID, drawn per request. */
export type Token = { int: number } | { pick: readonly string[] } | { uuid: true };
export type Part = string | Token;
export type Template = Part[];

export const int = (max: number): Token => ({ int: Math.max(1, Math.floor(max)) });
export const pick = (choices: readonly string[]): Token => ({ pick: choices });
export const uuid = (): Token => ({ uuid: true });

/** Tagged template: constants (strings, numbers) stay as they are, tokens are drawn per request. */
export function t(strings: TemplateStringsArray, ...values: Array<Token | string | number>): Template {
  const parts: Template = [];
  strings.forEach((s, i) => {
    if (s) parts.push(s);
    const value = values[i];
    if (value === undefined) return;
    parts.push(typeof value === 'object' ? value : String(value));
  });
  return parts;
}

export interface BenchRequest {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'HEAD';
  path: Template;
  body?: Template;
  /** Beside the run's common headers (authorization, content-type). */
  headers?: Record<string, string>;
  /** A fresh Idempotency-Key (a UUID) on every request. */
  keyed?: boolean;
}

export const get = (path: Template, headers?: Record<string, string>): BenchRequest => ({ method: 'GET', path, ...(headers ? { headers } : {}) });
export const post = (path: Template, body: Template, headers?: Record<string, string>): BenchRequest => ({ method: 'POST', path, body, ...(headers ? { headers } : {}) });
/** The same request, with its own Idempotency-Key each time. */
export const keyed = (request: BenchRequest): BenchRequest => ({ ...request, keyed: true });

/** One concrete string of a template (autocannon's per-request callback). */
export function render(template: Template): string {
  return template
    .map((part) => {
      if (typeof part === 'string') return part;
      if ('int' in part) return String(1 + Math.floor(Math.random() * part.int));
      if ('pick' in part) return part.pick[Math.floor(Math.random() * part.pick.length)]!;
      return randomUUID();
    })
    .join('');
}

/** A Lua string literal (templates are ASCII: anything else is refused rather than mis-escaped). */
export function luaString(s: string): string {
  if (!/^[\x20-\x7e]*$/.test(s)) throw new Error(`bench templates are printable ASCII only: ${JSON.stringify(s)}`);
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** A Lua expression that builds one string of the template (uuid() and pick() are defined by the script). */
export function luaExpression(template: Template): string {
  if (template.length === 0) return '""';
  return template
    .map((part) => {
      if (typeof part === 'string') return luaString(part);
      if ('int' in part) return `tostring(math.random(${part.int}))`;
      if ('pick' in part) return `pick({${part.pick.map(luaString).join(', ')}})`;
      return 'uuid()';
    })
    .join(' .. ');
}
