import { STATUS_CODES } from 'node:http';

import type { FieldError } from '../errors.js';

export type { FieldError };

/** An RFC 9457 problem document. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance?: string;
  errors?: FieldError[];
}

/** An error with its HTTP answer; every other error is turned into one by toApiError (pg-errors.ts). */
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
export const conflict = (detail: string, errors?: FieldError[]) => new ApiError(409, detail, errors);
export const unavailable = (detail: string) => new ApiError(503, detail, undefined, { 'Retry-After': '1' });
