-- The seed's value log (history_expected_user_values(true), in history_analytics_rebuild(true)) in
-- one sort of the subscriptions: a running sum per user by start date over the rows themselves,
-- keeping one row per (user, day), instead of grouping by (user, day) first (a hash of ~500,000
-- numeric sums, then the same sort). Same rows (compared with EXCEPT both ways at 500k); backend CPU
-- of history_snapshots_rebuild(true) 2.99-3.14 -> 2.28-2.49 s, 3 interleaved rounds at load 12-14. A
-- sequential scan and a sort: reading subscriptions through the user_id index to save the sort
-- visited the table in random order and took longer.
CREATE OR REPLACE FUNCTION history_expected_user_values(implied boolean)
RETURNS TABLE (user_id bigint, effective_at timestamptz, day date, total numeric, subscription_count bigint)
LANGUAGE plpgsql STABLE SET enable_indexscan = off SET enable_bitmapscan = off AS $$
BEGIN
  IF implied THEN
    RETURN QUERY
    SELECT DISTINCT ON (s.user_id, s.start_date) s.user_id, s.start_date::timestamp AT TIME ZONE 'UTC', s.start_date,
           sum(s.plan_cost) OVER u, count(*) OVER u
    FROM subscriptions s
    WINDOW u AS (PARTITION BY s.user_id ORDER BY s.start_date);
  ELSE
    RETURN QUERY
    SELECT x.user_id, x.at, (x.at AT TIME ZONE 'UTC')::date, sum(x.dc) OVER u, (sum(x.dn) OVER u)::bigint
    FROM (SELECT c.user_id, c.effective_at AS at, sum(c.sign * c.plan_cost) AS dc, sum(c.sign) AS dn
          FROM pg_temp.history_actual_changes c GROUP BY 1, 2 HAVING sum(c.sign * c.plan_cost) <> 0 OR sum(c.sign) <> 0) x
    WINDOW u AS (PARTITION BY x.user_id ORDER BY x.at);
  END IF;
END $$;
