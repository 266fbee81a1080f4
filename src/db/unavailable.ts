/** No connection could be had: the server is down, refusing, or the pool is exhausted. */
export class DatabaseUnavailableError extends Error {
  constructor(readonly reason: unknown) {
    super(`database unavailable: ${reason instanceof Error ? reason.message : String(reason)}`);
    this.name = 'DatabaseUnavailableError';
  }
}
