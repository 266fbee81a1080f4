-- Aggregates behind GET /api/analytics, kept exact in the same transaction as every write to
-- subscriptions, so the endpoint reads a few hundred small rows instead of scanning the table.
--
-- Statement-level triggers with transition tables pay once per statement (a bulk INSERT ... SELECT
-- or UPDATE costs one upsert per aggregate key, not one per row). Hot totals are spread over 16
-- slots; each connection writes to a slot of its own, so concurrent writers do not queue on one
-- row. Changes are applied in one fixed order (table, then key), so two writers whose statements
-- overlap cannot deadlock on aggregate rows.

-- Count and plan_cost sum per status and billing period (mrr/arr need the period), per slot.
CREATE TABLE analytics_status_totals (
  status             text     NOT NULL,
  billing_period     text     NOT NULL,
  slot               smallint NOT NULL,
  subscription_count bigint   NOT NULL,
  plan_cost_sum      numeric  NOT NULL,
  PRIMARY KEY (status, billing_period, slot)
);

-- plan_cost sum per month of start_date (every month, not only the last 12: time moves on), per slot.
CREATE TABLE analytics_month_revenue (
  month              date     NOT NULL,
  slot               smallint NOT NULL,
  subscription_count bigint   NOT NULL,
  plan_cost_sum      numeric  NOT NULL,
  PRIMARY KEY (month, slot)
);

-- Per user with at least one subscription; the row goes when the last subscription does.
CREATE TABLE analytics_user_totals (
  user_id            bigint  PRIMARY KEY,
  subscription_count bigint  NOT NULL,
  plan_cost_sum      numeric NOT NULL
);
-- The top 5 is the first 5 entries of this index.
CREATE INDEX analytics_user_totals_top_idx ON analytics_user_totals (plan_cost_sum DESC, user_id);

-- What the aggregates must equal, straight from the base tables: rebuild and reconcile read these.
CREATE VIEW analytics_status_actual AS
  SELECT status, billing_period, count(*) AS subscription_count, sum(plan_cost) AS plan_cost_sum
  FROM subscriptions GROUP BY status, billing_period;
CREATE VIEW analytics_month_actual AS
  SELECT date_trunc('month', start_date)::date AS month, count(*) AS subscription_count, sum(plan_cost) AS plan_cost_sum
  FROM subscriptions GROUP BY 1;
CREATE VIEW analytics_user_actual AS
  SELECT user_id, count(*) AS subscription_count, sum(plan_cost) AS plan_cost_sum
  FROM subscriptions GROUP BY user_id;

-- Each connection claims a slot of its own for its lifetime (a session-level advisory lock) and
-- remembers it in a session setting, so the trigger's usual cost is reading that setting, and no
-- two connections write the same totals row: no waiting on each other, no deadlock on totals.
-- Beyond 16 writing connections, the rest share pid-chosen slots: they queue on the row, still exact.
CREATE FUNCTION analytics_claim_slot() RETURNS smallint LANGUAGE plpgsql AS $$
DECLARE
  start_slot int := pg_backend_pid() % 16;
  held       int;
BEGIN
  -- A slot claimed earlier in this session whose setting a rolled-back transaction undid.
  -- 1634627169 ('anal' in ASCII) is the advisory-lock class of these slots.
  SELECT objid INTO held FROM pg_locks
  WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND classid = 1634627169 AND objsubid = 2
  LIMIT 1;
  IF held IS NULL THEN
    FOR i IN 0..15 LOOP
      IF pg_try_advisory_lock(1634627169, (start_slot + i) % 16) THEN
        held := (start_slot + i) % 16;
        EXIT;
      END IF;
    END LOOP;
  END IF;
  PERFORM set_config('analytics.slot', coalesce(held, start_slot)::text, false);
  RETURN coalesce(held, start_slot);
END $$;

