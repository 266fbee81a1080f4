-- GET /api/analytics?as_of= at a cost that does not grow with the table or with the history:
-- daily snapshots of what an answer needs, kept in the same transaction as every change by the
-- history trigger of 0010 (history_apply, wrapped here).
--
-- - history_user_values: per user and instant at which their plan_cost sum or subscription count
--   changed (effective time, as in 0010), the figures from then on. A user's figures at t: their
--   latest row up to t (one index probe).
-- - history_snapshot_days: every day on which some change took effect, with, as they stood just
--   before the day's first instant (UTC):
--   - history_status_snapshots / history_revenue_snapshots: the totals per status and billing
--     period, and per start month (0010's history_status_changes / history_revenue_changes summed
--     over everything before the day);
--   - history_top_snapshots: the top 16 users (by plan_cost sum, ties by lower user_id, users with
--     at least one subscription); `top_complete` when fewer than 16 users had subscriptions then.
--
-- The state at t: the snapshot of the latest such day d <= t's day, plus the changes from d's
-- start up to t, which are all on day d (a day with a change has its own snapshot): 0010's
-- per-instant rows for the totals, history_user_values's rows of day d for the top users. Those
-- users are taken at their latest value (their rows scanned by value, highest first, stopping after
-- k), the other listed users at their snapshot value. Every user neither listed nor changed since
-- ranks after the 16th listed one, so the merged top k is exact when its k-th ranks at or before
-- that 16th (or the list is complete); otherwise (top users whose value fell) 0010's threshold
-- scan answers.

CREATE TABLE history_user_values (
  user_id            bigint      NOT NULL,
  effective_at       timestamptz NOT NULL,
  day                date        NOT NULL,
  total              numeric     NOT NULL,
  subscription_count bigint      NOT NULL,
  PRIMARY KEY (user_id, effective_at)
);
-- The users changed on a day, highest value first.
CREATE INDEX history_user_values_day_idx ON history_user_values (day, total DESC, user_id);

CREATE TABLE history_snapshot_days (
  day          date    PRIMARY KEY,
  top_complete boolean NOT NULL
);
CREATE TABLE history_top_snapshots (
  day     date    NOT NULL,
  user_id bigint  NOT NULL,
  total   numeric NOT NULL,
  PRIMARY KEY (day, total, user_id)
);
CREATE TABLE history_status_snapshots (
  day                date    NOT NULL,
  status             text    NOT NULL,
  billing_period     text    NOT NULL,
  subscription_count bigint  NOT NULL,
  plan_cost_sum      numeric NOT NULL,
  mrr_sum            numeric NOT NULL,
  PRIMARY KEY (day, status, billing_period)
);
CREATE TABLE history_revenue_snapshots (
  day                date    NOT NULL,
  start_month        date    NOT NULL,
  subscription_count bigint  NOT NULL,
  plan_cost_sum      numeric NOT NULL,
  PRIMARY KEY (day, start_month)
);

-- The list length of a snapshot (answers ask for at most this many).
CREATE FUNCTION history_top_size() RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 16 $$;

-- A user's subscriptions at t (plan_cost sum and count), now from the value log: one probe
-- instead of every event of every subscription the user ever had (0010's threshold scan calls this
-- for its candidates).
CREATE OR REPLACE FUNCTION history_user_at(u bigint, t timestamptz, OUT total numeric, OUT subscriptions bigint) LANGUAGE plpgsql STABLE AS $$
BEGIN
  SELECT v.total, v.subscription_count INTO total, subscriptions
  FROM history_user_values v WHERE v.user_id = u AND v.effective_at <= t ORDER BY v.effective_at DESC LIMIT 1;
  total := coalesce(total, 0);
  subscriptions := coalesce(subscriptions, 0);
END $$;

-- The snapshots of day d from those of the day before it that has them (p) and the changes from
-- p's start to d's. The totals add up; the top list is exact where it ranks at or before p's
-- 16th, and when that leaves fewer than 16 (listed users whose value fell), it comes from 0010's
-- threshold scan at the instant before d. with_totals: the rebuild makes the totals set-based.
CREATE FUNCTION history_snapshot_derive(d date, with_totals boolean DEFAULT true) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  k constant integer := history_top_size();
  d_start constant timestamptz := d::timestamp AT TIME ZONE 'UTC';
  p date;
  p_start timestamptz;
  p_complete boolean;
  f_total numeric;
  f_user bigint;
  listed integer;
  candidates integer;
