-- Versions for the documents the service computes from the maintained aggregates (issues 17 and
-- 13: GET /api/analytics and GET /api/analytics/mrr): numbers that go up in the same transaction
-- as every change to what those documents read, so that the service can keep the last document it
-- computed and send it again, exact, for as long as no number has moved (src/resources/kept.ts).
-- The check costs one small read instead of the whole document.
--
-- One row per analytics slot (0002: each writing connection has a slot of its own), so concurrent
-- writers do not queue on one row; the slot -1 is for maintenance (rebuilds, repairs, truncates,
-- the seed). Versions only go up and rows are never deleted: the sum of all rows is higher in any
-- later snapshot that saw one more change, and equal only if it saw none.
CREATE TABLE analytics_versions (
  slot    smallint PRIMARY KEY CHECK (slot BETWEEN -1 AND 15),
  version bigint   NOT NULL DEFAULT 0 CHECK (version >= 0)
);
INSERT INTO analytics_versions (slot) SELECT generate_series(-1, 15);
-- A missing row would make its slot's bumps update nothing: rows stay.
CREATE FUNCTION analytics_versions_stay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'analytics_versions rows are never deleted (the kept documents depend on them)';
END $$;
CREATE TRIGGER analytics_versions_stay BEFORE DELETE OR TRUNCATE ON analytics_versions
  FOR EACH STATEMENT EXECUTE FUNCTION analytics_versions_stay();

-- What the documents read: the analytics aggregates (0002), the history's status changes (0010:
-- mrr) and MRR movements (0010: the MRR report), the names and emails of the top 5 users, and the
-- current UTC month (the windows end there: part of the key, kept.ts). The aggregates and the
-- history's aggregates change with the subscriptions, whose triggers bump their slot's version
-- (below) whenever a row changes a column any of them reads (user, status, billing period, plan
-- cost, start month): a user's MRR, and so every movement, is a function of those.
--
-- A user's new name or email bumps the slot's version too (any user: whether one is in the top 5
-- is not known without reading it). The API changes names and emails in a transaction of their own
-- (PATCH /api/users/{id}), so this lock on the slot's row is never held while waiting for an
-- aggregate row. Reading the names in the key instead costs every check 5 index lookups and a
-- json_agg: 0.13 ms a check against 0.10 for a primary-key read.
CREATE FUNCTION analytics_versions_bump_slot() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE analytics_versions SET version = version + 1
  WHERE slot = coalesce(nullif(current_setting('analytics.slot', true), '')::smallint, analytics_claim_slot());
  RETURN NULL;
END $$;
CREATE TRIGGER analytics_version_user_named AFTER UPDATE OF name, email ON users
  FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.email IS DISTINCT FROM NEW.email)
  EXECUTE FUNCTION analytics_versions_bump_slot();

-- Any other write to those tables (a rebuild, a repair by a reconcile, a hand-made correction, a
-- truncate) bumps the maintenance version. A write through the API reaches the analytics
-- aggregates at trigger depth 1 (the triggers on subscriptions) and the history's at depth 2 (the
-- trigger on the events those write), and has bumped its slot already: it pays nothing here but
-- the WHEN test. An event inserted by hand (depth 0) reaches the history's at depth 1: bumped. A
-- TRUNCATE bumps at any depth (the truncate triggers of subscriptions and events empty the
-- aggregates from inside a trigger).
CREATE FUNCTION analytics_versions_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE analytics_versions SET version = version + 1 WHERE slot = -1;
  RETURN NULL;
END $$;

DO $do$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['analytics_status_totals', 'analytics_month_revenue', 'analytics_user_totals', 'history_status_changes', 'history_mrr_movements'] LOOP
    EXECUTE format('CREATE TRIGGER analytics_version_written AFTER INSERT OR UPDATE OR DELETE ON %I '
                   'FOR EACH STATEMENT WHEN (pg_trigger_depth() < %s) EXECUTE FUNCTION analytics_versions_bump()',
                   t, CASE WHEN t LIKE 'history\_%' THEN 2 ELSE 1 END);
    EXECUTE format('CREATE TRIGGER analytics_version_truncated AFTER TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION analytics_versions_bump()', t);
  END LOOP;
END $do$;
CREATE TRIGGER analytics_version_truncated AFTER TRUNCATE ON subscriptions
  FOR EACH STATEMENT EXECUTE FUNCTION analytics_versions_bump();
CREATE TRIGGER analytics_version_truncated AFTER TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION analytics_versions_bump();