-- The three trigger functions differ only in where their signed changes come from (+1 and the cost
-- for each new row, -1 and minus the cost for each old row), so they are made from one template and
-- the arithmetic is written once. Each applies every change of its statement in one SQL statement:
-- changes are grouped per key first (a bulk statement costs one upsert per key, not per row), the
-- three upserts run in one fixed order, and each takes its rows in key order, so two writers cannot
-- deadlock on aggregate rows. PL/pgSQL caches the plans: no planning per write.
DO $do$
DECLARE
  template constant text := $template$
    CREATE FUNCTION %I() RETURNS trigger LANGUAGE plpgsql AS $fn$
    DECLARE
      emptied bigint;
    BEGIN
      WITH signed (user_id, status, billing_period, month, n, cost) AS (%s),
      changes AS (
        SELECT user_id, status, billing_period, month, sum(n) AS n, sum(cost) AS cost
        FROM signed
        GROUP BY user_id, status, billing_period, month
        -- An update of other columns (plan_name, end_date) nets to nothing: no row is touched.
        HAVING sum(n) <> 0 OR sum(cost) <> 0
      ),
      slot AS (
        SELECT coalesce(nullif(current_setting('analytics.slot', true), '')::smallint, analytics_claim_slot()) AS s
        WHERE EXISTS (SELECT FROM changes)
      ),
      status_applied AS (
        INSERT INTO analytics_status_totals AS t (status, billing_period, slot, subscription_count, plan_cost_sum)
        SELECT c.status, c.billing_period, slot.s, sum(c.n), sum(c.cost)
        FROM changes c CROSS JOIN slot
        GROUP BY c.status, c.billing_period, slot.s
        HAVING sum(c.n) <> 0 OR sum(c.cost) <> 0
        ORDER BY c.status, c.billing_period
        ON CONFLICT (status, billing_period, slot) DO UPDATE
          SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
              plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum
      ),
      month_applied AS (
        INSERT INTO analytics_month_revenue AS t (month, slot, subscription_count, plan_cost_sum)
        SELECT c.month, slot.s, sum(c.n), sum(c.cost)
        FROM changes c CROSS JOIN slot
        GROUP BY c.month, slot.s
        HAVING sum(c.n) <> 0 OR sum(c.cost) <> 0
        ORDER BY c.month
        ON CONFLICT (month, slot) DO UPDATE
          SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
              plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum
      ),
      user_applied AS (
        INSERT INTO analytics_user_totals AS t (user_id, subscription_count, plan_cost_sum)
        SELECT c.user_id, sum(c.n), sum(c.cost)
        FROM changes c
        GROUP BY c.user_id
        HAVING sum(c.n) <> 0 OR sum(c.cost) <> 0
        ORDER BY c.user_id
        ON CONFLICT (user_id) DO UPDATE
          SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
              plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum
        RETURNING t.subscription_count
      )
      SELECT count(*) FILTER (WHERE subscription_count = 0) INTO emptied FROM user_applied;
      IF emptied > 0 THEN
        -- Users left without subscriptions leave the ranking (rows this statement already holds).
        %s
      END IF;
      RETURN NULL;
    END $fn$
  $template$;
  added   constant text := $$SELECT user_id, status, billing_period, date_trunc('month', start_date)::date, 1, plan_cost FROM new_rows$$;
  removed constant text := $$SELECT user_id, status, billing_period, date_trunc('month', start_date)::date, -1, -plan_cost FROM old_rows$$;
  drop_emptied_users constant text :=
    $$DELETE FROM analytics_user_totals t WHERE t.subscription_count = 0 AND t.user_id IN (SELECT user_id FROM old_rows);$$;
BEGIN
  EXECUTE format(template, 'analytics_subscriptions_inserted', added, 'NULL; -- inserts only add');
  EXECUTE format(template, 'analytics_subscriptions_deleted', removed, drop_emptied_users);
  EXECUTE format(template, 'analytics_subscriptions_updated', removed || ' UNION ALL ' || added, drop_emptied_users);
END $do$;

CREATE FUNCTION analytics_subscriptions_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM analytics_status_totals;
  DELETE FROM analytics_month_revenue;
  DELETE FROM analytics_user_totals;
  RETURN NULL;
END $$;

CREATE TRIGGER analytics_inserted AFTER INSERT ON subscriptions
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION analytics_subscriptions_inserted();
CREATE TRIGGER analytics_updated AFTER UPDATE ON subscriptions
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION analytics_subscriptions_updated();
CREATE TRIGGER analytics_deleted AFTER DELETE ON subscriptions
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION analytics_subscriptions_deleted();
CREATE TRIGGER analytics_truncated AFTER TRUNCATE ON subscriptions
  FOR EACH STATEMENT EXECUTE FUNCTION analytics_subscriptions_truncated();

-- Recomputes every aggregate set-based from the base tables (after a bulk load with triggers
-- disabled). SHARE mode lets readers through but holds writers until the new totals commit.
CREATE FUNCTION analytics_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  LOCK TABLE subscriptions IN SHARE MODE;
  DELETE FROM analytics_status_totals;
  DELETE FROM analytics_month_revenue;
  DELETE FROM analytics_user_totals;
  INSERT INTO analytics_status_totals SELECT status, billing_period, 0, subscription_count, plan_cost_sum FROM analytics_status_actual;
  INSERT INTO analytics_month_revenue SELECT month, 0, subscription_count, plan_cost_sum FROM analytics_month_actual;
  INSERT INTO analytics_user_totals SELECT user_id, subscription_count, plan_cost_sum FROM analytics_user_actual;