BEGIN
  SELECT h.day, h.top_complete INTO p, p_complete FROM history_snapshot_days h WHERE h.day < d ORDER BY h.day DESC LIMIT 1;
  p_start := coalesce(p::timestamp AT TIME ZONE 'UTC', '-infinity');
  p_complete := coalesce(p_complete, true);
  IF with_totals THEN
    DELETE FROM history_status_snapshots WHERE day = d;
    INSERT INTO history_status_snapshots (day, status, billing_period, subscription_count, plan_cost_sum, mrr_sum)
    SELECT d, x.status, x.billing_period, sum(x.subscription_count), sum(x.plan_cost_sum), sum(x.mrr_sum)
    FROM (SELECT s.status, s.billing_period, s.subscription_count, s.plan_cost_sum, s.mrr_sum FROM history_status_snapshots s WHERE s.day = p
          UNION ALL
          SELECT c.status, c.billing_period, c.subscription_count, c.plan_cost_sum, c.mrr_sum FROM history_status_changes c
          WHERE c.span = 'instant' AND c.bucket >= p_start AND c.bucket < d_start) x
    GROUP BY 2, 3
    HAVING sum(x.subscription_count) <> 0 OR sum(x.plan_cost_sum) <> 0 OR sum(x.mrr_sum) <> 0;
    DELETE FROM history_revenue_snapshots WHERE day = d;
    INSERT INTO history_revenue_snapshots (day, start_month, subscription_count, plan_cost_sum)
    SELECT d, x.start_month, sum(x.subscription_count), sum(x.plan_cost_sum)
    FROM (SELECT s.start_month, s.subscription_count, s.plan_cost_sum FROM history_revenue_snapshots s WHERE s.day = p
          UNION ALL
          SELECT c.start_month, c.subscription_count, c.plan_cost_sum FROM history_revenue_changes c
          WHERE c.span = 'instant' AND c.bucket >= p_start AND c.bucket < d_start) x
    GROUP BY 2
    HAVING sum(x.subscription_count) <> 0 OR sum(x.plan_cost_sum) <> 0;
  END IF;

  IF NOT p_complete THEN
    SELECT s.total, s.user_id INTO f_total, f_user FROM history_top_snapshots s WHERE s.day = p ORDER BY s.total, s.user_id DESC LIMIT 1;
  END IF;
  DELETE FROM history_top_snapshots WHERE day = d;
  WITH changed AS (
    SELECT DISTINCT ON (v.user_id) v.user_id, v.total, v.subscription_count FROM history_user_values v
    WHERE v.day >= coalesce(p, '-infinity'::date) AND v.day < d ORDER BY v.user_id, v.effective_at DESC
  ), known AS (
    SELECT s.user_id, s.total FROM history_top_snapshots s WHERE s.day = p AND NOT EXISTS (SELECT FROM changed c WHERE c.user_id = s.user_id)
    UNION ALL
    SELECT c.user_id, c.total FROM changed c WHERE c.subscription_count > 0
  ), exact AS (
    -- Ranked at or before p's 16th: no user missing from both lists can come before it.
    SELECT * FROM known WHERE p_complete OR known.total > f_total OR (known.total = f_total AND known.user_id <= f_user)
  ), written AS (
    INSERT INTO history_top_snapshots (day, user_id, total)
    SELECT d, e.user_id, e.total FROM exact e ORDER BY e.total DESC, e.user_id LIMIT k
    RETURNING 1
  )
  SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM exact) INTO listed, candidates;
  IF listed < k AND NOT p_complete THEN
    DELETE FROM history_top_snapshots WHERE day = d;
    INSERT INTO history_top_snapshots (day, user_id, total)
    SELECT d, s.user_id, s.total FROM history_top_users_scan(d_start - interval '1 microsecond', k) s;
    GET DIAGNOSTICS listed = ROW_COUNT;
    candidates := listed;
  END IF;
  INSERT INTO history_snapshot_days AS h (day, top_complete) VALUES (d, candidates < k)
  ON CONFLICT (day) DO UPDATE SET top_complete = EXCLUDED.top_complete;
END $$;

-- 0010's exact threshold scan keeps its name for the fallback; history_top_users is the fast one.
ALTER FUNCTION history_top_users(timestamptz, integer) RENAME TO history_top_users_scan;

