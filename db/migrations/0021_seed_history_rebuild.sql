-- The seed's history aggregates (history_analytics_rebuild(true)) computed straight from the
-- generated subscriptions, in whole cents, in one sort of the subscriptions' changes, instead of
-- re-deriving them with 0010's and 0013's general rebuild (hash aggregates of numeric sums per
-- user and month, a second sort for the value log, a snapshot function called once per day).
-- The seed's implied history (0006, history_record_implied()): each subscription created at its
-- start_date (00:00 UTC), active until it ended if it did, and a canceled or expired one changed
-- from active at its end_date; plan_cost never changes and nothing is deleted. So:
-- - every change takes effect at a day's start: the 'day' and 'instant' buckets are the same;
-- - an ending moves no plan_cost and no count: per start month, revenue changes only at starts,
--   and the value log (plan_cost sum and count per user) has a row per user and start date;
-- - a user's value only grows: a user changed on day t who is not among that day's 16 highest
--   changed values has 16 users above them from then on, so each day's top list is the previous
--   one, less the users changed that day, merged with that day's 16 highest values.
-- Same rows, same numeric scales as the general rebuild: a sum of plan_costs has two decimals; an
-- MRR sum has two when some active side entered it, else it is the 0 of history_mrr(); a movement
-- sum has two when some user moved, else 0. history_analytics_reconcile() reads the events and must
-- agree.

CREATE FUNCTION history_rebuild_implied() RETURNS void LANGUAGE plpgsql SET work_mem = '256MB' AS $$
DECLARE
  k constant integer := history_top_size();
  d date;
  list_user bigint[] := '{}';
  list_total numeric[] := '{}';
  list_until date[] := '{}';
  first_full date;
