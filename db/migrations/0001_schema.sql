-- The four tables of the contract. Every rule the API enforces is also a constraint here, so no
-- client and no bug can store what the API would refuse.

-- One trigger function keeps updated_at honest for every table.
CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END $$;

CREATE TABLE users (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name       text NOT NULL,
  email      text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT users_name_check CHECK (char_length(name) BETWEEN 1 AND 200 AND name ~ '\S'),
  -- The same pattern as the API's `format: email` (ajv-formats), compared case-insensitively.
  CONSTRAINT users_email_check CHECK (
    char_length(email) <= 254
    AND email ~* '^[a-z0-9.!#$%&''*+/=?^_`{|}~-]+@[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$'
  )
);
-- Email is unique ignoring case; this index also serves the `email` filter.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE features (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name        text NOT NULL,
  description text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT features_name_check CHECK (char_length(name) BETWEEN 1 AND 200 AND name ~ '\S'),
  CONSTRAINT features_description_check CHECK (char_length(description) <= 2000)
);
CREATE UNIQUE INDEX features_name_key ON features (lower(name));
CREATE TRIGGER features_updated_at BEFORE UPDATE ON features FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE subscriptions (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- A user's subscriptions mean nothing without the user: deleting a user deletes them.
  user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  status         text NOT NULL,
  plan_name      text,
  plan_cost      numeric(12, 2) NOT NULL,
  billing_period text NOT NULL DEFAULT 'month',
  start_date     date NOT NULL,
  end_date       date,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT subscriptions_status_check
    CHECK (status IN ('active', 'trialing', 'past_due', 'paused', 'canceled', 'expired')),
  CONSTRAINT subscriptions_plan_name_check CHECK (char_length(plan_name) BETWEEN 1 AND 100),
  CONSTRAINT subscriptions_plan_cost_check CHECK (plan_cost >= 0),
  CONSTRAINT subscriptions_billing_period_check CHECK (billing_period IN ('month', 'year')),
  CONSTRAINT subscriptions_end_date_check CHECK (end_date IS NULL OR end_date >= start_date)
);
-- Each list filter and sort has an index ending in id, so keyset pages stay index scans.
CREATE INDEX subscriptions_user_id_idx ON subscriptions (user_id, id);
CREATE INDEX subscriptions_status_idx ON subscriptions (status, id);
CREATE INDEX subscriptions_start_date_idx ON subscriptions (start_date, id);
CREATE INDEX subscriptions_plan_cost_idx ON subscriptions (plan_cost, id);
CREATE TRIGGER subscriptions_updated_at BEFORE UPDATE ON subscriptions FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE subscription_features (
  subscription_id bigint NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
  -- Deliberately no cascade: a feature still in use cannot vanish from customers' plans (409).
  feature_id      bigint NOT NULL REFERENCES features (id) ON DELETE RESTRICT,
  usage_limit     integer,
  added_at        timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subscription_id, feature_id),
  CONSTRAINT subscription_features_usage_limit_check CHECK (usage_limit >= 0)
);
-- Serves the feature_id filter on subscriptions and the RESTRICT check on feature delete.
CREATE INDEX subscription_features_feature_id_idx ON subscription_features (feature_id, subscription_id);
CREATE TRIGGER subscription_features_updated_at BEFORE UPDATE ON subscription_features FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Secrets the service needs to agree on across restarts and instances (the cursor signing key).
CREATE TABLE service_secrets (
  name  text PRIMARY KEY,
  value text NOT NULL
);
INSERT INTO service_secrets (name, value)
VALUES ('cursor_hmac_key', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
