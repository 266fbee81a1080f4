import { STATUS_CODES } from 'node:http';

/** One offending input: a JSON Pointer into the body, or the name of a parameter. */
export interface FieldError {
  pointer?: string;
  parameter?: string;
  message: string;
}

/** An RFC 9457 problem document. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance?: string;
  errors?: FieldError[];
}

/** The one error type handlers throw; the error middleware turns it into a problem response. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    detail: string,
    readonly errors?: FieldError[],
    readonly headers: Record<string, string> = {},
  ) {
    super(detail);
    this.name = 'ApiError';
  }

  toProblem(requestId?: string): Problem {
    return {
      type: 'about:blank',
      title: STATUS_CODES[this.status] ?? 'Error',
      status: this.status,
      detail: this.message,
      ...(requestId ? { instance: requestId } : {}),
      ...(this.errors?.length ? { errors: this.errors } : {}),
    };
  }
}

export const badRequest = (detail: string, errors?: FieldError[]) => new ApiError(400, detail, errors);
export const notFound = (what: string, id: number | string) => new ApiError(404, `${what} ${id} does not exist`);
export const conflict = (detail: string, errors?: FieldError[]) => new ApiError(409, detail, errors);
export const unavailable = (detail: string) =>
  new ApiError(503, detail, undefined, { 'Retry-After': '1' });