-- 0015's trigger functions on subscriptions, carried forward as they are, with one statement more
-- where they have changed an aggregate: their slot's version goes up, last, after the aggregate
-- rows (the order 0015 keeps for writers that share a slot). An update that changes no column
-- the answer reads returns before it, as before: it bumps nothing. The bulk path bumps whenever
-- it runs: a statement whose changes net to nothing in the aggregates can still change mrr (two
-- yearly plans whose costs swap cents round differently), and the version must not miss that.
DO $do$
DECLARE
  template constant text := $template$
    CREATE OR REPLACE FUNCTION %I() RETURNS trigger LANGUAGE plpgsql AS $fn$
    DECLARE
      emptied bigint;
      one record;
      my_slot smallint;
      remaining bigint;
    BEGIN
      %s
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
      -- Reached only when a row changed a column the answer reads (0023): the version goes up.
      UPDATE analytics_versions SET version = version + 1
      WHERE slot = coalesce(nullif(current_setting('analytics.slot', true), '')::smallint, analytics_claim_slot());
      RETURN NULL;
    END $fn$
  $template$;
  -- One row of `rows` (count(*) OVER () says whether it is the only one) applied with `sign`.
  single_row constant text := $single$
      SELECT r.user_id, r.status, r.billing_period, date_trunc('month', r.start_date)::date AS month, r.plan_cost,
             count(*) OVER () AS n
      INTO one FROM %1$s r LIMIT 1;
      IF one.n IS NULL THEN
        RETURN NULL;
      ELSIF one.n = 1 THEN
        my_slot := coalesce(nullif(current_setting('analytics.slot', true), '')::smallint, analytics_claim_slot());
        INSERT INTO analytics_user_totals AS t (user_id, subscription_count, plan_cost_sum)
        VALUES (one.user_id, %2$s, %2$s * one.plan_cost)
        ON CONFLICT (user_id) DO UPDATE
          SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
              plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum
        RETURNING t.subscription_count INTO remaining;
        INSERT INTO analytics_month_revenue AS t (month, slot, subscription_count, plan_cost_sum)
        VALUES (one.month, my_slot, %2$s, %2$s * one.plan_cost)
        ON CONFLICT (month, slot) DO UPDATE
          SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
              plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum;
        INSERT INTO analytics_status_totals AS t (status, billing_period, slot, subscription_count, plan_cost_sum)
        VALUES (one.status, one.billing_period, my_slot, %2$s, %2$s * one.plan_cost)
        ON CONFLICT (status, billing_period, slot) DO UPDATE
          SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
              plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum;
        IF remaining = 0 THEN
          DELETE FROM analytics_user_totals t WHERE t.user_id = one.user_id AND t.subscription_count = 0;
        END IF;
        UPDATE analytics_versions SET version = version + 1 WHERE slot = my_slot;
        RETURN NULL;
      END IF;
  $single$;
  -- Every old row has a new row with its id and the same aggregated values: the aggregates'
  -- inputs are the same multiset before and after, so nothing changes.
  unchanged constant text := $unchanged$
      IF NOT EXISTS (
        SELECT FROM old_rows o LEFT JOIN new_rows n ON n.id = o.id
        WHERE n.id IS NULL
           OR (o.user_id, o.status, o.billing_period, date_trunc('month', o.start_date), o.plan_cost)
              IS DISTINCT FROM (n.user_id, n.status, n.billing_period, date_trunc('month', n.start_date), n.plan_cost)) THEN
        RETURN NULL;
      END IF;
  $unchanged$;
  added   constant text := $$SELECT user_id, status, billing_period, date_trunc('month', start_date)::date, 1, plan_cost FROM new_rows$$;
  removed constant text := $$SELECT user_id, status, billing_period, date_trunc('month', start_date)::date, -1, -plan_cost FROM old_rows$$;
  drop_emptied_users constant text :=
    $$DELETE FROM analytics_user_totals t WHERE t.subscription_count = 0 AND t.user_id IN (SELECT user_id FROM old_rows);$$;
BEGIN
  EXECUTE format(template, 'analytics_subscriptions_inserted', format(single_row, 'new_rows', '1'), added, 'NULL; -- inserts only add');
  EXECUTE format(template, 'analytics_subscriptions_deleted', format(single_row, 'old_rows', '-1'), removed, drop_emptied_users);
  EXECUTE format(template, 'analytics_subscriptions_updated', unchanged, removed || ' UNION ALL ' || added, drop_emptied_users);
END $do$;
