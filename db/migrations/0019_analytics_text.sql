-- GET /api/analytics?as_of= and GET /api/analytics/mrr as the JSON text the API sends, each in one
-- call. as_of: the inputs of 0013's history_analytics_inputs (the latest snapshot day up to t plus
-- that day's per-instant rows, the top users with their identity at t) go straight into the
-- document, in the response's field order. 0010's history_analytics_at built the inputs as jsonb,
-- took them apart again and built a jsonb document, which the service parsed and laid out again.
-- At 500k (pgbench, prepared, 1 client, a random past instant per call, 4 interleaved rounds of
-- 3 s, load 3.5-5.7): history_analytics_at 1.06 ms median (0.73-1.79), this 0.65 (0.41-0.88).
-- The MRR report costs PostgreSQL about what 0010's rows did (0.31 ms median against 0.29), and the
-- service no longer formats 12 x 16 fields and serializes them.
-- Money as numeric(30, 2) text and by_status in the status enum's order, as history_analytics_at
-- and the service wrote them (both of 0010's functions stay, for callers in SQL); the bodies are
-- byte for byte what the service sent before (checked at 500k on 6 reports and instants).

-- The elements of the documents' arrays, so that row_to_json names their fields.
CREATE TYPE history_json_month AS (month text, revenue text);
CREATE TYPE history_json_top_user AS (user_id bigint, name text, email text, total_value text);
CREATE TYPE history_json_status AS (status text, count bigint, revenue text);
CREATE TYPE history_json_mrr_month AS (
  month text, starting_mrr text, new text, expansion text, contraction text, churn text, reactivation text, ending_mrr text,
  starting_customers bigint, customers bigint, new_customers bigint, reactivated_customers bigint, churned_customers bigint,
  customer_churn_rate text, revenue_churn_rate text, arpa text);

CREATE FUNCTION history_analytics_text(t timestamptz, plain boolean) RETURNS text LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
  first_month constant date := (date_trunc('month', t AT TIME ZONE 'UTC') - interval '11 months')::date;
  last_month constant date := date_trunc('month', t AT TIME ZONE 'UTC')::date;
  p date;
  p_start timestamptz;
BEGIN
  SELECT h.day INTO p FROM history_snapshot_days h WHERE h.day <= (t AT TIME ZONE 'UTC')::date ORDER BY h.day DESC LIMIT 1;
  p_start := p::timestamp AT TIME ZONE 'UTC';
  RETURN (
  -- plain: the same inputs from the events alone (0010's history_analytics_inputs_plain), called
  -- only then (a one-time filter on the parameter skips each branch the other source needs).
  WITH plain_inputs AS MATERIALIZED (
    SELECT history_analytics_inputs_plain(t) AS j WHERE plain
  ), st AS (
    SELECT c.status, c.billing_period, sum(c.subscription_count) AS n, sum(c.plan_cost_sum) AS cost, sum(c.mrr_sum) AS mrr
    FROM (SELECT s.status, s.billing_period, s.subscription_count, s.plan_cost_sum, s.mrr_sum FROM history_status_snapshots s WHERE s.day = p
          UNION ALL
          SELECT c.status, c.billing_period, c.subscription_count, c.plan_cost_sum, c.mrr_sum FROM history_status_changes c
          WHERE c.span = 'instant' AND c.bucket >= p_start AND c.bucket <= t) c
    WHERE NOT plain
    GROUP BY 1, 2
    UNION ALL
    SELECT x.status, x.billing_period, x.count, x.plan_cost, x.mrr
    FROM plain_inputs, jsonb_to_recordset(plain_inputs.j -> 'statuses') AS x (status text, billing_period text, count bigint, plan_cost numeric, mrr numeric)
  ), rev AS (
    SELECT c.start_month, sum(c.plan_cost_sum) AS cost
    FROM (SELECT s.start_month, s.plan_cost_sum FROM history_revenue_snapshots s WHERE s.day = p AND s.start_month BETWEEN first_month AND last_month
          UNION ALL
          SELECT c.start_month, c.plan_cost_sum FROM history_revenue_changes c
          WHERE c.span = 'instant' AND c.bucket >= p_start AND c.bucket <= t AND c.start_month BETWEEN first_month AND last_month) c
    WHERE NOT plain
    GROUP BY 1
    UNION ALL
    SELECT to_date(x.month, 'YYYY-MM'), x.revenue FROM plain_inputs, jsonb_to_recordset(plain_inputs.j -> 'revenue') AS x (month text, revenue numeric)
  ), top AS (
    SELECT tu.user_id, i.name, i.email, tu.total FROM history_top_users(t) tu CROSS JOIN LATERAL history_user_identity_at(tu.user_id, t) i WHERE NOT plain
    UNION ALL
    SELECT x.user_id, x.name, x.email, x.total_value
    FROM plain_inputs, jsonb_to_recordset(plain_inputs.j -> 'top_users') AS x (user_id bigint, name text, email text, total_value numeric)
  ), by_status AS (
    SELECT status, sum(n) AS n, sum(cost) AS revenue, sum(cost) FILTER (WHERE billing_period = 'month') AS monthly,
           sum(cost) FILTER (WHERE billing_period = 'year') AS yearly, sum(mrr) AS mrr FROM st GROUP BY status
  ), totals AS (
    SELECT coalesce(sum(n), 0) AS n, sum(revenue) AS revenue FROM by_status
  ), active AS (
    SELECT coalesce(sum(revenue), 0) AS revenue, coalesce(sum(monthly), 0) AS monthly, coalesce(sum(yearly), 0) AS yearly,
           coalesce(sum(mrr), 0) AS mrr, coalesce(sum(n), 0) AS n FROM by_status WHERE status = 'active'
  )
  -- row_to_json writes compact JSON in the order and with the names of a row's columns (the types
  -- above name the array elements'); json_build_object and json_agg would add blanks and line
  -- breaks, so arrays are joined as text.
  SELECT row_to_json(d)::text FROM (
    SELECT
      to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS as_of,
      active.revenue::numeric(30, 2)::text AS total_recurring_revenue,
      coalesce(round(totals.revenue / nullif(totals.n, 0), 2), 0)::numeric(30, 2)::text AS average_subscription_cost,
      (SELECT ('[' || string_agg(row_to_json(ROW(to_char(m.month, 'YYYY-MM'), coalesce(rev.cost, 0)::numeric(30, 2)::text)::history_json_month)::text, ','
                                 ORDER BY m.month) || ']')::json
       FROM generate_series(first_month, last_month, interval '1 month') AS m (month)
       LEFT JOIN rev ON rev.start_month = m.month::date) AS monthly_revenue,
      (SELECT ('[' || coalesce(string_agg(row_to_json(ROW(top.user_id, top.name, top.email, top.total::numeric(30, 2)::text)::history_json_top_user)::text, ','
                                          ORDER BY top.total DESC, top.user_id), '') || ']')::json
       FROM top) AS top_users,
      totals.n AS subscription_count,
      active.n AS active_subscription_count,
      (SELECT ('[' || string_agg(row_to_json(ROW(s.status, coalesce(b.n, 0), coalesce(b.revenue, 0)::numeric(30, 2)::text)::history_json_status)::text, ','
                                 ORDER BY s.position) || ']')::json
       FROM unnest(ARRAY['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired']) WITH ORDINALITY AS s (status, position)
       LEFT JOIN by_status b USING (status)) AS by_status,
      active.mrr::numeric(30, 2)::text AS mrr,
      (active.monthly * 12 + active.yearly)::numeric(30, 2)::text AS arr
    FROM active, totals) d);
END
$$;

-- GET /api/analytics/mrr as the JSON text the API sends. From the maintained movements (as 0010's
-- history_mrr_report, which stays for callers in SQL) with less work per call: the months before
-- from_month summed in one group (the starting point) instead of one group each, and no function
-- call in between; plain: 0010's history_mrr_report_plain, written by the same document code.
CREATE FUNCTION history_mrr_report_text(from_month date, to_month date, plain boolean) RETURNS text
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
  RETURN (
  WITH before AS (
    SELECT coalesce(sum(m.new + m.expansion + m.reactivation - m.contraction - m.churn), 0) AS mrr,
           coalesce(sum(m.new_customers + m.reactivated_customers - m.churned_customers), 0)::bigint AS customers
    FROM history_mrr_movements m WHERE m.month < from_month AND NOT plain
  ), per_month AS (
    SELECT m.month, sum(m.new) AS new, sum(m.expansion) AS expansion, sum(m.contraction) AS contraction, sum(m.churn) AS churn,
           sum(m.reactivation) AS reactivation, sum(m.new_customers) AS new_customers, sum(m.reactivated_customers) AS reactivated_customers,
           sum(m.churned_customers) AS churned_customers
    FROM history_mrr_movements m WHERE m.month >= from_month AND m.month <= to_month AND NOT plain GROUP BY m.month
  ), months AS (
    SELECT s.month::date AS month, coalesce(p.new, 0) AS new, coalesce(p.expansion, 0) AS expansion, coalesce(p.contraction, 0) AS contraction,
           coalesce(p.churn, 0) AS churn, coalesce(p.reactivation, 0) AS reactivation, coalesce(p.new_customers, 0)::bigint AS new_customers,
           coalesce(p.reactivated_customers, 0)::bigint AS reactivated_customers, coalesce(p.churned_customers, 0)::bigint AS churned_customers
    FROM generate_series(from_month, to_month, interval '1 month') AS s (month)
    LEFT JOIN per_month p ON p.month = s.month::date
  ), running AS (
    SELECT m.*, b.mrr + sum(m.new + m.expansion + m.reactivation - m.contraction - m.churn) OVER w AS ending_mrr,
           b.customers + sum(m.new_customers + m.reactivated_customers - m.churned_customers) OVER w AS customers
    FROM months m CROSS JOIN before b
    WHERE NOT plain
    WINDOW w AS (ORDER BY m.month)
  ), r AS (
    SELECT month, ending_mrr - (new + expansion + reactivation - contraction - churn) AS starting_mrr, new, expansion, contraction, churn,
           reactivation, ending_mrr, (customers - (new_customers + reactivated_customers - churned_customers))::bigint AS starting_customers,
           customers::bigint AS customers, new_customers, reactivated_customers, churned_customers
    FROM running
    UNION ALL
    SELECT * FROM history_mrr_report_plain(from_month, to_month) WHERE plain
  )
  SELECT row_to_json(d)::text FROM (
    SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS as_of,
           ('[' || coalesce(string_agg(row_to_json(ROW(
             to_char(r.month, 'YYYY-MM'), r.starting_mrr::numeric(30, 2)::text, r.new::numeric(30, 2)::text, r.expansion::numeric(30, 2)::text,
             r.contraction::numeric(30, 2)::text, r.churn::numeric(30, 2)::text, r.reactivation::numeric(30, 2)::text, r.ending_mrr::numeric(30, 2)::text,
             r.starting_customers, r.customers, r.new_customers, r.reactivated_customers, r.churned_customers,
             round(r.churned_customers::numeric / nullif(r.starting_customers, 0), 4)::numeric(20, 4)::text,
             round((r.churn + r.contraction) / nullif(r.starting_mrr, 0), 4)::numeric(20, 4)::text,
             coalesce(round(r.ending_mrr / nullif(r.customers, 0), 2), 0)::numeric(30, 2)::text)::history_json_mrr_month)::text, ',' ORDER BY r.month), '')
            || ']')::json AS months
    FROM r) d);
END
$$;
