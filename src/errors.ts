/**
 * Domain errors: plain errors that say what went wrong in the domain's terms. They know nothing of
 * HTTP; src/http/errors.ts turns each into its problem document, in one place.
 */

/** One offending input: a JSON Pointer into the body, or the name of a parameter. */
export interface FieldError {
  pointer?: string;
  parameter?: string;
  message: string;
}

/** The input cannot be accepted (a value out of range, a reference to nothing). */
export class InvalidInputError extends Error {
  constructor(
    detail: string,
    readonly errors?: FieldError[],
  ) {
    super(detail);
    this.name = 'InvalidInputError';
  }
}

/** The object the request names does not exist. */
export class NotFoundError extends Error {
  constructor(what: string, id: number | string) {
    super(`${what} ${id} does not exist`);
    this.name = 'NotFoundError';
  }
}

/** The change conflicts with the current state (taken, still referenced, already attached). */
export class ConflictError extends Error {
  constructor(
    detail: string,
    readonly errors?: FieldError[],
  ) {
    super(detail);
    this.name = 'ConflictError';
  }
}

/** The client's version of the object (its ETag) is no longer the current one. */
export class StaleVersionError extends Error {
  constructor() {
    super('If-Match does not match the current ETag: the object changed since it was read; fetch it again');
    this.name = 'StaleVersionError';
  }
}