END $$;

-- Compares every aggregate (summed over its slots) with the base tables, repairs the keys that
-- differ (their slots collapse into slot 0 with the actual value), and returns what was wrong.
CREATE FUNCTION analytics_reconcile()
RETURNS TABLE (aggregate text, key text, stored_count bigint, stored_sum numeric, actual_count bigint, actual_sum numeric)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  LOCK TABLE subscriptions IN SHARE MODE;
  IF to_regclass('pg_temp.analytics_differences') IS NOT NULL THEN
    DROP TABLE pg_temp.analytics_differences; -- a second call in the same transaction
  END IF;
  CREATE TEMP TABLE analytics_differences ON COMMIT DROP AS
  WITH status_stored AS (
    SELECT status, billing_period, sum(subscription_count)::bigint AS n, sum(plan_cost_sum) AS total
    FROM analytics_status_totals GROUP BY status, billing_period
  ), month_stored AS (
    SELECT month, sum(subscription_count)::bigint AS n, sum(plan_cost_sum) AS total
    FROM analytics_month_revenue GROUP BY month
  )
  SELECT 'status'::text AS aggregate, coalesce(s.status, a.status) || '/' || coalesce(s.billing_period, a.billing_period) AS key,
         coalesce(s.status, a.status) AS status, coalesce(s.billing_period, a.billing_period) AS billing_period,
         NULL::date AS month, NULL::bigint AS user_id,
         coalesce(s.n, 0) AS stored_count, coalesce(s.total, 0) AS stored_sum,
         coalesce(a.subscription_count, 0) AS actual_count, coalesce(a.plan_cost_sum, 0) AS actual_sum
  FROM status_stored s FULL JOIN analytics_status_actual a USING (status, billing_period)
  WHERE (coalesce(s.n, 0), coalesce(s.total, 0)) IS DISTINCT FROM (coalesce(a.subscription_count, 0), coalesce(a.plan_cost_sum, 0))
  UNION ALL
  SELECT 'month', to_char(coalesce(s.month, a.month), 'YYYY-MM'), NULL, NULL, coalesce(s.month, a.month), NULL,
         coalesce(s.n, 0), coalesce(s.total, 0), coalesce(a.subscription_count, 0), coalesce(a.plan_cost_sum, 0)
  FROM month_stored s FULL JOIN analytics_month_actual a USING (month)
  WHERE (coalesce(s.n, 0), coalesce(s.total, 0)) IS DISTINCT FROM (coalesce(a.subscription_count, 0), coalesce(a.plan_cost_sum, 0))
  UNION ALL
  -- A stored user row with no subscriptions is wrong even at zero: it must not exist.
  SELECT 'user', coalesce(s.user_id, a.user_id)::text, NULL, NULL, NULL, coalesce(s.user_id, a.user_id),
         coalesce(s.subscription_count, 0), coalesce(s.plan_cost_sum, 0), coalesce(a.subscription_count, 0), coalesce(a.plan_cost_sum, 0)
  FROM analytics_user_totals s FULL JOIN analytics_user_actual a USING (user_id)
  WHERE s.user_id IS NULL OR a.user_id IS NULL
     OR (s.subscription_count, s.plan_cost_sum) IS DISTINCT FROM (a.subscription_count, a.plan_cost_sum);

  DELETE FROM analytics_status_totals t USING analytics_differences d
  WHERE d.aggregate = 'status' AND t.status = d.status AND t.billing_period = d.billing_period;
  INSERT INTO analytics_status_totals
  SELECT d.status, d.billing_period, 0, d.actual_count, d.actual_sum FROM analytics_differences d WHERE d.aggregate = 'status';

  DELETE FROM analytics_month_revenue t USING analytics_differences d
  WHERE d.aggregate = 'month' AND t.month = d.month;
  INSERT INTO analytics_month_revenue
  SELECT d.month, 0, d.actual_count, d.actual_sum FROM analytics_differences d WHERE d.aggregate = 'month';

  DELETE FROM analytics_user_totals t USING analytics_differences d
  WHERE d.aggregate = 'user' AND t.user_id = d.user_id;
  INSERT INTO analytics_user_totals
  SELECT d.user_id, d.actual_count, d.actual_sum FROM analytics_differences d WHERE d.aggregate = 'user' AND d.actual_count > 0;

  RETURN QUERY
  SELECT d.aggregate, d.key, d.stored_count, d.stored_sum, d.actual_count, d.actual_sum
  FROM analytics_differences d ORDER BY d.aggregate, d.key;
END $$;
