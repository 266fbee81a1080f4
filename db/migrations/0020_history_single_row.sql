-- The write cost of the history aggregates (issues 12 and 13): a fast path for the common write.
--
-- Nearly every statement that writes history is one subscription change (a POST, PATCH or DELETE
-- of one subscription) that takes effect now, after everything recorded so far for its user, on
-- the latest snapshot day. For it, 0010's and 0013's set-based statements (an array of changes,
-- unnested, grouped, windowed, in CTE chains) do far more than the change needs: about 0.9 ms of a
-- 1.3 ms single-row insert's trigger work (docs/analytics.md, "What a write costs"). Here the
-- trigger on events reads the statement's subscription events first:
-- - exactly one, and its sides (the values before and after it) belong to one user: its effective
--   time probed as before, its sides as scalars, the bucket rows of 0010 written by one upsert per
--   table (the same rows, in the same order as 0010's: span, bucket, key), the same advisory locks
--   in the same order (shared -1, then the user's), then, under the user's lock, the user's latest
--   rows in history_user_months and history_user_values read. When the change takes effect no
--   earlier than both (nothing of the user's to shift after it), the user's month row, the month's
--   movements and the value log are single-row upserts; otherwise 0010's and 0013's per-user
--   statement does it, with the same changes. The snapshot check is 0013b's (a shared lock when
--   the day is the latest snapshot day); any other day runs 0013b's snapshot code;
-- - anything else (bulk statements, a subscription moved to another user, no subscription event):
--   0010's statement and history_apply, as before.
-- history_apply is split into its three parts (buckets; locks, per-user months and values;
-- snapshots) so that the fast path can hand the per-user or snapshot part over without repeating
-- what it has done; history_apply_aggregates (0010's, renamed by 0013) is gone into them.

-- 0010's bucket rows: count, plan_cost and MRR per status and billing period, plan_cost per start
-- month, each in its month, day and instant bucket.
CREATE FUNCTION history_apply_buckets(changes history_change[]) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
  my_slot smallint := coalesce(nullif(current_setting('analytics.slot', true), '')::smallint, analytics_claim_slot());
BEGIN
  INSERT INTO history_status_changes AS t (span, bucket, status, billing_period, slot, subscription_count, plan_cost_sum, mrr_sum)
  SELECT b.span, b.bucket, c.status, c.billing_period, my_slot, sum(c.sign), sum(c.sign * c.plan_cost),
         sum(c.sign * history_mrr(c.status, c.plan_cost, c.billing_period))
  FROM unnest(changes) c
  CROSS JOIN LATERAL (SELECT c.effective_at AT TIME ZONE 'UTC' AS utc) u
  CROSS JOIN LATERAL (VALUES
    ('month', date_trunc('month', u.utc) AT TIME ZONE 'UTC'), ('day', date_trunc('day', u.utc) AT TIME ZONE 'UTC'), ('instant', c.effective_at)) AS b (span, bucket)
  GROUP BY 1, 2, 3, 4
  HAVING sum(c.sign) <> 0 OR sum(c.sign * c.plan_cost) <> 0 OR sum(c.sign * history_mrr(c.status, c.plan_cost, c.billing_period)) <> 0
  ORDER BY 1, 2, 3, 4
  ON CONFLICT (span, bucket, status, billing_period, slot) DO UPDATE
    SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
        plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum,
        mrr_sum = t.mrr_sum + EXCLUDED.mrr_sum;

  INSERT INTO history_revenue_changes AS t (span, bucket, start_month, slot, subscription_count, plan_cost_sum)
  SELECT b.span, b.bucket, date_trunc('month', c.start_date::timestamp)::date, my_slot, sum(c.sign), sum(c.sign * c.plan_cost)
  FROM unnest(changes) c
  CROSS JOIN LATERAL (SELECT c.effective_at AT TIME ZONE 'UTC' AS utc) u
  CROSS JOIN LATERAL (VALUES
    ('month', date_trunc('month', u.utc) AT TIME ZONE 'UTC'), ('day', date_trunc('day', u.utc) AT TIME ZONE 'UTC'), ('instant', c.effective_at)) AS b (span, bucket)
  GROUP BY 1, 2, 3
  HAVING sum(c.sign) <> 0 OR sum(c.sign * c.plan_cost) <> 0
  ORDER BY 1, 2, 3
  ON CONFLICT (span, bucket, start_month, slot) DO UPDATE
    SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
        plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum;
END $$;

-- 0010's per-user locks, its per-user month pass with the movements, and 0013's value log. A
-- caller that holds the locks already (the fast path) takes them again at no cost.
CREATE FUNCTION history_apply_users(changes history_change[]) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
  my_slot smallint := coalesce(nullif(current_setting('analytics.slot', true), '')::smallint, analytics_claim_slot());
BEGIN
  -- Per-user figures are not additive (a movement depends on the start and the end): one writer
  -- per user at a time, users locked in id order. The statement below takes a fresh snapshot, so
  -- it sees what the previous holder of a lock committed.
  -- A bulk statement (more than 64 users) takes the one lock that excludes every user's instead:
  -- a lock per user would exhaust the lock table (max_locks_per_transaction).
  IF (SELECT count(DISTINCT c.user_id) FROM unnest(changes) c) > 64 THEN
    PERFORM pg_advisory_xact_lock(1836217714, -1);
  ELSE
    PERFORM pg_advisory_xact_lock_shared(1836217714, -1);
    PERFORM pg_advisory_xact_lock(1836217714, (u.user_id % 2147483647)::integer)
    FROM (SELECT DISTINCT c.user_id FROM unnest(changes) c ORDER BY 1) u;
  END IF;

  WITH dm AS (
    -- Per user and month: the net changes, and every rise of the plan_cost sum (each +side's cost,
    -- each -side's if negative: the bound of the month's maximum that history_user_months keeps).
    SELECT c.user_id, date_trunc('month', c.effective_at AT TIME ZONE 'UTC')::date AS month,
           sum(c.sign * history_mrr(c.status, c.plan_cost, c.billing_period)) AS mrr, sum(c.sign * c.plan_cost) AS cost,
           sum(greatest(c.sign * c.plan_cost, 0)) AS rise, sum(c.sign) AS n
    FROM unnest(changes) c GROUP BY 1, 2
    HAVING sum(c.sign * history_mrr(c.status, c.plan_cost, c.billing_period)) <> 0 OR sum(c.sign * c.plan_cost) <> 0 OR sum(c.sign) <> 0
        OR sum(greatest(c.sign * c.plan_cost, 0)) <> 0
  ), first_month AS (
    -- From the user's first changed month on, every month the user has figures for is shifted.
    SELECT f.user_id, f.m0, coalesce(a.mrr, 0) AS anchor_mrr,
           EXISTS (SELECT FROM history_user_months r WHERE r.user_id = f.user_id AND r.month < f.m0 AND r.mrr > 0) AS ever0
    FROM (SELECT user_id, min(month) AS m0 FROM dm GROUP BY 1) f
    LEFT JOIN LATERAL (SELECT r.mrr FROM history_user_months r WHERE r.user_id = f.user_id AND r.month < f.m0 ORDER BY r.month DESC LIMIT 1) a ON true
  ), timeline AS (
    SELECT user_id, month FROM dm
    UNION
    SELECT r.user_id, r.month FROM history_user_months r JOIN first_month f USING (user_id) WHERE r.month > f.m0
  ), t AS (
    SELECT tl.user_id, tl.month, f.anchor_mrr, f.ever0, o.month IS NOT DISTINCT FROM tl.month AS had_row,
           coalesce(o.mrr, 0) AS old_mrr, coalesce(o.plan_cost_sum, 0) AS old_cost, coalesce(o.subscription_count, 0) AS old_n,
           CASE WHEN o.month = tl.month THEN o.plan_cost_max ELSE coalesce(o.plan_cost_sum, 0) END AS old_max,
           coalesce(dm.mrr, 0) AS d_mrr, coalesce(dm.cost, 0) AS d_cost, coalesce(dm.rise, 0) AS d_rise, coalesce(dm.n, 0) AS d_n
    FROM timeline tl
    JOIN first_month f USING (user_id)
    LEFT JOIN dm USING (user_id, month)
    LEFT JOIN LATERAL (
      SELECT r.month, r.mrr, r.plan_cost_sum, r.subscription_count, r.plan_cost_max FROM history_user_months r
      WHERE r.user_id = tl.user_id AND r.month <= tl.month ORDER BY r.month DESC LIMIT 1) o ON true
  ), w AS (
    SELECT t.*,
           sum(d_mrr) OVER u AS shift_mrr, sum(d_cost) OVER u AS shift_cost, sum(d_n) OVER u AS shift_n,
           coalesce(lag(old_mrr) OVER u, anchor_mrr) AS old_start,
           ever0 OR coalesce(bool_or(old_mrr > 0) OVER before, false) AS ever_old
    FROM t
    WINDOW u AS (PARTITION BY user_id ORDER BY month), before AS (u ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
  ), v AS (
    SELECT w.*, old_start + shift_mrr - d_mrr AS new_start, old_mrr + shift_mrr AS new_mrr,
           ever0 OR coalesce(bool_or(old_mrr + shift_mrr > 0) OVER (PARTITION BY user_id ORDER BY month ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), false) AS ever_new
    FROM w
  ), rows_written AS (
    INSERT INTO history_user_months AS r (user_id, month, mrr, plan_cost_sum, subscription_count, plan_cost_max)
    SELECT user_id, month, new_mrr, old_cost + shift_cost, old_n + shift_n, old_max + shift_cost - d_cost + d_rise
    FROM v
    WHERE NOT had_row OR shift_mrr <> 0 OR shift_cost <> 0 OR shift_n <> 0 OR d_rise <> 0
    ORDER BY user_id, month
    ON CONFLICT (user_id, month) DO UPDATE
      SET mrr = EXCLUDED.mrr, plan_cost_sum = EXCLUDED.plan_cost_sum, subscription_count = EXCLUDED.subscription_count,
          plan_cost_max = EXCLUDED.plan_cost_max
  ), moved AS (
    SELECT v.month, history_movement(v.new_start, v.new_mrr, v.ever_new) AS a, history_movement(v.old_start, v.old_mrr, v.ever_old) AS b FROM v
  )
  INSERT INTO history_mrr_movements AS m (month, slot, new, expansion, contraction, churn, reactivation, new_customers, reactivated_customers, churned_customers)
  SELECT month, my_slot, sum((a).new - (b).new), sum((a).expansion - (b).expansion), sum((a).contraction - (b).contraction),
         sum((a).churn - (b).churn), sum((a).reactivation - (b).reactivation), sum((a).new_customers - (b).new_customers),
         sum((a).reactivated_customers - (b).reactivated_customers), sum((a).churned_customers - (b).churned_customers)
  FROM moved
  GROUP BY month
  HAVING sum(abs((a).new - (b).new) + abs((a).expansion - (b).expansion) + abs((a).contraction - (b).contraction) + abs((a).churn - (b).churn)
             + abs((a).reactivation - (b).reactivation) + abs((a).new_customers - (b).new_customers)
             + abs((a).reactivated_customers - (b).reactivated_customers) + abs((a).churned_customers - (b).churned_customers)) <> 0
  ORDER BY month
  ON CONFLICT (month, slot) DO UPDATE
    SET new = m.new + EXCLUDED.new, expansion = m.expansion + EXCLUDED.expansion, contraction = m.contraction + EXCLUDED.contraction,
        churn = m.churn + EXCLUDED.churn, reactivation = m.reactivation + EXCLUDED.reactivation,
        new_customers = m.new_customers + EXCLUDED.new_customers,
        reactivated_customers = m.reactivated_customers + EXCLUDED.reactivated_customers,
        churned_customers = m.churned_customers + EXCLUDED.churned_customers;

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
  )
  INSERT INTO history_user_values AS v (user_id, effective_at, day, total, subscription_count)
  SELECT w.user_id, w.at, (w.at AT TIME ZONE 'UTC')::date, coalesce(o.total, 0) + w.dc, coalesce(o.subscription_count, 0) + w.dn
  FROM w LEFT JOIN LATERAL (
    SELECT x.total, x.subscription_count FROM history_user_values x WHERE x.user_id = w.user_id AND x.effective_at <= w.at
    ORDER BY x.effective_at DESC LIMIT 1) o ON true
  ORDER BY 1, 2
  ON CONFLICT (user_id, effective_at) DO UPDATE SET total = EXCLUDED.total, subscription_count = EXCLUDED.subscription_count;
END $$;

-- 0013b's snapshots for changes on `days` (first_day the earliest). Changes all on the latest
-- snapshot day (nearly every write): nothing to do, under a shared lock, checked again once it is
-- held (a builder may have committed meanwhile). Otherwise the exclusive lock, so that every change
-- of the days before is committed and seen: the first writer of a day builds its snapshot, a change
-- back in time rebuilds the snapshots after it. Called after the value log is written.
CREATE FUNCTION history_apply_snapshots(first_day date, days date[]) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
  one_day constant boolean := cardinality(days) = 1;
  d date;
BEGIN
  IF one_day AND (SELECT max(h.day) FROM history_snapshot_days h) = first_day THEN
    PERFORM pg_advisory_xact_lock_shared(1836217714, -2);
    IF (SELECT max(h.day) FROM history_snapshot_days h) = first_day THEN
      RETURN;
    END IF;
  END IF;
  PERFORM pg_advisory_xact_lock(1836217714, -2);
  IF one_day AND (SELECT max(h.day) FROM history_snapshot_days h) = first_day THEN
    RETURN; -- built by the writer this one waited for
  END IF;
  FOR d IN SELECT h.day FROM history_snapshot_days h WHERE h.day > first_day UNION SELECT unnest(days) ORDER BY 1 LOOP
    PERFORM history_snapshot_derive(d);
  END LOOP;
END $$;

-- The general path: any set of changes (what 0013b's history_apply did, in the same order).
CREATE OR REPLACE FUNCTION history_apply(changes history_change[]) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
  first_day date;
  days date[];
BEGIN
  PERFORM history_apply_buckets(changes);
  PERFORM history_apply_users(changes);
  SELECT min(x.day), array_agg(DISTINCT x.day) INTO first_day, days FROM (SELECT (c.effective_at AT TIME ZONE 'UTC')::date AS day FROM unnest(changes) c) x;
  IF first_day IS NOT NULL THEN
    PERFORM history_apply_snapshots(first_day, days);
  END IF;
END $$;

DROP FUNCTION history_apply_aggregates(history_change[]);

-- The fast path: one subscription event whose sides (the values after it, +1, not for a deletion;
-- before it, -1, not for a creation: previous_attributes over the object) belong to one user, as
-- history_sides_sql (0010) makes them, taking effect at `effective`; the caller has checked that a
-- field these metrics read changed. Writes what history_apply would for the same changes, with
-- scalars: one bucket upsert per table, then the user's rows when the change is not back in time
-- for them.
CREATE FUNCTION history_apply_one(effective timestamptz, has_before boolean, has_after boolean, pa jsonb,
                                  o_user bigint, o_status text, o_period text, o_cost numeric, o_start date)
RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
  my_slot constant smallint := coalesce(nullif(current_setting('analytics.slot', true), '')::smallint, analytics_claim_slot());
  effective_day constant date := (effective AT TIME ZONE 'UTC')::date;
  effective_month constant date := date_trunc('month', effective AT TIME ZONE 'UTC')::date;
  day_start constant timestamptz := effective_day::timestamp AT TIME ZONE 'UTC';
  month_start constant timestamptz := effective_month::timestamp AT TIME ZONE 'UTC';
  -- The side before the change.
  b_status text;
  b_period text;
  b_cost numeric;
  b_mrr numeric;
  -- Bucket keys, status (k) and start month (r): one when both sides share it (their net), else
  -- one per side.
  k1_status text;
  k1_period text;
  k1_n integer;
  k1_cost numeric;
  k1_mrr numeric;
  k2_status text;
  k2_period text;
  k2_n integer;
  k2_cost numeric;
  k2_mrr numeric;
  r1_month date;
  r1_n integer;
  r1_cost numeric;
  r2_month date;
  r2_n integer;
  r2_cost numeric;
  -- The user's net change.
  a_mrr numeric := 0;
  d_mrr numeric := 0;
  d_cost numeric := 0;
  d_n integer := 0;
  d_rise numeric := 0;
  -- The user's latest month row, the MRR at the end of the month before the change's, their latest
  -- value, the latest snapshot day.
  l_month date;
  l_mrr numeric;
  l_cost numeric;
  l_n bigint;
  l_max numeric;
  anchor numeric;
  v_at timestamptz;
  v_total numeric;
  v_n bigint;
  latest_day date;
  ever boolean := false;
  m_after history_movement;
  m_before history_movement;
  changes history_change[];
BEGIN
  IF has_after THEN
    a_mrr := history_mrr(o_status, o_cost, o_period);
    d_mrr := a_mrr;
    d_cost := o_cost;
    d_n := 1;
    d_rise := greatest(o_cost, 0);
    k1_status := o_status; k1_period := o_period; k1_n := 1; k1_cost := o_cost; k1_mrr := a_mrr;
    r1_month := date_trunc('month', o_start::timestamp)::date; r1_n := 1; r1_cost := o_cost;
  END IF;
  IF has_before THEN
    b_status := coalesce(pa ->> 'status', o_status);
    b_period := coalesce(pa ->> 'billing_period', o_period);
    b_cost := coalesce((pa ->> 'plan_cost')::numeric, o_cost);
    b_mrr := history_mrr(b_status, b_cost, b_period);
    d_mrr := d_mrr - b_mrr;
    d_cost := d_cost - b_cost;
    d_n := d_n - 1;
    d_rise := d_rise + greatest(-b_cost, 0);
    IF has_after AND b_status = o_status AND b_period = o_period THEN
      k1_n := 0; k1_cost := o_cost - b_cost; k1_mrr := a_mrr - b_mrr;
    ELSE
      k2_status := b_status; k2_period := b_period; k2_n := -1; k2_cost := -b_cost; k2_mrr := -b_mrr;
    END IF;
    r2_month := date_trunc('month', coalesce((pa ->> 'start_date')::date, o_start)::timestamp)::date;
    IF has_after AND r2_month = r1_month THEN
      r1_n := 0; r1_cost := o_cost - b_cost; r2_month := NULL;
    ELSE
      r2_n := -1; r2_cost := -b_cost;
    END IF;
  END IF;

  -- 0010's buckets, listed in the order its statements sort them (span, bucket, key: a writer
  -- sharing this slot locks them in the same order); a net of nothing is no row.
  IF k2_status IS NOT NULL AND k1_status IS NOT NULL AND (k2_status, k2_period) < (k1_status, k1_period) THEN
    SELECT k2_status, k2_period, k2_n, k2_cost, k2_mrr, k1_status, k1_period, k1_n, k1_cost, k1_mrr
    INTO k1_status, k1_period, k1_n, k1_cost, k1_mrr, k2_status, k2_period, k2_n, k2_cost, k2_mrr;
  END IF;
  IF r2_month < r1_month THEN
    SELECT r2_month, r2_n, r2_cost, r1_month, r1_n, r1_cost INTO r1_month, r1_n, r1_cost, r2_month, r2_n, r2_cost;
  END IF;
  INSERT INTO history_status_changes AS t (span, bucket, status, billing_period, slot, subscription_count, plan_cost_sum, mrr_sum)
  SELECT k.span, k.bucket, k.status, k.period, my_slot, k.n, k.cost, k.mrr
  FROM (VALUES ('day', day_start, k1_status, k1_period, k1_n, k1_cost, k1_mrr), ('day', day_start, k2_status, k2_period, k2_n, k2_cost, k2_mrr),
               ('instant', effective, k1_status, k1_period, k1_n, k1_cost, k1_mrr), ('instant', effective, k2_status, k2_period, k2_n, k2_cost, k2_mrr),
               ('month', month_start, k1_status, k1_period, k1_n, k1_cost, k1_mrr), ('month', month_start, k2_status, k2_period, k2_n, k2_cost, k2_mrr))
       AS k (span, bucket, status, period, n, cost, mrr)
  WHERE k.status IS NOT NULL AND (k.n <> 0 OR k.cost <> 0 OR k.mrr <> 0)
  ON CONFLICT (span, bucket, status, billing_period, slot) DO UPDATE
    SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
        plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum,
        mrr_sum = t.mrr_sum + EXCLUDED.mrr_sum;
  INSERT INTO history_revenue_changes AS t (span, bucket, start_month, slot, subscription_count, plan_cost_sum)
  SELECT r.span, r.bucket, r.month, my_slot, r.n, r.cost
  FROM (VALUES ('day', day_start, r1_month, r1_n, r1_cost), ('day', day_start, r2_month, r2_n, r2_cost),
               ('instant', effective, r1_month, r1_n, r1_cost), ('instant', effective, r2_month, r2_n, r2_cost),
               ('month', month_start, r1_month, r1_n, r1_cost), ('month', month_start, r2_month, r2_n, r2_cost))
       AS r (span, bucket, month, n, cost)
  WHERE r.month IS NOT NULL AND (r.n <> 0 OR r.cost <> 0)
  ON CONFLICT (span, bucket, start_month, slot) DO UPDATE
    SET subscription_count = t.subscription_count + EXCLUDED.subscription_count,
        plan_cost_sum = t.plan_cost_sum + EXCLUDED.plan_cost_sum;

  -- 0010's locks for one user (shared -1, then the user's: one statement, the subquery first), then
  -- in a statement of its own (a fresh snapshot, taken after the locks) the user's latest rows.
  PERFORM pg_advisory_xact_lock(1836217714, (o_user % 2147483647)::integer)
  FROM (SELECT pg_advisory_xact_lock_shared(1836217714, -1) OFFSET 0) shared;
  SELECT m.month, m.mrr, m.plan_cost_sum, m.subscription_count, m.plan_cost_max,
         (SELECT r.mrr FROM history_user_months r WHERE r.user_id = o_user AND r.month < effective_month ORDER BY r.month DESC LIMIT 1),
         v.effective_at, v.total, v.subscription_count, (SELECT max(h.day) FROM history_snapshot_days h)
  INTO l_month, l_mrr, l_cost, l_n, l_max, anchor, v_at, v_total, v_n, latest_day
  FROM (VALUES (1)) AS one (x)
  LEFT JOIN LATERAL (SELECT r.month, r.mrr, r.plan_cost_sum, r.subscription_count, r.plan_cost_max FROM history_user_months r
                     WHERE r.user_id = o_user ORDER BY r.month DESC LIMIT 1) m ON true
  LEFT JOIN LATERAL (SELECT x.effective_at, x.total, x.subscription_count FROM history_user_values x
                     WHERE x.user_id = o_user ORDER BY x.effective_at DESC LIMIT 1) v ON true;

  IF l_month > effective_month OR v_at > effective THEN
    -- Back in time for this user (later rows shift): 0010's and 0013's per-user statements.
    changes := '{}';
    IF has_before THEN
      changes := changes || ROW(effective, -1, o_user, b_status, b_period, b_cost, coalesce((pa ->> 'start_date')::date, o_start))::history_change;
    END IF;
    IF has_after THEN
      changes := changes || ROW(effective, 1, o_user, o_status, o_period, o_cost, o_start)::history_change;
    END IF;
    PERFORM history_apply_users(changes);
  ELSE
    -- 0010's month row and movements for one user and month with nothing after it: the month
    -- starts at the previous month row's end (anchor), and ends at the latest row's end plus the
    -- change; the bound of the month's maximum rises by the change's rise.
    IF d_mrr <> 0 OR d_cost <> 0 OR d_n <> 0 OR d_rise <> 0 THEN
      INSERT INTO history_user_months AS r (user_id, month, mrr, plan_cost_sum, subscription_count, plan_cost_max)
      VALUES (o_user, effective_month, coalesce(l_mrr, 0) + d_mrr, coalesce(l_cost, 0) + d_cost, coalesce(l_n, 0) + d_n,
              CASE WHEN l_month = effective_month THEN l_max ELSE coalesce(l_cost, 0) END + d_rise)
      ON CONFLICT (user_id, month) DO UPDATE
        SET mrr = EXCLUDED.mrr, plan_cost_sum = EXCLUDED.plan_cost_sum, subscription_count = EXCLUDED.subscription_count,
            plan_cost_max = EXCLUDED.plan_cost_max;
      IF d_mrr <> 0 THEN
        anchor := coalesce(anchor, 0);
        -- Whether the user had MRR at an earlier month's end matters only from zero (new or reactivation).
        IF anchor = 0 THEN
          ever := EXISTS (SELECT FROM history_user_months r WHERE r.user_id = o_user AND r.month < effective_month AND r.mrr > 0);
        END IF;
        m_after := history_movement(anchor, coalesce(l_mrr, 0) + d_mrr, ever);
        m_before := history_movement(anchor, coalesce(l_mrr, 0), ever);
        IF m_after IS DISTINCT FROM m_before THEN
          INSERT INTO history_mrr_movements AS m (month, slot, new, expansion, contraction, churn, reactivation, new_customers, reactivated_customers, churned_customers)
          VALUES (effective_month, my_slot, m_after.new - m_before.new, m_after.expansion - m_before.expansion, m_after.contraction - m_before.contraction,
                  m_after.churn - m_before.churn, m_after.reactivation - m_before.reactivation, m_after.new_customers - m_before.new_customers,
                  m_after.reactivated_customers - m_before.reactivated_customers, m_after.churned_customers - m_before.churned_customers)
          ON CONFLICT (month, slot) DO UPDATE
            SET new = m.new + EXCLUDED.new, expansion = m.expansion + EXCLUDED.expansion, contraction = m.contraction + EXCLUDED.contraction,
                churn = m.churn + EXCLUDED.churn, reactivation = m.reactivation + EXCLUDED.reactivation,
                new_customers = m.new_customers + EXCLUDED.new_customers,
                reactivated_customers = m.reactivated_customers + EXCLUDED.reactivated_customers,
                churned_customers = m.churned_customers + EXCLUDED.churned_customers;
        END IF;
      END IF;
    END IF;
    -- 0013's value log: the user's figures from this instant on.
    IF d_cost <> 0 OR d_n <> 0 THEN
      INSERT INTO history_user_values AS v (user_id, effective_at, day, total, subscription_count)
      VALUES (o_user, effective, effective_day, coalesce(v_total, 0) + d_cost, coalesce(v_n, 0) + d_n)
      ON CONFLICT (user_id, effective_at) DO UPDATE SET total = EXCLUDED.total, subscription_count = EXCLUDED.subscription_count;
    END IF;
  END IF;

  -- 0013b's snapshot check for the latest snapshot day (its first probe is the read above: what
  -- decides is the probe under the shared lock); any other day, its code.
  IF latest_day = effective_day THEN
    PERFORM pg_advisory_xact_lock_shared(1836217714, -2);
    IF (SELECT max(h.day) FROM history_snapshot_days h) = effective_day THEN
      RETURN;
    END IF;
  END IF;
  PERFORM history_apply_snapshots(effective_day, ARRAY[effective_day]);
END $$;

-- The trigger on events: one subscription event of one user takes the fast path, anything else
-- (bulk statements, a subscription moved to another user) 0010's statement and history_apply.
-- The event's effective time as 0010 probes it (the latest occurred_at of its subscription's
-- events so far), read with the event in one statement.
DO $do$
BEGIN
  EXECUTE format($fn$
    CREATE OR REPLACE FUNCTION history_events_inserted() RETURNS trigger LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $body$
    DECLARE
      subscription_events bigint;
      changes history_change[];
      event_type text;
      effective timestamptz;
      previous jsonb;
      o_user bigint;
      o_status text;
      o_period text;
      o_cost numeric;
      o_start date;
    BEGIN
      SELECT (SELECT count(*) FROM (SELECT FROM new_events m WHERE m.object_type = 'subscription' LIMIT 2) x),
             n.type, greatest(n.occurred_at, (SELECT max(p.occurred_at) FROM events p
                                              WHERE p.object_id = n.object_id AND p.object_type = 'subscription' AND p.id < n.id)),
             n.previous_attributes, (n.object_subscription).user_id, (n.object_subscription).status, (n.object_subscription).billing_period,
             (n.object_subscription).plan_cost::numeric, (n.object_subscription).start_date
      INTO subscription_events, event_type, effective, previous, o_user, o_status, o_period, o_cost, o_start
      FROM new_events n WHERE n.object_type = 'subscription' LIMIT 1;
      IF subscription_events IS NULL THEN
        RETURN NULL; -- no subscription event
      ELSIF subscription_events = 1 THEN
        IF event_type = 'subscription.updated' AND NOT previous ?| ARRAY['user_id', 'status', 'billing_period', 'plan_cost', 'start_date'] THEN
          RETURN NULL; -- no field these metrics read changed
        ELSIF NOT previous ? 'user_id' THEN
          PERFORM history_apply_one(effective, event_type <> 'subscription.created', event_type <> 'subscription.deleted',
                                    previous, o_user, o_status, o_period, o_cost, o_start);
          RETURN NULL;
        END IF;
      END IF;
      SELECT array_agg(c) INTO changes FROM (%s) x;
      IF changes IS NOT NULL THEN
        PERFORM history_apply(changes);
      END IF;
      RETURN NULL;
    END $body$ $fn$,
    history_sides_sql($$(
      SELECT n.type, greatest(n.occurred_at, (SELECT max(p.occurred_at) FROM events p
                                              WHERE p.object_id = n.object_id AND p.object_type = 'subscription' AND p.id < n.id)) AS effective_at,
             n.previous_attributes AS pa, (n.object_subscription).user_id, (n.object_subscription).status,
             (n.object_subscription).billing_period, (n.object_subscription).plan_cost::numeric AS plan_cost, (n.object_subscription).start_date
      FROM new_events n WHERE n.object_type = 'subscription')$$));
END $do$;
