import type { ColumnType, Generated } from 'kysely';

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

export interface Database {
  users: UsersTable;
  features: FeaturesTable;
  subscriptions: SubscriptionsTable;
  subscription_features: SubscriptionFeaturesTable;
  service_secrets: ServiceSecretsTable;
}
