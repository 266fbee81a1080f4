import type { ErrorObject } from 'ajv';
import { badRequest, type ApiError, type FieldError } from './problem.js';

/** How openapi-backend names the parts of a request in its Ajv instance paths. */
const PARAMETER_PARTS = new Set(['path', 'query', 'header', 'cookie']);

function describe(error: ErrorObject): string {
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case 'required':
      return 'is required';
    case 'additionalProperties':
      return 'is not a known field';
    case 'enum':
      return `must be one of: ${(params.allowedValues as unknown[]).join(', ')}`;
    case 'format':
      return `must be a valid ${String(params.format)}`;
    case 'pattern':
      return `must match the pattern ${String(params.pattern)}`;
    case 'parse':
      return `is not valid JSON: ${error.message ?? ''}`;
    default:
      return error.message ?? 'is invalid';
  }
}

/** Where an Ajv error points: a body pointer or a parameter name (never both). */
function locate(error: ErrorObject): { pointer: string } | { parameter: string } {
  const params = error.params as Record<string, unknown>;
  const segments = error.instancePath.split('/').slice(1);
  // A missing or unknown field is reported on its parent; name the field itself.
  const child = (params.missingProperty ?? params.additionalProperty) as string | undefined;
  if (child !== undefined) segments.push(child.replace(/~/g, '~0').replace(/\//g, '~1'));
  const [part, ...rest] = segments;
  if (part !== undefined && PARAMETER_PARTS.has(part) && rest.length > 0) {
    const name = rest[0]!;
    return { parameter: part === 'header' ? name.replace(/(^|-)([a-z])/g, (_, dash: string, c: string) => dash + c.toUpperCase()) : name };
  }
  if (part === 'requestBody') return { pointer: rest.length ? `/${rest.join('/')}` : '' };
  return { pointer: '' };
}

/**
 * Turns openapi-backend's Ajv errors into one 400 problem whose `errors` name each field or
 * parameter once (several failed rules on one place are joined).
 */
export function validationProblem(errors: ErrorObject[]): ApiError {
  const byPlace = new Map<string, FieldError>();
  for (const error of errors) {
    const place = locate(error);
    let message = describe(error);
    if ('pointer' in place && place.pointer === '' && error.keyword === 'required' && (error.params as { missingProperty?: string }).missingProperty === 'requestBody') {
      message = 'a JSON body is required';
    }
    const key = JSON.stringify(place);
    const known = byPlace.get(key);
    if (!known) byPlace.set(key, { ...place, message });
    else if (!known.message.split('; ').includes(message)) known.message += `; ${message}`;
  }
  const fieldErrors = [...byPlace.values()];
  const first = fieldErrors[0];
  const where = first ? ('parameter' in first ? `parameter ${first.parameter}` : `field ${first.pointer || '(body)'}`) : 'the request';
  return badRequest(`the request is invalid: ${where} ${first?.message ?? ''}`.trim(), fieldErrors);
}
