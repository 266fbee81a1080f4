import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Database } from './db/schema.js';
import type { CursorCodec } from './http/cursor.js';
import type { TargetPolicy } from './webhooks/targets.js';

/** What request handlers need from the running service. */
export interface Deps {
  db: Kysely<Database>;
  cursors: CursorCodec;
  log: Logger;
  /** Where webhook endpoints may point (WEBHOOK_ALLOW_PRIVATE). */
  webhookTargets: TargetPolicy;
}