-- The top k users at t (k <= 16), exact (see the top of this file).
CREATE FUNCTION history_top_users(t timestamptz, k integer DEFAULT 5)
RETURNS TABLE (user_id bigint, total numeric) LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
  p date;
  p_complete boolean;
  f_total numeric;
  f_user bigint;
  best_total numeric[];
  best_user bigint[];
BEGIN
  SELECT h.day, h.top_complete INTO p, p_complete FROM history_snapshot_days h WHERE h.day <= (t AT TIME ZONE 'UTC')::date ORDER BY h.day DESC LIMIT 1;
  IF p IS NULL THEN
    RETURN; -- nothing recorded up to t
  END IF;
  IF NOT p_complete THEN
    SELECT s.total, s.user_id INTO f_total, f_user FROM history_top_snapshots s WHERE s.day = p ORDER BY s.total, s.user_id DESC LIMIT 1;
  END IF;
  WITH changed AS (
    -- Users changed since the snapshot, at their latest value up to t, the k highest.
    SELECT v.user_id, v.total FROM history_user_values v
    WHERE v.day = p AND v.effective_at <= t AND v.subscription_count > 0
      AND NOT EXISTS (SELECT FROM history_user_values l WHERE l.user_id = v.user_id AND l.effective_at > v.effective_at AND l.effective_at <= t)
    ORDER BY v.total DESC, v.user_id LIMIT k
  ), unchanged AS (
    SELECT s.user_id, s.total FROM history_top_snapshots s
    WHERE s.day = p
      AND NOT EXISTS (SELECT FROM history_user_values l WHERE l.user_id = s.user_id AND l.effective_at >= p::timestamp AT TIME ZONE 'UTC' AND l.effective_at <= t)
  ), top AS (
    SELECT * FROM (SELECT * FROM changed UNION ALL SELECT * FROM unchanged) x ORDER BY x.total DESC, x.user_id LIMIT k
  )
  SELECT array_agg(top.total ORDER BY top.total DESC, top.user_id), array_agg(top.user_id ORDER BY top.total DESC, top.user_id) INTO best_total, best_user FROM top;
  IF p_complete
     OR (cardinality(best_total) = k AND (best_total[k] > f_total OR (best_total[k] = f_total AND best_user[k] <= f_user))) THEN
    RETURN QUERY SELECT b.uid, b.total FROM unnest(best_user, best_total) AS b (uid, total);
  ELSE
    RETURN QUERY SELECT * FROM history_top_users_scan(t, k);
  END IF;
END $$;

-- The inputs of every /api/analytics figure at t (as 0010's, which summed every month, day and
-- instant bucket before t): the snapshot of the latest day with a change up to t's day, plus the
-- per-instant rows from that day's start to t.
CREATE OR REPLACE FUNCTION history_analytics_inputs(t timestamptz) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
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
  WITH status AS (
    SELECT c.status, c.billing_period, sum(c.subscription_count) AS n, sum(c.plan_cost_sum) AS cost, sum(c.mrr_sum) AS mrr
    FROM (SELECT s.status, s.billing_period, s.subscription_count, s.plan_cost_sum, s.mrr_sum FROM history_status_snapshots s WHERE s.day = p
          UNION ALL
          SELECT c.status, c.billing_period, c.subscription_count, c.plan_cost_sum, c.mrr_sum FROM history_status_changes c
          WHERE c.span = 'instant' AND c.bucket >= p_start AND c.bucket <= t) c
    GROUP BY 1, 2
  ), revenue AS (
    SELECT c.start_month, sum(c.plan_cost_sum) AS cost
    FROM (SELECT s.start_month, s.plan_cost_sum FROM history_revenue_snapshots s WHERE s.day = p AND s.start_month BETWEEN first_month AND last_month
          UNION ALL
          SELECT c.start_month, c.plan_cost_sum FROM history_revenue_changes c
          WHERE c.span = 'instant' AND c.bucket >= p_start AND c.bucket <= t AND c.start_month BETWEEN first_month AND last_month) c
    GROUP BY 1
  )
  SELECT jsonb_build_object(
    'statuses', (SELECT coalesce(jsonb_agg(jsonb_build_object('status', status, 'billing_period', billing_period, 'count', n,
                                                               'plan_cost', cost::text, 'mrr', mrr::text)), '[]') FROM status),
    'revenue', (SELECT coalesce(jsonb_agg(jsonb_build_object('month', to_char(start_month, 'YYYY-MM'), 'revenue', cost::text)), '[]') FROM revenue),
    'top_users', (SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', tu.user_id, 'name', i.name, 'email', i.email, 'total_value', tu.total::text)
                                            ORDER BY tu.total DESC, tu.user_id), '[]')
                  FROM history_top_users(t) tu CROSS JOIN LATERAL history_user_identity_at(tu.user_id, t) i)));