BEGIN
  LOCK TABLE events IN SHARE MODE;
  TRUNCATE history_status_changes, history_revenue_changes, history_user_months, history_mrr_movements,
           history_user_values, history_snapshot_days, history_top_snapshots, history_status_snapshots, history_revenue_snapshots;

  -- Totals per status and billing period, and plan_cost per start month: every side of every change
  -- summed per day (a few thousand groups), then per bucket. Cents as integers: summing numerics
  -- costs several times more.
  WITH per_sub AS NOT MATERIALIZED (
    SELECT s.start_date, s.end_date, s.status, s.billing_period, c.cost, c.ended,
           CASE WHEN s.billing_period = 'year' THEN (c.cost + 6) / 12 ELSE c.cost END AS mrr
    FROM subscriptions s
    CROSS JOIN LATERAL (SELECT (s.plan_cost * 100)::integer AS cost, s.status IN ('canceled', 'expired') AND s.end_date IS NOT NULL AS ended) c
  ), starts AS MATERIALIZED (
    SELECT p.start_date AS day, p.status, p.billing_period, p.ended, count(*) AS n, sum(p.cost) AS cost, sum(p.mrr) AS mrr
    FROM per_sub p GROUP BY 1, 2, 3, 4
  ), sides AS (
    -- Created (active until it ended), then ended: -1 active, +1 canceled or expired.
    SELECT x.day, CASE WHEN x.ended THEN 'active' ELSE x.status END AS status, x.billing_period, x.n, x.cost,
           CASE WHEN x.ended OR x.status = 'active' THEN x.mrr ELSE 0 END AS mrr
    FROM starts x
    UNION ALL
    SELECT e.day, a.status, e.billing_period, a.sign * e.n, a.sign * e.cost, CASE WHEN a.sign < 0 THEN -e.mrr ELSE 0 END
    FROM (SELECT p.end_date AS day, p.status, p.billing_period, count(*) AS n, sum(p.cost) AS cost, sum(p.mrr) AS mrr
          FROM per_sub p WHERE p.ended GROUP BY 1, 2, 3) e
    CROSS JOIN LATERAL (VALUES ('active', -1), (e.status, 1)) AS a (status, sign)
  ), status_written AS (
    INSERT INTO history_status_changes (span, bucket, status, billing_period, slot, subscription_count, plan_cost_sum, mrr_sum)
    SELECT b.span, b.bucket, x.status, x.billing_period, 0, sum(x.n), sum(x.cost) * 0.01,
           CASE WHEN x.status = 'active' THEN sum(x.mrr) * 0.01 ELSE 0 END
    FROM sides x
    CROSS JOIN LATERAL (VALUES ('month', date_trunc('month', x.day::timestamp) AT TIME ZONE 'UTC'), ('day', x.day::timestamp AT TIME ZONE 'UTC'),
                               ('instant', x.day::timestamp AT TIME ZONE 'UTC')) AS b (span, bucket)
    GROUP BY 1, 2, 3, 4
    HAVING sum(x.n) <> 0 OR sum(x.cost) <> 0 OR sum(x.mrr) <> 0
  )
  INSERT INTO history_revenue_changes (span, bucket, start_month, slot, subscription_count, plan_cost_sum)
  SELECT b.span, b.bucket, date_trunc('month', x.day::timestamp)::date, 0, sum(x.n), sum(x.cost) * 0.01
  FROM starts x
  CROSS JOIN LATERAL (VALUES ('month', date_trunc('month', x.day::timestamp) AT TIME ZONE 'UTC'), ('day', x.day::timestamp AT TIME ZONE 'UTC'),
                             ('instant', x.day::timestamp AT TIME ZONE 'UTC')) AS b (span, bucket)
  GROUP BY 1, 2, 3
  HAVING sum(x.n) <> 0 OR sum(x.cost) <> 0;

  -- Per user: every side in one sort by (user, month, day, starts first). Running sums per user give
  -- the figures at each month's end (its last row) and at each start date (its last start); the
  -- running sums at the end of the months before give the month's start. A month is recorded when
  -- something in it changed (a month without a change repeats the figures before it).
  ALTER TABLE history_user_values DROP CONSTRAINT history_user_values_pkey;
  DROP INDEX history_user_values_day_idx;
  WITH per_row AS MATERIALIZED (
    SELECT w.*,
           coalesce(last_value(w.r_mrr) OVER before, 0) AS p_mrr, coalesce(last_value(w.r_cost) OVER before, 0) AS p_cost,
           coalesce(last_value(w.r_n) OVER before, 0) AS p_n, coalesce(last_value(w.r_rise) OVER before, 0) AS p_rise,
           coalesce(bool_or(w.month_end AND w.r_mrr > 0) OVER before, false) AS ever
    FROM (
      SELECT x.user_id, x.month, x.day, x.kind,
             sum(x.mrr) OVER u AS r_mrr, sum(x.cost) OVER u AS r_cost, sum(x.n) OVER u AS r_n, sum(x.rise) OVER u AS r_rise,
             bool_or(x.active) OVER u AS r_active,
             lead(x.month) OVER u IS DISTINCT FROM x.month AS month_end,
             x.kind = 0 AND NOT coalesce(lead(x.day) OVER u = x.day AND lead(x.kind) OVER u = 0, false) AS value_row
      FROM (
        SELECT s.user_id, date_trunc('month', s.start_date::timestamp)::date AS month, s.start_date AS day, 0 AS kind,
               CASE WHEN c.ended OR s.status = 'active' THEN c.mrr ELSE 0 END AS mrr, c.cost, 1 AS n, c.cost AS rise, c.ended OR s.status = 'active' AS active
        FROM subscriptions s
        CROSS JOIN LATERAL (SELECT (s.plan_cost * 100)::integer AS cost0, s.status IN ('canceled', 'expired') AND s.end_date IS NOT NULL AS ended) c0
        CROSS JOIN LATERAL (SELECT c0.cost0 AS cost, c0.ended, CASE WHEN s.billing_period = 'year' THEN (c0.cost0 + 6) / 12 ELSE c0.cost0 END AS mrr) c
        UNION ALL
        -- Ended: its MRR goes; its plan_cost counts again in the month's bound (the +side of the change).
        SELECT s.user_id, date_trunc('month', s.end_date::timestamp)::date, s.end_date, 1,
               -CASE WHEN s.billing_period = 'year' THEN (c.cost + 6) / 12 ELSE c.cost END, 0, 0, c.cost, true
        FROM subscriptions s
        CROSS JOIN LATERAL (SELECT (s.plan_cost * 100)::integer AS cost) c
        WHERE s.status IN ('canceled', 'expired') AND s.end_date IS NOT NULL
      ) x
      WINDOW u AS (PARTITION BY x.user_id ORDER BY x.month, x.day, x.kind)
    ) w
    WINDOW before AS (PARTITION BY w.user_id ORDER BY w.month GROUPS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
  ), months AS NOT MATERIALIZED (
    SELECT p.user_id, p.month, p.r_mrr, p.r_cost, p.r_n, p.r_active, p.p_mrr, p.p_cost + p.r_rise - p.p_rise AS max_cost, p.ever
    FROM per_row p
    WHERE p.month_end AND (p.r_mrr <> p.p_mrr OR p.r_cost <> p.p_cost OR p.r_n <> p.p_n OR p.r_rise <> p.p_rise)
  ), months_written AS (
    INSERT INTO history_user_months (user_id, month, mrr, plan_cost_sum, subscription_count, plan_cost_max)
    SELECT m.user_id, m.month, CASE WHEN m.r_active THEN m.r_mrr * 0.01 ELSE 0 END, m.r_cost * 0.01, m.r_n, m.max_cost * 0.01
    FROM months m
  ), values_written AS (
    INSERT INTO history_user_values (user_id, effective_at, day, total, subscription_count)
    SELECT p.user_id, p.day::timestamp AT TIME ZONE 'UTC', p.day, p.r_cost * 0.01, p.r_n
    FROM per_row p WHERE p.value_row
  )
  INSERT INTO history_mrr_movements (month, slot, new, expansion, contraction, churn, reactivation, new_customers, reactivated_customers, churned_customers)
  SELECT y.month, 0,
         CASE WHEN y.new_n > 0 THEN y.new * 0.01 ELSE 0 END, CASE WHEN y.expansion_n > 0 THEN y.expansion * 0.01 ELSE 0 END,
         CASE WHEN y.contraction_n > 0 THEN y.contraction * 0.01 ELSE 0 END, CASE WHEN y.churn_n > 0 THEN y.churn * 0.01 ELSE 0 END,
         CASE WHEN y.reactivation_n > 0 THEN y.reactivation * 0.01 ELSE 0 END, y.new_n, y.reactivation_n, y.churn_n
  FROM (
    -- history_movement() of (start, end, ever), in cents.
    SELECT z.month,
           sum(z.e) FILTER (WHERE z.s = 0 AND z.e > 0 AND NOT z.ever) AS new, count(*) FILTER (WHERE z.s = 0 AND z.e > 0 AND NOT z.ever) AS new_n,
           sum(z.e - z.s) FILTER (WHERE z.s > 0 AND z.e > z.s) AS expansion, count(*) FILTER (WHERE z.s > 0 AND z.e > z.s) AS expansion_n,
           sum(z.s - z.e) FILTER (WHERE z.e > 0 AND z.e < z.s) AS contraction, count(*) FILTER (WHERE z.e > 0 AND z.e < z.s) AS contraction_n,
           sum(z.s) FILTER (WHERE z.s > 0 AND z.e = 0) AS churn, count(*) FILTER (WHERE z.s > 0 AND z.e = 0) AS churn_n,
           sum(z.e) FILTER (WHERE z.s = 0 AND z.e > 0 AND z.ever) AS reactivation, count(*) FILTER (WHERE z.s = 0 AND z.e > 0 AND z.ever) AS reactivation_n
    FROM (SELECT m.month, m.p_mrr AS s, m.r_mrr AS e, m.ever FROM months m) z
    GROUP BY z.month
  ) y;
  ALTER TABLE history_user_values ADD PRIMARY KEY (user_id, effective_at);
  CREATE INDEX history_user_values_day_idx ON history_user_values (day, total DESC, user_id);

  -- Snapshot days: every day with a change (every value-log row is at a start date, which has a
  -- revenue row); the totals before each from 0013's running sums.
  INSERT INTO history_snapshot_days (day, top_complete)
  SELECT x.day, true FROM (
    SELECT (c.bucket AT TIME ZONE 'UTC')::date AS day FROM history_status_changes c WHERE c.span = 'instant'
    UNION SELECT (c.bucket AT TIME ZONE 'UTC')::date FROM history_revenue_changes c WHERE c.span = 'instant') x;
  INSERT INTO history_status_snapshots SELECT * FROM history_expected_status_snapshots();
  INSERT INTO history_revenue_snapshots SELECT * FROM history_expected_revenue_snapshots();

  -- Top lists, day by day: the list before day d, written; then d's changes applied (each listed
  -- user keeps their value until their next change, `until`).
  FOR d IN SELECT h.day FROM history_snapshot_days h ORDER BY h.day LOOP
    IF cardinality(list_user) > 0 THEN
      INSERT INTO history_top_snapshots (day, user_id, total) SELECT d, x.u, x.t FROM unnest(list_user, list_total) AS x (u, t);
    END IF;
    IF first_full IS NULL AND cardinality(list_user) >= k THEN
      first_full := d;
    END IF;
    SELECT coalesce(array_agg(y.u ORDER BY y.t DESC, y.u), '{}'), coalesce(array_agg(y.t ORDER BY y.t DESC, y.u), '{}'),
           coalesce(array_agg(y.until ORDER BY y.t DESC, y.u), '{}')
    INTO list_user, list_total, list_until
    FROM (
      SELECT z.* FROM (
        SELECT x.u, x.t, x.until FROM unnest(list_user, list_total, list_until) AS x (u, t, until) WHERE x.until IS NULL OR x.until > d
        UNION ALL
        SELECT c.user_id, c.total, (SELECT n.day FROM history_user_values n WHERE n.user_id = c.user_id AND n.effective_at > c.effective_at
                                    ORDER BY n.effective_at LIMIT 1)
        FROM (SELECT v.user_id, v.total, v.effective_at FROM history_user_values v WHERE v.day = d ORDER BY v.total DESC, v.user_id LIMIT k) c
      ) z ORDER BY z.t DESC, z.u LIMIT k
    ) y;
  END LOOP;
  -- Complete while fewer than k users had subscriptions (then the list holds them all).
  UPDATE history_snapshot_days SET top_complete = false WHERE day >= first_full;
END $$;

-- The seed's call: implied, the function above; otherwise 0013's rebuild from the events, as before.
CREATE OR REPLACE FUNCTION history_analytics_rebuild(implied boolean DEFAULT false) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF implied THEN
    PERFORM history_rebuild_implied();
  ELSE
    PERFORM history_analytics_rebuild_aggregates(false);
    PERFORM history_snapshots_rebuild(false, true);
  END IF;
END $$;
