/** The webhook tables (db/migrations/0009_webhooks.sql), as Kysely sees them (src/db/schema.ts lists them). */
import type { ColumnType, Generated } from 'kysely';

type Timestamp = ColumnType<Date, never, never>;
type Settable<T> = ColumnType<T, T | undefined, T>;

export type WebhookDeliveryStatus = 'pending' | 'succeeded' | 'failed';

export interface WebhookEndpointsTable {
  id: Generated<number>;
  url: string;
  event_types: string[];
  description: string | null;
  enabled: Generated<boolean>;
  secret: string;
  created_at: Timestamp;
  updated_at: Timestamp;
  /** xid8 as a decimal string, with cursor_id the endpoint's place in the feed. */
  cursor_xid: Settable<string>;
  cursor_id: Settable<number>;
  lease_token: ColumnType<string | null, never, string | null>;
  lease_until: ColumnType<Date | null, never, Date | null>;
}

export interface WebhookDeliveriesTable {
  id: Generated<number>;
  endpoint_id: number;
  event_id: number;
  event_type: string;
  payload: string;
  status: Settable<WebhookDeliveryStatus>;
  attempt_count: Settable<number>;
  next_attempt_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
  retry_requested: Settable<boolean>;
  first_attempt_at: ColumnType<Date | null, never, Date | null>;
  created_at: Timestamp;
}

export interface WebhookAttemptsTable {
  delivery_id: number;
  attempt: number;
  trigger: 'scheduled' | 'manual';
  attempted_at: ColumnType<Date, Date, never>;
  duration_ms: number;
  status_code: number | null;
  error: string | null;
}
