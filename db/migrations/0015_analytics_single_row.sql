-- The write cost of 0002's analytics triggers (issues 12 and 13). Most writes change one row, and
-- for one row 0002's set-based statement (the transition table grouped per key, then three upserts
-- in one statement, each aggregating and sorting its input) does more than the change needs. Each
-- trigger now looks at its transition table first:
-- - one inserted or deleted row: three plain upserts with the row's values, one key each, in the
--   order 0002's statement takes its rows (its main query reads the per-user upsert first, then
--   PostgreSQL completes the other two, the later one in the WITH first: user, month, status). Two
--   writers sharing a slot (more than 16 writing connections) then never lock the same two rows in
--   opposite orders (a first version in the order status, month, user failed the 16 parallel SQL
--   writers of test/analytics.test.ts with two deadlocks);
-- - an update that changes no column the aggregates read (plan_name, end_date, a start_date in the
--   same month, ...): nothing to write, and no statement runs (0002's netted to nothing, but only
--   after grouping both transition tables);
-- - anything else: 0002's statement, unchanged (bulk statements still pay once per key).
-- docs/analytics.md ("What a write costs") has the measurements.
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