END
$$;

-- The writes: 0010's history_apply keeps its name's callers (the trigger on events) and gains the
-- value log and the snapshots.
ALTER FUNCTION history_apply(history_change[]) RENAME TO history_apply_aggregates;

CREATE FUNCTION history_apply(changes history_change[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  first_day date;
  days date[];
  exclusive boolean;
BEGIN
  -- Takes the per-user locks (or the one that excludes all) this function relies on too.
  PERFORM history_apply_aggregates(changes);

  -- Each changed (user, instant): the figures from then on, and every later row of that user
  -- (a change recorded back in time) shifted by it. Under the user's lock, in a fresh snapshot.
  WITH d AS (
    SELECT c.user_id, c.effective_at AS at, sum(c.sign * c.plan_cost) AS dc, sum(c.sign)::bigint AS dn
    FROM unnest(changes) c GROUP BY 1, 2
    HAVING sum(c.sign * c.plan_cost) <> 0 OR sum(c.sign) <> 0
  ), points AS (
    SELECT d.user_id, d.at FROM d
    UNION
    SELECT v.user_id, v.effective_at FROM history_user_values v
    JOIN (SELECT d.user_id, min(d.at) AS at0 FROM d GROUP BY 1) f ON f.user_id = v.user_id AND v.effective_at > f.at0
  ), w AS (
    SELECT p.user_id, p.at, sum(coalesce(d.dc, 0)) OVER u AS dc, sum(coalesce(d.dn, 0)) OVER u AS dn
    FROM points p LEFT JOIN d USING (user_id, at)
    WINDOW u AS (PARTITION BY p.user_id ORDER BY p.at)
  ), written AS (
    INSERT INTO history_user_values AS v (user_id, effective_at, day, total, subscription_count)
    SELECT w.user_id, w.at, (w.at AT TIME ZONE 'UTC')::date, coalesce(o.total, 0) + w.dc, coalesce(o.subscription_count, 0) + w.dn
    FROM w LEFT JOIN LATERAL (
      SELECT x.total, x.subscription_count FROM history_user_values x WHERE x.user_id = w.user_id AND x.effective_at <= w.at
      ORDER BY x.effective_at DESC LIMIT 1) o ON true
    ORDER BY 1, 2
    ON CONFLICT (user_id, effective_at) DO UPDATE SET total = EXCLUDED.total, subscription_count = EXCLUDED.subscription_count
  )
  SELECT min(x.day), array_agg(DISTINCT x.day) INTO first_day, days FROM (SELECT (c.effective_at AT TIME ZONE 'UTC')::date AS day FROM unnest(changes) c) x;
  IF first_day IS NULL THEN
    RETURN;
  END IF;

  -- Snapshots: a writer on a day that has one, with none after it, has nothing to do (shared
  -- lock). The first writer of a day builds its snapshot, and a change back in time rebuilds the
  -- snapshots after it (exclusive lock, so that every change of the days before is committed and
  -- seen). A shared holder that finds it must rebuild after all takes the exclusive lock too.
  exclusive := false;
  LOOP
    IF EXISTS (SELECT FROM unnest(days) x (day) WHERE NOT EXISTS (SELECT FROM history_snapshot_days h WHERE h.day = x.day))
       OR EXISTS (SELECT FROM history_snapshot_days h WHERE h.day > first_day) THEN
      IF exclusive THEN
        PERFORM history_snapshot_derive(b.day)
        FROM (SELECT h.day FROM history_snapshot_days h WHERE h.day > first_day UNION SELECT unnest(days)) b ORDER BY b.day;
        EXIT;
      END IF;
      PERFORM pg_advisory_xact_lock(1836217714, -2);
      exclusive := true;
    ELSIF exclusive THEN
      EXIT;
    ELSE
      PERFORM pg_advisory_xact_lock_shared(1836217714, -2);
      -- Checked again under the lock: a builder may have committed meanwhile.
      IF NOT EXISTS (SELECT FROM unnest(days) x (day) WHERE NOT EXISTS (SELECT FROM history_snapshot_days h WHERE h.day = x.day))
         AND NOT EXISTS (SELECT FROM history_snapshot_days h WHERE h.day > first_day) THEN
        EXIT;
      END IF;
      PERFORM pg_advisory_xact_lock(1836217714, -2);
      exclusive := true;
    END IF;
  END LOOP;
END $$;

CREATE OR REPLACE FUNCTION history_events_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE history_status_changes, history_revenue_changes, history_user_months, history_mrr_movements,
           history_user_values, history_snapshot_days, history_top_snapshots, history_status_snapshots, history_revenue_snapshots;
  RETURN NULL;
END $$;

-- The totals each snapshot day must hold: everything on the days before it, as running sums of
-- 0010's per-instant rows (every day with such a row is a snapshot day). Rebuild writes these,
-- reconcile compares with them.
CREATE FUNCTION history_expected_status_snapshots()
RETURNS TABLE (day date, status text, billing_period text, subscription_count bigint, plan_cost_sum numeric, mrr_sum numeric)
LANGUAGE sql STABLE AS $$
  SELECT y.* FROM (
    SELECT g.day, g.status, g.billing_period,
           coalesce(sum(pd.n) OVER w, 0)::bigint AS n, coalesce(sum(pd.cost) OVER w, 0) AS cost, coalesce(sum(pd.mrr) OVER w, 0) AS mrr
    FROM (SELECT h.day, k.status, k.billing_period FROM history_snapshot_days h
          CROSS JOIN (SELECT DISTINCT c.status, c.billing_period FROM history_status_changes c WHERE c.span = 'instant') k) g
    LEFT JOIN (SELECT (c.bucket AT TIME ZONE 'UTC')::date AS day, c.status, c.billing_period, sum(c.subscription_count) AS n,
                      sum(c.plan_cost_sum) AS cost, sum(c.mrr_sum) AS mrr
               FROM history_status_changes c WHERE c.span = 'instant' GROUP BY 1, 2, 3) pd USING (day, status, billing_period)
    WINDOW w AS (PARTITION BY g.status, g.billing_period ORDER BY g.day ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) y
  WHERE y.n <> 0 OR y.cost <> 0 OR y.mrr <> 0
$$;

CREATE FUNCTION history_expected_revenue_snapshots()
RETURNS TABLE (day date, start_month date, subscription_count bigint, plan_cost_sum numeric)
LANGUAGE sql STABLE AS $$
  SELECT y.* FROM (
    SELECT g.day, g.start_month, coalesce(sum(pd.n) OVER w, 0)::bigint AS n, coalesce(sum(pd.cost) OVER w, 0) AS cost
    FROM (SELECT h.day, k.start_month FROM history_snapshot_days h
          CROSS JOIN (SELECT DISTINCT c.start_month FROM history_revenue_changes c WHERE c.span = 'instant') k) g
    LEFT JOIN (SELECT (c.bucket AT TIME ZONE 'UTC')::date AS day, c.start_month, sum(c.subscription_count) AS n, sum(c.plan_cost_sum) AS cost
               FROM history_revenue_changes c WHERE c.span = 'instant' GROUP BY 1, 2) pd USING (day, start_month)
    WINDOW w AS (PARTITION BY g.start_month ORDER BY g.day ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) y
  WHERE y.n <> 0 OR y.cost <> 0
$$;

-- The value log as the history says (from pg_temp.history_actual_changes, or for the seed from subscriptions).
CREATE FUNCTION history_expected_user_values(implied boolean)
RETURNS TABLE (user_id bigint, effective_at timestamptz, day date, total numeric, subscription_count bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF implied THEN
    RETURN QUERY
    SELECT x.user_id, x.day::timestamp AT TIME ZONE 'UTC', x.day, sum(x.dc) OVER u, (sum(x.dn) OVER u)::bigint
    FROM (SELECT s.user_id, s.start_date AS day, sum(s.plan_cost) AS dc, count(*) AS dn FROM subscriptions s GROUP BY 1, 2) x
    WINDOW u AS (PARTITION BY x.user_id ORDER BY x.day);
  ELSE
    RETURN QUERY
    SELECT x.user_id, x.at, (x.at AT TIME ZONE 'UTC')::date, sum(x.dc) OVER u, (sum(x.dn) OVER u)::bigint
    FROM (SELECT c.user_id, c.effective_at AS at, sum(c.sign * c.plan_cost) AS dc, sum(c.sign) AS dn
          FROM pg_temp.history_actual_changes c GROUP BY 1, 2 HAVING sum(c.sign * c.plan_cost) <> 0 OR sum(c.sign) <> 0) x
    WINDOW u AS (PARTITION BY x.user_id ORDER BY x.at);
  END IF;
END $$;

-- Rebuild, set-based: the value log from the history (or, for the seed, from the subscriptions its
-- implied history records: each created at its start_date, never deleted, plan_cost never
-- changed), the days with a change, the totals before each as running sums of 0010's per-instant
-- rows (rebuilt first), then the top lists day by day. changes_ready: pg_temp.history_actual_changes
-- holds the history's changes already (0010's rebuild made it).
CREATE FUNCTION history_snapshots_rebuild(implied boolean DEFAULT false, changes_ready boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET work_mem = '256MB' AS $$
BEGIN
  TRUNCATE history_user_values, history_snapshot_days, history_top_snapshots, history_status_snapshots, history_revenue_snapshots;
  IF NOT implied AND NOT changes_ready THEN
    DROP TABLE IF EXISTS pg_temp.history_actual_changes;
    CREATE TEMP TABLE history_actual_changes ON COMMIT DROP AS SELECT * FROM history_actual_changes();
  END IF;
  -- The value log's indexes built after its rows (the seed's: about 500,000).
  ALTER TABLE history_user_values DROP CONSTRAINT history_user_values_pkey;
  DROP INDEX history_user_values_day_idx;
  INSERT INTO history_user_values SELECT * FROM history_expected_user_values(implied);
  ALTER TABLE history_user_values ADD PRIMARY KEY (user_id, effective_at);
  CREATE INDEX history_user_values_day_idx ON history_user_values (day, total DESC, user_id);
  ANALYZE history_user_values, history_status_changes, history_revenue_changes;
  INSERT INTO history_snapshot_days (day, top_complete)
  SELECT x.day, true FROM (
    SELECT (c.bucket AT TIME ZONE 'UTC')::date AS day FROM history_status_changes c WHERE c.span = 'instant'
    UNION SELECT (c.bucket AT TIME ZONE 'UTC')::date FROM history_revenue_changes c WHERE c.span = 'instant'
    UNION SELECT DISTINCT v.day FROM history_user_values v) x;
  INSERT INTO history_status_snapshots SELECT * FROM history_expected_status_snapshots();
  INSERT INTO history_revenue_snapshots SELECT * FROM history_expected_revenue_snapshots();
  PERFORM history_snapshot_derive(h.day, false) FROM (SELECT h.day FROM history_snapshot_days h ORDER BY 1) h;
END $$;

ALTER FUNCTION history_analytics_rebuild(boolean) RENAME TO history_analytics_rebuild_aggregates;
CREATE FUNCTION history_analytics_rebuild(implied boolean DEFAULT false) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM history_analytics_rebuild_aggregates(implied);
  PERFORM history_snapshots_rebuild(implied, NOT implied);
END $$;

-- Reconcile: 0010's comparisons (any difference there rebuilds everything), then the value log
-- (each user's figures at every instant either side has a row for), a snapshot for every day with a
-- change, each snapshot's totals, and each top list against 0010's threshold scan at the instant
-- before its day.
ALTER FUNCTION history_analytics_reconcile() RENAME TO history_analytics_reconcile_aggregates;
CREATE FUNCTION history_analytics_reconcile() RETURNS TABLE (aggregate text, key text, stored text, actual text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  LOCK TABLE events IN SHARE MODE;
  RETURN QUERY SELECT * FROM history_analytics_reconcile_aggregates();
  IF FOUND THEN
    RETURN;
  END IF;
  -- 0010's aggregates equal the history; pg_temp.history_actual_changes holds its changes.
  DROP TABLE IF EXISTS pg_temp.history_snapshot_differences, pg_temp.history_actual_values;
  CREATE TEMP TABLE history_actual_values ON COMMIT DROP AS SELECT * FROM history_expected_user_values(false);
  CREATE INDEX ON pg_temp.history_actual_values (user_id, effective_at);
  CREATE TEMP TABLE history_snapshot_differences ON COMMIT DROP AS
  SELECT 'user value'::text AS aggregate, k.user_id || ' ' || to_char(k.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS key,
         concat_ws(' / ', coalesce(st.total, 0), coalesce(st.subscription_count, 0)) AS stored,
         concat_ws(' / ', coalesce(ac.total, 0), coalesce(ac.subscription_count, 0)) AS actual
  FROM (SELECT v.user_id, v.effective_at AS at FROM history_user_values v UNION SELECT a.user_id, a.effective_at FROM history_actual_values a) k
  LEFT JOIN LATERAL (SELECT v.total, v.subscription_count FROM history_user_values v WHERE v.user_id = k.user_id AND v.effective_at <= k.at
                     ORDER BY v.effective_at DESC LIMIT 1) st ON true
  LEFT JOIN LATERAL (SELECT a.total, a.subscription_count FROM history_actual_values a WHERE a.user_id = k.user_id AND a.effective_at <= k.at
                     ORDER BY a.effective_at DESC LIMIT 1) ac ON true
  WHERE (coalesce(st.total, 0), coalesce(st.subscription_count, 0)) IS DISTINCT FROM (coalesce(ac.total, 0), coalesce(ac.subscription_count, 0));
  INSERT INTO history_snapshot_differences
  SELECT 'snapshot day', to_char(d.day, 'YYYY-MM-DD'), 'none', 'changes that day'
  FROM (SELECT (c.bucket AT TIME ZONE 'UTC')::date AS day FROM history_status_changes c WHERE c.span = 'instant'
        UNION SELECT (c.bucket AT TIME ZONE 'UTC')::date FROM history_revenue_changes c WHERE c.span = 'instant'
        UNION SELECT a.day FROM history_actual_values a) d
  WHERE NOT EXISTS (SELECT FROM history_snapshot_days h WHERE h.day = d.day);
  IF NOT EXISTS (SELECT FROM history_snapshot_differences) THEN
    INSERT INTO history_snapshot_differences
    SELECT 'snapshot status', concat_ws(' ', to_char(day, 'YYYY-MM-DD'), status, billing_period),
           concat_ws(' / ', s.subscription_count, s.plan_cost_sum, s.mrr_sum), concat_ws(' / ', x.subscription_count, x.plan_cost_sum, x.mrr_sum)
    FROM history_status_snapshots s FULL JOIN history_expected_status_snapshots() x USING (day, status, billing_period)
    WHERE (s.subscription_count, s.plan_cost_sum, s.mrr_sum) IS DISTINCT FROM (x.subscription_count, x.plan_cost_sum, x.mrr_sum)
    UNION ALL
    SELECT 'snapshot revenue', concat_ws(' ', to_char(day, 'YYYY-MM-DD'), to_char(start_month, 'YYYY-MM')),
           concat_ws(' / ', s.subscription_count, s.plan_cost_sum), concat_ws(' / ', x.subscription_count, x.plan_cost_sum)
    FROM history_revenue_snapshots s FULL JOIN history_expected_revenue_snapshots() x USING (day, start_month)
    WHERE (s.subscription_count, s.plan_cost_sum) IS DISTINCT FROM (x.subscription_count, x.plan_cost_sum)
    UNION ALL
    SELECT 'snapshot top', to_char(h.day, 'YYYY-MM-DD'), s.list, x.list
    FROM history_snapshot_days h
    CROSS JOIN LATERAL (SELECT coalesce(string_agg(s.user_id || ':' || s.total, ' ' ORDER BY s.total DESC, s.user_id), '')
                               || CASE WHEN h.top_complete THEN ' (all)' ELSE '' END AS list
                        FROM history_top_snapshots s WHERE s.day = h.day) s
    CROSS JOIN LATERAL (SELECT coalesce(string_agg(x.user_id || ':' || x.total, ' ' ORDER BY x.total DESC, x.user_id), '')
                               || CASE WHEN count(*) < history_top_size() THEN ' (all)' ELSE '' END AS list
                        FROM history_top_users_scan(h.day::timestamp AT TIME ZONE 'UTC' - interval '1 microsecond', history_top_size()) x) x
    WHERE s.list IS DISTINCT FROM x.list;
  END IF;
  RETURN QUERY SELECT * FROM history_snapshot_differences ORDER BY 1, 2;
  IF FOUND THEN
    PERFORM history_analytics_rebuild();
  END IF;
END $$;

SELECT history_snapshots_rebuild();
