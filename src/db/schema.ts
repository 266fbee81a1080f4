import type { ColumnType, Generated } from 'kysely';
import type { WebhookAttemptsTable, WebhookDeliveriesTable, WebhookEndpointsTable } from '../webhooks/tables.js';

/** A timestamptz column: a Date when read, set by the database. */
type Timestamp = ColumnType<Date, never, never>;
/** numeric: pg returns a decimal string, and we only ever write decimal strings. */
type Numeric = ColumnType<string, string, string>;

export interface UsersTable {
  id: Generated<number>;
  name: string;
  email: string;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface FeaturesTable {
  id: Generated<number>;
  name: string;
  description: string | null;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export type SubscriptionStatus = 'active' | 'trialing' | 'past_due' | 'paused' | 'canceled' | 'expired';
export type BillingPeriod = 'month' | 'year';

export interface SubscriptionsTable {
  id: Generated<number>;
  user_id: number;
  status: SubscriptionStatus;
  plan_name: string | null;
  plan_cost: Numeric;
  billing_period: ColumnType<BillingPeriod, BillingPeriod | undefined, BillingPeriod>;
  /** date columns are kept as 'YYYY-MM-DD' strings (see the type parser in database.ts). */
  start_date: string;
  end_date: string | null;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface SubscriptionFeaturesTable {
  subscription_id: number;
  feature_id: number;
  usage_limit: number | null;
  added_at: Timestamp;
  updated_at: Timestamp;
}

export interface ServiceSecretsTable {
  name: string;
  value: string;
}

export interface IdempotencyKeysTable {
  client: string;
  key: string;
  request_hash: string;
  status: number | null;
  response_headers: ColumnType<Record<string, string> | null, string | null, string | null>;
  response_body: ColumnType<unknown, string | null, string | null>;
  created_at: ColumnType<Date, never, never>;
}

/** Aggregates kept by the triggers of db/migrations/0002_analytics.sql; totals are spread over slots. */
export interface AnalyticsStatusTotalsTable {
  status: SubscriptionStatus;
  billing_period: BillingPeriod;
  slot: number;
  subscription_count: number;
  plan_cost_sum: Numeric;
}

export interface AnalyticsMonthRevenueTable {
  /** First day of the month, 'YYYY-MM-DD'. */
  month: string;
  slot: number;
  subscription_count: number;
  plan_cost_sum: Numeric;
}

export interface AnalyticsUserTotalsTable {
  user_id: number;
  subscription_count: number;
  plan_cost_sum: Numeric;
}

/** What happened to an object (db/migrations/0006_history.sql). */
export type EventType =
  | 'user.created'
  | 'user.updated'
  | 'user.deleted'
  | 'subscription.created'
  | 'subscription.updated'
  | 'subscription.deleted'
  | 'feature.created'
  | 'feature.updated'
  | 'feature.deleted'
  | 'subscription_feature.attached'
  | 'subscription_feature.updated'
  | 'subscription_feature.detached';
export type EventObjectType = 'user' | 'subscription' | 'feature' | 'subscription_feature';

/** The history, written only by triggers (so nothing here is insertable or updatable). */
export interface EventsTable {
  id: ColumnType<number, never, never>;
  /** The writing transaction's id (xid8) as a decimal string: with id, the feed's order. */
  xid: ColumnType<string, never, never>;
  type: ColumnType<EventType, never, never>;
  occurred_at: Timestamp;
  object_type: ColumnType<EventObjectType, never, never>;
  /** "42", or "<subscription_id>:<feature_id>" for a link. */
  object_id: ColumnType<string, never, never>;
  /** Whose the object is (for the user_id filter); null for features. */
  user_id: ColumnType<number | null, never, never>;
  /**
   * The object after the change (before it, for a deletion), in the row-typed column of its
   * object_type (composite types history_*; read them with row_to_json, see src/resources/events.ts).
   */
  object_user: ColumnType<string | null, never, never>;
  object_feature: ColumnType<string | null, never, never>;
  object_subscription: ColumnType<string | null, never, never>;
  object_subscription_feature: ColumnType<string | null, never, never>;
  /** The old values of the fields that changed (updates only, else {}), timestamps as to_jsonb writes them. */
  previous_attributes: ColumnType<Record<string, unknown>, never, never>;
}

/** Migration 0010: changes of count, plan_cost and MRR per status and billing period, bucketed by month, day and instant (written by triggers). */
export interface HistoryStatusChangesTable {
  span: ColumnType<'month' | 'day' | 'instant', never, never>;
  bucket: ColumnType<Date, never, never>;
  status: ColumnType<SubscriptionStatus, never, never>;
  billing_period: ColumnType<string, never, never>;
  slot: ColumnType<number, never, never>;
  subscription_count: ColumnType<string, never, never>;
  plan_cost_sum: ColumnType<string, never, never>;
  mrr_sum: ColumnType<string, never, never>;
}

export interface Database {
  history_status_changes: HistoryStatusChangesTable;
  analytics_status_totals: AnalyticsStatusTotalsTable;
  analytics_month_revenue: AnalyticsMonthRevenueTable;
  analytics_user_totals: AnalyticsUserTotalsTable;
  users: UsersTable;
  features: FeaturesTable;
  subscriptions: SubscriptionsTable;
  subscription_features: SubscriptionFeaturesTable;
  service_secrets: ServiceSecretsTable;
  idempotency_keys: IdempotencyKeysTable;
  events: EventsTable;
  webhook_endpoints: WebhookEndpointsTable;
  webhook_deliveries: WebhookDeliveriesTable;
  webhook_attempts: WebhookAttemptsTable;
}
