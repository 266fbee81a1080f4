-- Metrics from history: MRR movements per month (GET /api/analytics/mrr) and every analytics
-- figure as it stood at a past instant (GET /api/analytics?as_of=), kept exact in the same
-- transaction as every change by one statement-level trigger on events (migration 0006), so
-- whoever writes (API, SQL, cascades, bulk statements, TRUNCATE) and whatever the history says is
-- what these aggregates say. A read costs a few hundred small rows whatever the table size.
--
-- When a change takes effect: at its event's occurred_at, but never before a change recorded
-- earlier for the same object. (Two transactions changing one subscription at nearly the same
-- time: the one that started first can commit second; its change follows the other and takes
-- effect at that one's time.) So effective_at of an event = max(occurred_at) over the events of
-- its object up to it (by id), and each object's states follow each other in time as they did in
-- the table. The state at instant T: every change with effective_at <= T.
--
-- What is kept (all additive deltas or per-user values; hot rows spread over analytics slots as
-- in 0002, and per-user maintenance serialized by a transaction-level advisory lock per user):
-- - history_status_changes: count, plan_cost and MRR per (status, billing_period), bucketed by the
--   month, the day and the instant the change took effect. The state at T is the sum of the month
--   buckets before T's month, the day buckets of T's month before T's day, and the instants of
--   T's day up to T: at most ~40 + 31 + (changes of one day) rows per key.
-- - history_revenue_changes: the same for plan_cost per start month (monthly_revenue).
-- - history_user_months: per user and month in which the user's figures changed: MRR, plan_cost
--   sum and count at the month's end (now, for the current month), and an upper bound of the
--   plan_cost sum during the month (top users at T: a threshold scan, see history_top_users).
-- - history_mrr_movements: per month, the MRR movements of the users classified by their MRR at
--   the month's start and end; ending MRR and customers are running sums of them.

CREATE FUNCTION history_mrr(status text, plan_cost numeric, billing_period text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN status <> 'active' THEN 0 WHEN billing_period = 'year' THEN round(plan_cost / 12, 2) ELSE plan_cost END $$;

-- One side of a subscription change: -1 and the values before it, +1 and the values after it.
CREATE TYPE history_change AS (
  effective_at timestamptz, sign integer, user_id bigint, status text, billing_period text, plan_cost numeric, start_date date);

-- A user's movement in one month from their MRR at its start (s) and end (e); ever: the user had
-- MRR > 0 at the end of some earlier month (0 -> >0 is then a reactivation, else new).
CREATE TYPE history_movement AS (
  new numeric, expansion numeric, contraction numeric, churn numeric, reactivation numeric,
  new_customers bigint, reactivated_customers bigint, churned_customers bigint);
CREATE FUNCTION history_movement(s numeric, e numeric, ever boolean) RETURNS history_movement
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ROW(
  CASE WHEN s = 0 AND e > 0 AND NOT ever THEN e ELSE 0 END,
  CASE WHEN s > 0 AND e > s THEN e - s ELSE 0 END,
  CASE WHEN e > 0 AND e < s THEN s - e ELSE 0 END,
  CASE WHEN s > 0 AND e = 0 THEN s ELSE 0 END,
  CASE WHEN s = 0 AND e > 0 AND ever THEN e ELSE 0 END,
  (s = 0 AND e > 0 AND NOT ever)::int, (s = 0 AND e > 0 AND ever)::int, (s > 0 AND e = 0)::int)::history_movement $$;

CREATE TABLE history_status_changes (
  span               text        NOT NULL CHECK (span IN ('month', 'day', 'instant')),
  bucket             timestamptz NOT NULL,
  status             text        NOT NULL,
  billing_period     text        NOT NULL,
  slot               smallint    NOT NULL,
  subscription_count bigint      NOT NULL,
  plan_cost_sum      numeric     NOT NULL,
  mrr_sum            numeric     NOT NULL,
  PRIMARY KEY (span, bucket, status, billing_period, slot)
);

CREATE TABLE history_revenue_changes (
  span               text        NOT NULL CHECK (span IN ('month', 'day', 'instant')),
  bucket             timestamptz NOT NULL,
  start_month        date        NOT NULL,
  slot               smallint    NOT NULL,
  subscription_count bigint      NOT NULL,
  plan_cost_sum      numeric     NOT NULL,
  PRIMARY KEY (span, bucket, start_month, slot)
);

CREATE TABLE history_user_months (
  user_id            bigint  NOT NULL,
  month              date    NOT NULL,
  mrr                numeric NOT NULL,
  plan_cost_sum      numeric NOT NULL,
  subscription_count bigint  NOT NULL,
  plan_cost_max      numeric NOT NULL,
  PRIMARY KEY (user_id, month)
);
CREATE INDEX history_user_months_top_idx ON history_user_months (month, plan_cost_max DESC, user_id);

CREATE TABLE history_mrr_movements (
  month                 date     NOT NULL,
  slot                  smallint NOT NULL,
  new                   numeric  NOT NULL,
  expansion             numeric  NOT NULL,
  contraction           numeric  NOT NULL,
  churn                 numeric  NOT NULL,
  reactivation          numeric  NOT NULL,
  new_customers         bigint   NOT NULL,
  reactivated_customers bigint   NOT NULL,
  churned_customers     bigint   NOT NULL,
  PRIMARY KEY (month, slot)
);

-- The changes of a set of subscription events (with effective_at), as signed sides. An update
-- is a change here only when a field these metrics read changed.
-- `source` yields (type, effective_at, pa: previous_attributes, and the object's user_id, status,
-- billing_period, plan_cost (numeric), start_date).
CREATE FUNCTION history_sides_sql(source text) RETURNS text LANGUAGE sql IMMUTABLE AS $f$
  SELECT format($q$
    WITH e AS (
      SELECT e.*, e.type <> 'subscription.updated' OR e.pa ?| ARRAY['user_id', 'status', 'billing_period', 'plan_cost', 'start_date'] AS relevant
      FROM %s e
    )
    SELECT ROW(effective_at, 1, user_id, status, billing_period, plan_cost, start_date)::history_change AS c
    FROM e WHERE type <> 'subscription.deleted' AND relevant
    UNION ALL
    SELECT ROW(effective_at, -1, coalesce((pa ->> 'user_id')::bigint, user_id), coalesce(pa ->> 'status', status),
               coalesce(pa ->> 'billing_period', billing_period), coalesce((pa ->> 'plan_cost')::numeric, plan_cost),
               coalesce((pa ->> 'start_date')::date, start_date))::history_change
    FROM e WHERE type <> 'subscription.created' AND relevant
  $q$, source)
$f$;

-- Applies signed changes to every aggregate. Callers hold nothing; this takes the per-user locks.
-- Generic plans: a custom plan per call would re-plan its statements on every write (the per-user
-- statement takes several times longer to plan than to run on one row).
CREATE FUNCTION history_apply(changes history_change[]) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
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
END $$;

-- The trigger: the subscription events of the statement, each at its effective time (the latest
-- occurred_at of its object's events so far: one index probe per event).
DO $do$
BEGIN
  EXECUTE format($fn$
    CREATE FUNCTION history_events_inserted() RETURNS trigger LANGUAGE plpgsql AS $body$
    DECLARE
      changes history_change[];
    BEGIN
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

CREATE FUNCTION history_events_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE history_status_changes, history_revenue_changes, history_user_months, history_mrr_movements;
  RETURN NULL;
END $$;

CREATE TRIGGER history_analytics_inserted AFTER INSERT ON events
  REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION history_events_inserted();
CREATE TRIGGER history_analytics_truncated AFTER TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION history_events_truncated();

-- ---------------------------------------------------------------------------------------------
-- Reads. Months are first days of UTC months; the current month's end is now (every change).
-- PL/pgSQL, not SQL functions: these are not inlined, and PostgreSQL plans a SQL function's
-- statements on every call but caches PL/pgSQL's per connection.

-- The MRR report from the maintained movements: every month up to to_month is read (a few dozen
-- rows per slot), the months before from_month only as the starting point.
CREATE FUNCTION history_mrr_report(from_month date, to_month date)
RETURNS TABLE (month date, starting_mrr numeric, new numeric, expansion numeric, contraction numeric, churn numeric, reactivation numeric,
               ending_mrr numeric, starting_customers bigint, customers bigint, new_customers bigint, reactivated_customers bigint, churned_customers bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH per_month AS (
    SELECT m.month, sum(m.new) AS new, sum(m.expansion) AS expansion, sum(m.contraction) AS contraction, sum(m.churn) AS churn,
           sum(m.reactivation) AS reactivation, sum(m.new_customers) AS new_customers, sum(m.reactivated_customers) AS reactivated_customers,
           sum(m.churned_customers) AS churned_customers
    FROM history_mrr_movements m WHERE m.month <= to_month GROUP BY m.month
  ), before AS (
    SELECT coalesce(sum(new + expansion + reactivation - contraction - churn), 0) AS mrr,
           coalesce(sum(new_customers + reactivated_customers - churned_customers), 0)::bigint AS customers
    FROM per_month WHERE month < from_month
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
    WINDOW w AS (ORDER BY m.month)
  )
  SELECT month, ending_mrr - (new + expansion + reactivation - contraction - churn), new, expansion, contraction, churn, reactivation, ending_mrr,
         (customers - (new_customers + reactivated_customers - churned_customers))::bigint, customers::bigint, new_customers, reactivated_customers, churned_customers
  FROM running ORDER BY month;
END
$$;

-- Every subscription event with its effective time and whether it leaves the subscription in
-- place; the plain computations below read the history through this view and nothing else.
CREATE VIEW history_subscription_versions AS
SELECT e.id, e.object_id, e.type, (e.object_subscription).user_id, (e.object_subscription).status, (e.object_subscription).billing_period,
       (e.object_subscription).plan_cost::numeric AS plan_cost, (e.object_subscription).start_date,
       max(e.occurred_at) OVER (PARTITION BY e.object_id ORDER BY e.id) AS effective_at
FROM events e WHERE e.object_type = 'subscription';

-- The same report computed from the events alone (source=base_tables): each user's MRR at the end
-- of every month from the first recorded one, from the subscriptions as they stood then.
CREATE FUNCTION history_mrr_report_plain(from_month date, to_month date)
RETURNS TABLE (month date, starting_mrr numeric, new numeric, expansion numeric, contraction numeric, churn numeric, reactivation numeric,
               ending_mrr numeric, starting_customers bigint, customers bigint, new_customers bigint, reactivated_customers bigint, churned_customers bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH versions AS (
    -- Each version holds from its effective time until the next version's (or forever).
    SELECT v.*, lead(v.effective_at) OVER (PARTITION BY v.object_id ORDER BY v.id) AS until
    FROM history_subscription_versions v
  ), ends AS (
    -- Month m's end: the first instant of the next month; the current month's: now (every change).
    SELECT s.month::date AS month,
           CASE WHEN s.month::date = date_trunc('month', now() AT TIME ZONE 'UTC')::date THEN 'infinity'::timestamptz
                ELSE (s.month + interval '1 month') AT TIME ZONE 'UTC' END AS at
    FROM generate_series(least(from_month, coalesce((SELECT min(date_trunc('month', effective_at AT TIME ZONE 'UTC')) FROM versions), from_month)),
                         to_month, interval '1 month') AS s (month)
  ), user_ends AS (
    -- Per user and month end: MRR of the subscriptions in place just before it.
    SELECT e.month, v.user_id, sum(history_mrr(v.status, v.plan_cost, v.billing_period)) AS mrr
    FROM ends e JOIN versions v ON v.effective_at < e.at AND (v.until IS NULL OR v.until >= e.at) AND v.type <> 'subscription.deleted'
    GROUP BY 1, 2
  ), users_months AS (
    SELECT e.month, u.user_id, coalesce(ue.mrr, 0) AS mrr
    FROM ends e CROSS JOIN (SELECT DISTINCT user_id FROM user_ends) u
    LEFT JOIN user_ends ue ON ue.month = e.month AND ue.user_id = u.user_id
  ), classified AS (
    SELECT month, history_movement(coalesce(lag(mrr) OVER w, 0), mrr, coalesce(bool_or(mrr > 0) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), false)) AS m,
           coalesce(lag(mrr) OVER w, 0) AS starting, mrr AS ending
    FROM users_months WINDOW w AS (PARTITION BY user_id ORDER BY month)
  )
  SELECT e.month, coalesce(sum(c.starting), 0), coalesce(sum((c.m).new), 0), coalesce(sum((c.m).expansion), 0), coalesce(sum((c.m).contraction), 0),
         coalesce(sum((c.m).churn), 0), coalesce(sum((c.m).reactivation), 0), coalesce(sum(c.ending), 0),
         count(*) FILTER (WHERE c.starting > 0), count(*) FILTER (WHERE c.ending > 0), coalesce(sum((c.m).new_customers), 0)::bigint,
         coalesce(sum((c.m).reactivated_customers), 0)::bigint, coalesce(sum((c.m).churned_customers), 0)::bigint
  FROM ends e LEFT JOIN classified c USING (month)
  WHERE e.month >= from_month
  GROUP BY e.month ORDER BY e.month;
END
$$;

-- A user's subscriptions at t, from the events (every subscription that ever was theirs, each as
-- its latest version in effect at t): plan_cost sum and count. For the few candidates of a top.
CREATE FUNCTION history_user_at(u bigint, t timestamptz, OUT total numeric, OUT subscriptions bigint) LANGUAGE plpgsql STABLE AS $$
BEGIN
  SELECT coalesce(sum(v.plan_cost), 0), count(v.*) INTO total, subscriptions
  FROM (SELECT DISTINCT e.object_id FROM events e WHERE e.user_id = u AND e.object_type = 'subscription') s
  CROSS JOIN LATERAL (
    SELECT z.* FROM (
      SELECT e.id, e.type, (e.object_subscription).user_id, (e.object_subscription).plan_cost::numeric AS plan_cost,
             max(e.occurred_at) OVER (ORDER BY e.id) AS effective_at
      FROM events e WHERE e.object_id = s.object_id AND e.object_type = 'subscription') z
    WHERE z.effective_at <= t ORDER BY z.id DESC LIMIT 1) v
  WHERE v.type <> 'subscription.deleted' AND v.user_id = u;
END $$;

-- A user's name and email at t (their latest event in effect then).
CREATE FUNCTION history_user_identity_at(u bigint, t timestamptz, OUT name text, OUT email text) LANGUAGE plpgsql STABLE AS $$
BEGIN
  SELECT (z.o).name, (z.o).email INTO name, email FROM (
    SELECT e.id, e.object_user AS o, max(e.occurred_at) OVER (ORDER BY e.id) AS effective_at
    FROM events e WHERE e.object_id = u::text AND e.object_type = 'user') z
  WHERE z.effective_at <= t ORDER BY z.id DESC LIMIT 1;
END $$;

-- The top users at t from history_user_months, exact, by a threshold scan: a user's figures at t
-- are those of their latest month row up to t's month. Rows of t's month are taken in order of
-- their plan_cost bound during the month, each evaluated exactly at t from the events; rows of
-- each earlier month (when no later row up to t's month supersedes them) in order of the same
-- bound, at their month-end value. A scan stops when the bound falls below the k-th best so far
-- (ties go to the lower user_id, so an equal bound still reads on). In a growing business each
-- month's scan stops after a few rows: the cost follows months of history, not the table size.
CREATE FUNCTION history_top_users(t timestamptz, k integer DEFAULT 5)
RETURNS TABLE (user_id bigint, total numeric) LANGUAGE plpgsql STABLE AS $$
DECLARE
  x constant date := date_trunc('month', t AT TIME ZONE 'UTC')::date;
  first_month date;
  m date;
  r record;
  v_total numeric;
  v_count bigint;
  best_total numeric[] := '{}';
  best_user bigint[] := '{}';
  kth numeric;
  -- Each month is read in pages of 16 rows from the index, continuing after the last row read (a
  -- query without LIMIT would be planned to sort the whole month).
  last_max numeric;
  last_user bigint;
  page integer;
  done boolean;
BEGIN
  SELECT min(h.month) INTO first_month FROM history_user_months h;
  m := x;
  WHILE first_month IS NOT NULL AND m >= first_month LOOP
    last_max := 'Infinity';
    last_user := -1;
    done := false;
    WHILE NOT done LOOP
      page := 0;
      FOR r IN
        SELECT h.user_id, h.plan_cost_sum, h.subscription_count, h.plan_cost_max FROM history_user_months h
        WHERE h.month = m AND (h.plan_cost_max < last_max OR (h.plan_cost_max = last_max AND h.user_id > last_user))
        ORDER BY h.plan_cost_max DESC, h.user_id LIMIT 16
      LOOP
        page := page + 1;
        last_max := r.plan_cost_max;
        last_user := r.user_id;
        IF cardinality(best_total) >= k AND r.plan_cost_max < kth THEN
          done := true;
          EXIT;
        END IF;
        IF m = x THEN
          SELECT a.total, a.subscriptions INTO v_total, v_count FROM history_user_at(r.user_id, t) a;
        ELSIF EXISTS (SELECT FROM history_user_months h WHERE h.user_id = r.user_id AND h.month > m AND h.month <= x) THEN
          CONTINUE;
        ELSE
          v_total := r.plan_cost_sum;
          v_count := r.subscription_count;
        END IF;
        CONTINUE WHEN v_count = 0 OR r.user_id = ANY (best_user);
        SELECT array_agg(b.total ORDER BY b.total DESC, b.uid), array_agg(b.uid ORDER BY b.total DESC, b.uid)
        INTO best_total, best_user
        FROM (SELECT b.total, b.uid FROM unnest(best_total || v_total, best_user || r.user_id) AS b (total, uid)
              ORDER BY b.total DESC, b.uid LIMIT k) b;
        IF cardinality(best_total) >= k THEN kth := best_total[k]; END IF;
      END LOOP;
      IF page < 16 THEN done := true; END IF;
    END LOOP;
    m := (m - interval '1 month')::date;
  END LOOP;
  RETURN QUERY SELECT b.uid, b.total FROM unnest(best_user, best_total) AS b (uid, total) ORDER BY b.total DESC, b.uid;
END $$;

-- The inputs of every /api/analytics figure at t, from the maintained aggregates: totals per
-- status and billing period, plan_cost per start month of the 12 months ending with t's, the top 5
-- users with their name and email then. Buckets: months before t's month, days of t's month before
-- t's day, instants of t's day up to t.
CREATE FUNCTION history_analytics_inputs(t timestamptz) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
  RETURN (
  WITH b AS (
    SELECT date_trunc('month', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month_start, date_trunc('day', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day_start,
           (date_trunc('month', t AT TIME ZONE 'UTC') - interval '11 months')::date AS first_month, date_trunc('month', t AT TIME ZONE 'UTC')::date AS last_month
  ), status AS (
    SELECT c.status, c.billing_period, sum(c.subscription_count) AS n, sum(c.plan_cost_sum) AS cost, sum(c.mrr_sum) AS mrr
    FROM b, LATERAL (
      SELECT * FROM history_status_changes WHERE span = 'month' AND bucket < b.month_start
      UNION ALL SELECT * FROM history_status_changes WHERE span = 'day' AND bucket >= b.month_start AND bucket < b.day_start
      UNION ALL SELECT * FROM history_status_changes WHERE span = 'instant' AND bucket >= b.day_start AND bucket <= t) c
    GROUP BY 1, 2
  ), revenue AS (
    SELECT c.start_month, sum(c.plan_cost_sum) AS cost
    FROM b, LATERAL (
      SELECT * FROM history_revenue_changes WHERE span = 'month' AND bucket < b.month_start
      UNION ALL SELECT * FROM history_revenue_changes WHERE span = 'day' AND bucket >= b.month_start AND bucket < b.day_start
      UNION ALL SELECT * FROM history_revenue_changes WHERE span = 'instant' AND bucket >= b.day_start AND bucket <= t) c
    WHERE c.start_month BETWEEN b.first_month AND b.last_month
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

-- The same inputs computed from the events alone (source=base_tables): every subscription as its
-- latest version in effect at t.
CREATE FUNCTION history_analytics_inputs_plain(t timestamptz) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
  RETURN (
  WITH live AS (
    SELECT DISTINCT ON (v.object_id) v.* FROM history_subscription_versions v WHERE v.effective_at <= t ORDER BY v.object_id, v.id DESC
  ), subs AS (SELECT * FROM live WHERE type <> 'subscription.deleted'),
  b AS (SELECT (date_trunc('month', t AT TIME ZONE 'UTC') - interval '11 months')::date AS first_month, date_trunc('month', t AT TIME ZONE 'UTC')::date AS last_month),
  top AS (
    SELECT user_id, sum(plan_cost) AS total FROM subs GROUP BY user_id ORDER BY total DESC, user_id LIMIT 5
  )
  SELECT jsonb_build_object(
    'statuses', (SELECT coalesce(jsonb_agg(jsonb_build_object('status', status, 'billing_period', billing_period, 'count', n, 'plan_cost', cost::text, 'mrr', mrr::text)), '[]')
                 FROM (SELECT status, billing_period, count(*) AS n, sum(plan_cost) AS cost, sum(history_mrr(status, plan_cost, billing_period)) AS mrr
                       FROM subs GROUP BY 1, 2) s),
    'revenue', (SELECT coalesce(jsonb_agg(jsonb_build_object('month', to_char(m, 'YYYY-MM'), 'revenue', cost::text)), '[]')
                FROM (SELECT date_trunc('month', start_date::timestamp)::date AS m, sum(plan_cost) AS cost FROM subs, b
                      WHERE start_date >= b.first_month AND start_date < b.last_month + interval '1 month' GROUP BY 1) r),
    'top_users', (SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', top.user_id, 'name', (u.o).name, 'email', (u.o).email, 'total_value', top.total::text)
                                            ORDER BY top.total DESC, top.user_id), '[]')
                  FROM top
                  LEFT JOIN LATERAL (
                    SELECT z.o FROM (SELECT e.id, e.object_user AS o, max(e.occurred_at) OVER (ORDER BY e.id) AS effective_at
                                     FROM events e WHERE e.object_type = 'user' AND e.object_id = top.user_id::text) z
                    WHERE z.effective_at <= t ORDER BY z.id DESC LIMIT 1) u ON true)));
END
$$;

-- Every /api/analytics field at t, from the aggregates or (plain) the events alone, as the API
-- shows it (money as 2-decimal strings, by_status in the status enum's order).
CREATE FUNCTION history_analytics_at(t timestamptz, plain boolean) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
  RETURN (
  WITH inputs AS (SELECT CASE WHEN plain THEN history_analytics_inputs_plain(t) ELSE history_analytics_inputs(t) END AS j),
  st AS (
    SELECT x.* FROM inputs, jsonb_to_recordset(inputs.j -> 'statuses') AS x (status text, billing_period text, count bigint, plan_cost numeric, mrr numeric)
  ), rev AS (
    SELECT x.* FROM inputs, jsonb_to_recordset(inputs.j -> 'revenue') AS x (month text, revenue numeric)
  ), top AS (
    SELECT x.* FROM inputs, jsonb_to_recordset(inputs.j -> 'top_users') AS x (user_id bigint, name text, email text, total_value numeric)
  ), active AS (
    SELECT coalesce(sum(plan_cost), 0) AS revenue, coalesce(sum(plan_cost) FILTER (WHERE billing_period = 'month'), 0) AS monthly,
           coalesce(sum(plan_cost) FILTER (WHERE billing_period = 'year'), 0) AS yearly, coalesce(sum(mrr), 0) AS mrr, coalesce(sum(count), 0) AS n
    FROM st WHERE status = 'active'
  )
  SELECT jsonb_build_object(
    'as_of', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
    'total_recurring_revenue', (SELECT revenue::numeric(30, 2)::text FROM active),
    'average_subscription_cost', (SELECT coalesce(round(sum(plan_cost) / nullif(sum(count), 0), 2), 0)::numeric(30, 2)::text FROM st),
    'monthly_revenue', (
      SELECT jsonb_agg(jsonb_build_object('month', to_char(m.month, 'YYYY-MM'), 'revenue', coalesce(rev.revenue, 0)::numeric(30, 2)::text) ORDER BY m.month)
      FROM generate_series(date_trunc('month', t AT TIME ZONE 'UTC') - interval '11 months', date_trunc('month', t AT TIME ZONE 'UTC'), interval '1 month') AS m (month)
      LEFT JOIN rev ON rev.month = to_char(m.month, 'YYYY-MM')),
    'top_users', (SELECT coalesce(jsonb_agg(jsonb_build_object('user_id', user_id, 'name', name, 'email', email, 'total_value', total_value::numeric(30, 2)::text)
                                            ORDER BY total_value DESC, user_id), '[]') FROM top),
    'subscription_count', (SELECT coalesce(sum(count), 0) FROM st),
    'active_subscription_count', (SELECT n FROM active),
    'by_status', (
      SELECT jsonb_agg(jsonb_build_object('status', s.status, 'count', coalesce(x.n, 0), 'revenue', coalesce(x.revenue, 0)::numeric(30, 2)::text) ORDER BY s.position)
      FROM unnest(ARRAY['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired']) WITH ORDINALITY AS s (status, position)
      LEFT JOIN (SELECT status, sum(count) AS n, sum(plan_cost) AS revenue FROM st GROUP BY status) x USING (status)),
    'mrr', (SELECT mrr::numeric(30, 2)::text FROM active),
    'arr', (SELECT (monthly * 12 + yearly)::numeric(30, 2)::text FROM active)));
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Every aggregate as the whole history says, set-based: what rebuild writes and reconcile compares.
-- Per (user, month with changes): the figures at the month's end and the exact maximum of the
-- plan_cost sum during the month; per month: the movements those imply.
DO $do$
BEGIN
  EXECUTE format($fn$
    CREATE FUNCTION history_actual_changes() RETURNS SETOF history_change LANGUAGE sql STABLE AS $body$
      SELECT (x.c).* FROM (%s) x
    $body$ $fn$,
    history_sides_sql($$(
      -- The fields read before the window sorts them: sorting whole events took several times longer.
      SELECT type, max(occurred_at) OVER (PARTITION BY object_id ORDER BY id) AS effective_at, pa, user_id, status, billing_period, plan_cost, start_date
      FROM (SELECT type, occurred_at, object_id, id, previous_attributes AS pa, (object_subscription).user_id, (object_subscription).status,
                   (object_subscription).billing_period, (object_subscription).plan_cost::numeric AS plan_cost, (object_subscription).start_date
            FROM events WHERE object_type = 'subscription' OFFSET 0) ev)$$));
END $do$;

-- Per user and month: the net changes and the rises (as the trigger counts them), then, in one sort
-- by user and month, the figures at each month's end, the MRR at its start and whether the user had
-- MRR at an earlier month's end. From the seed's rows (implied), or from history_actual_changes.
CREATE FUNCTION history_actual_user_months(implied boolean)
RETURNS TABLE (user_id bigint, month date, mrr numeric, plan_cost_sum numeric, subscription_count bigint, plan_cost_max numeric,
               start_mrr numeric, ever boolean)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
    WITH per_month AS (
    SELECT c.user_id, c.month, sum(c.mrr) AS mrr, sum(c.cost) AS cost, sum(c.n)::bigint AS n, sum(c.rise) AS rise
    FROM (
      -- The seed's: created (active until it ended), and ended: its MRR goes, its cost rises as the
      -- +side of the status change.
      SELECT s.user_id, date_trunc('month', s.start_date::timestamp)::date AS month,
             history_mrr(CASE WHEN s.status IN ('canceled', 'expired') AND s.end_date IS NOT NULL THEN 'active' ELSE s.status END, s.plan_cost, s.billing_period) AS mrr,
             s.plan_cost AS cost, 1 AS n, s.plan_cost AS rise
      FROM subscriptions s WHERE implied
      UNION ALL
      SELECT s.user_id, date_trunc('month', s.end_date::timestamp)::date, -history_mrr('active', s.plan_cost, s.billing_period), 0, 0, s.plan_cost
      FROM subscriptions s WHERE implied AND s.status IN ('canceled', 'expired') AND s.end_date IS NOT NULL
      UNION ALL
      SELECT c.user_id, date_trunc('month', c.effective_at AT TIME ZONE 'UTC')::date, c.sign * history_mrr(c.status, c.plan_cost, c.billing_period),
             c.sign * c.plan_cost, c.sign, greatest(c.sign * c.plan_cost, 0)
      FROM history_actual_changes c WHERE NOT implied
    ) c
    GROUP BY 1, 2
  ), ends AS (
    SELECT user_id, month, sum(mrr) OVER u AS mrr, sum(cost) OVER u AS plan_cost_sum, (sum(n) OVER u)::bigint AS subscription_count,
           sum(cost) OVER u - cost + rise AS plan_cost_max, sum(mrr) OVER u - mrr AS start_mrr
    FROM per_month
    WHERE mrr <> 0 OR cost <> 0 OR n <> 0 OR rise <> 0
    WINDOW u AS (PARTITION BY user_id ORDER BY month)
  )
  SELECT *, coalesce(bool_or(mrr > 0) OVER (PARTITION BY user_id ORDER BY month ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), false) AS ever
  FROM ends;
END $$;

-- Fills four temporary tables (history_actual_status, _revenue, _user_months, _movements) with
-- what the aggregates must hold (slots summed, as slot 0), from the events or, for the seed, from
-- its implied history. A user's plan_cost_max is the bound the trigger keeps: the plan_cost sum at
-- the month's start plus the plan_cost of every +side (the values after each change) in the month.
CREATE FUNCTION history_compute_actual(implied boolean DEFAULT false, with_users boolean DEFAULT true) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  DROP TABLE IF EXISTS pg_temp.history_actual_changes, pg_temp.history_actual_status, pg_temp.history_actual_revenue,
                       pg_temp.history_actual_user_months, pg_temp.history_actual_movements;
  IF implied THEN
    CREATE TEMP TABLE history_actual_changes ON COMMIT DROP AS SELECT * FROM history_actual_changes() LIMIT 0;
  ELSE
    CREATE TEMP TABLE history_actual_changes ON COMMIT DROP AS SELECT * FROM history_actual_changes();
  END IF;
  -- Net changes per instant and key first (the seed's history has a few thousand instants), then
  -- the three spans. The seed's implied history is read straight from subscriptions, one row per
  -- change (an ending is the status change alone: its plan_cost sides cancel out).
  IF implied THEN
    CREATE TEMP TABLE history_actual_instants ON COMMIT DROP AS
    SELECT x.day::timestamp AT TIME ZONE 'UTC' AS effective_at, x.status, x.billing_period, x.start_month, x.n, x.cost, x.mrr
    FROM (
      SELECT c.day, c.status, c.billing_period, date_trunc('month', c.start_date::timestamp)::date AS start_month,
             sum(c.n)::bigint AS n, sum(c.n * c.plan_cost) AS cost, sum(c.n * history_mrr(c.status, c.plan_cost, c.billing_period)) AS mrr
      FROM (
        SELECT s.start_date AS day, CASE WHEN s.status IN ('canceled', 'expired') AND s.end_date IS NOT NULL THEN 'active' ELSE s.status END AS status,
               s.billing_period, s.plan_cost, s.start_date, 1 AS n
        FROM subscriptions s
        UNION ALL
        SELECT s.end_date, 'active', s.billing_period, s.plan_cost, s.start_date, -1
        FROM subscriptions s WHERE s.status IN ('canceled', 'expired') AND s.end_date IS NOT NULL
        UNION ALL
        SELECT s.end_date, s.status, s.billing_period, s.plan_cost, s.start_date, 1
        FROM subscriptions s WHERE s.status IN ('canceled', 'expired') AND s.end_date IS NOT NULL
      ) c
      GROUP BY 1, 2, 3, 4
    ) x;
  ELSE
    CREATE TEMP TABLE history_actual_instants ON COMMIT DROP AS
    SELECT c.effective_at, c.status, c.billing_period, date_trunc('month', c.start_date::timestamp)::date AS start_month,
           sum(c.sign)::bigint AS n, sum(c.sign * c.plan_cost) AS cost, sum(c.sign * history_mrr(c.status, c.plan_cost, c.billing_period)) AS mrr
    FROM history_actual_changes c
    GROUP BY 1, 2, 3, 4;
  END IF;
  CREATE TEMP TABLE history_actual_status ON COMMIT DROP AS
  SELECT b.span, b.bucket, i.status, i.billing_period, 0::smallint AS slot, sum(i.n)::bigint AS subscription_count,
         sum(i.cost) AS plan_cost_sum, sum(i.mrr) AS mrr_sum
  FROM (SELECT effective_at, status, billing_period, sum(n) AS n, sum(cost) AS cost, sum(mrr) AS mrr FROM history_actual_instants GROUP BY 1, 2, 3) i
  CROSS JOIN LATERAL (SELECT i.effective_at AT TIME ZONE 'UTC' AS utc) u
  CROSS JOIN LATERAL (VALUES
    ('month', date_trunc('month', u.utc) AT TIME ZONE 'UTC'), ('day', date_trunc('day', u.utc) AT TIME ZONE 'UTC'), ('instant', i.effective_at)) AS b (span, bucket)
  GROUP BY 1, 2, 3, 4
  HAVING sum(i.n) <> 0 OR sum(i.cost) <> 0 OR sum(i.mrr) <> 0;
  CREATE TEMP TABLE history_actual_revenue ON COMMIT DROP AS
  SELECT b.span, b.bucket, i.start_month, 0::smallint AS slot, sum(i.n)::bigint AS subscription_count, sum(i.cost) AS plan_cost_sum
  FROM (SELECT effective_at, start_month, sum(n) AS n, sum(cost) AS cost FROM history_actual_instants GROUP BY 1, 2) i
  CROSS JOIN LATERAL (SELECT i.effective_at AT TIME ZONE 'UTC' AS utc) u
  CROSS JOIN LATERAL (VALUES
    ('month', date_trunc('month', u.utc) AT TIME ZONE 'UTC'), ('day', date_trunc('day', u.utc) AT TIME ZONE 'UTC'), ('instant', i.effective_at)) AS b (span, bucket)
  GROUP BY 1, 2, 3
  HAVING sum(i.n) <> 0 OR sum(i.cost) <> 0;
  DROP TABLE history_actual_instants;
  -- Per user and month: the net changes and the rises (as the trigger counts them), then, in one
  -- sort by user and month, the figures at each month's end, the MRR at its start and whether the
  -- user had MRR at an earlier month's end.
  IF NOT with_users THEN
    RETURN;
  END IF;
  CREATE TEMP TABLE history_actual_user_months ON COMMIT DROP AS SELECT * FROM history_actual_user_months(implied);
  CREATE TEMP TABLE history_actual_movements ON COMMIT DROP AS
  SELECT month, 0::smallint AS slot, sum((m).new) AS new, sum((m).expansion) AS expansion, sum((m).contraction) AS contraction,
         sum((m).churn) AS churn, sum((m).reactivation) AS reactivation, sum((m).new_customers)::bigint AS new_customers,
         sum((m).reactivated_customers)::bigint AS reactivated_customers, sum((m).churned_customers)::bigint AS churned_customers
  FROM (SELECT month, history_movement(start_mrr, mrr, ever) AS m FROM history_actual_user_months OFFSET 0) x
  GROUP BY month;
END $$;

-- Recomputes every aggregate from the history (after a load with the trigger disabled: the seed).
-- SHARE mode: readers go on, writers of history wait until the new figures commit.
-- implied: from the history the seed has just written (history_record_implied() in 0006: each
-- subscription created at its start_date, active until it ended if it did, and a canceled or
-- expired one changed from active at its end_date), read from subscriptions instead of its
-- 725,000 events; otherwise from the events. Reconcile reads the events: the two must agree.
CREATE FUNCTION history_analytics_rebuild(implied boolean DEFAULT false) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  LOCK TABLE events IN SHARE MODE;
  DELETE FROM history_status_changes;
  DELETE FROM history_revenue_changes;
  DELETE FROM history_user_months;
  DELETE FROM history_mrr_movements;
  IF implied THEN
    -- The seed: the per-user rows go straight to their table (a temporary copy of them, in the
    -- seed's session, spilled to disk and cost more than computing them), the movements from them.
    PERFORM history_compute_actual(implied, false);
    WITH u AS MATERIALIZED (SELECT * FROM history_actual_user_months(true)),
    written AS (
      INSERT INTO history_user_months SELECT u.user_id, u.month, u.mrr, u.plan_cost_sum, u.subscription_count, u.plan_cost_max FROM u
    )
    INSERT INTO history_mrr_movements
    SELECT x.month, 0, sum((x.m).new), sum((x.m).expansion), sum((x.m).contraction), sum((x.m).churn), sum((x.m).reactivation),
           sum((x.m).new_customers), sum((x.m).reactivated_customers), sum((x.m).churned_customers)
    FROM (SELECT u.month, history_movement(u.start_mrr, u.mrr, u.ever) AS m FROM u OFFSET 0) x
    GROUP BY x.month;
  ELSE
    PERFORM history_compute_actual(implied);
    INSERT INTO history_user_months SELECT user_id, month, mrr, plan_cost_sum, subscription_count, plan_cost_max FROM history_actual_user_months;
    INSERT INTO history_mrr_movements SELECT * FROM history_actual_movements;
  END IF;
  INSERT INTO history_status_changes SELECT * FROM history_actual_status;
  INSERT INTO history_revenue_changes SELECT * FROM history_actual_revenue;
END $$;

-- Compares every aggregate (summed over its slots) with what the history says, returns each key
-- that differs (stored vs actual, as text), and when any does, rebuilds them all. A user's
-- plan_cost_max is an upper bound: wrong only when below the actual maximum.
CREATE FUNCTION history_analytics_reconcile() RETURNS TABLE (aggregate text, key text, stored text, actual text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  differing bigint;
BEGIN
  LOCK TABLE events IN SHARE MODE;
  PERFORM history_compute_actual();
  -- For the per-user comparison below (a lookup per user and month on either side).
  CREATE INDEX ON pg_temp.history_actual_user_months (user_id, month);
  RETURN QUERY
  SELECT 'status'::text, concat_ws(' ', k.span, to_char(k.bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), k.status, k.billing_period),
         concat_ws(' / ', coalesce(s.n, 0), coalesce(s.cost, 0), coalesce(s.mrr, 0)), concat_ws(' / ', coalesce(x.n, 0), coalesce(x.cost, 0), coalesce(x.mrr, 0))
  FROM (SELECT span, bucket, status, billing_period FROM history_status_changes UNION SELECT span, bucket, status, billing_period FROM history_actual_status) k
  LEFT JOIN (SELECT span, bucket, status, billing_period, sum(subscription_count) AS n, sum(plan_cost_sum) AS cost, sum(mrr_sum) AS mrr
             FROM history_status_changes GROUP BY 1, 2, 3, 4) s USING (span, bucket, status, billing_period)
  LEFT JOIN (SELECT span, bucket, status, billing_period, subscription_count AS n, plan_cost_sum AS cost, mrr_sum AS mrr
             FROM history_actual_status) x USING (span, bucket, status, billing_period)
  WHERE (coalesce(s.n, 0), coalesce(s.cost, 0), coalesce(s.mrr, 0)) IS DISTINCT FROM (coalesce(x.n, 0), coalesce(x.cost, 0), coalesce(x.mrr, 0))
  UNION ALL
  SELECT 'revenue', concat_ws(' ', k.span, to_char(k.bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), to_char(k.start_month, 'YYYY-MM')),
         concat_ws(' / ', coalesce(s.n, 0), coalesce(s.cost, 0)), concat_ws(' / ', coalesce(x.n, 0), coalesce(x.cost, 0))
  FROM (SELECT span, bucket, start_month FROM history_revenue_changes UNION SELECT span, bucket, start_month FROM history_actual_revenue) k
  LEFT JOIN (SELECT span, bucket, start_month, sum(subscription_count) AS n, sum(plan_cost_sum) AS cost FROM history_revenue_changes GROUP BY 1, 2, 3) s
    USING (span, bucket, start_month)
  LEFT JOIN (SELECT span, bucket, start_month, subscription_count AS n, plan_cost_sum AS cost FROM history_actual_revenue) x USING (span, bucket, start_month)
  WHERE (coalesce(s.n, 0), coalesce(s.cost, 0)) IS DISTINCT FROM (coalesce(x.n, 0), coalesce(x.cost, 0))
  UNION ALL
  -- Users compared at every month either side has a row for: the figures in force then.
  SELECT 'user', k.user_id || ' ' || to_char(k.month, 'YYYY-MM'),
         concat_ws(' / ', coalesce(st.mrr, 0), coalesce(st.plan_cost_sum, 0), coalesce(st.subscription_count, 0), st.bound),
         concat_ws(' / ', coalesce(ac.mrr, 0), coalesce(ac.plan_cost_sum, 0), coalesce(ac.subscription_count, 0), ac.bound)
  FROM (SELECT user_id, month FROM history_user_months UNION SELECT user_id, month FROM history_actual_user_months) k
  LEFT JOIN LATERAL (SELECT r.*, CASE WHEN r.month = k.month THEN r.plan_cost_max ELSE r.plan_cost_sum END AS bound FROM history_user_months r
                     WHERE r.user_id = k.user_id AND r.month <= k.month ORDER BY r.month DESC LIMIT 1) st ON true
  LEFT JOIN LATERAL (SELECT r.*, CASE WHEN r.month = k.month THEN r.plan_cost_max ELSE r.plan_cost_sum END AS bound FROM history_actual_user_months r
                     WHERE r.user_id = k.user_id AND r.month <= k.month ORDER BY r.month DESC LIMIT 1) ac ON true
  WHERE (coalesce(st.mrr, 0), coalesce(st.plan_cost_sum, 0), coalesce(st.subscription_count, 0))
        IS DISTINCT FROM (coalesce(ac.mrr, 0), coalesce(ac.plan_cost_sum, 0), coalesce(ac.subscription_count, 0))
     OR coalesce(st.bound, 0) < coalesce(ac.bound, 0)
  UNION ALL
  SELECT 'movements', to_char(k.month, 'YYYY-MM'), concat_ws(' / ', s.new, s.expansion, s.contraction, s.churn, s.reactivation, s.new_customers,
         s.reactivated_customers, s.churned_customers), concat_ws(' / ', x.new, x.expansion, x.contraction, x.churn, x.reactivation, x.new_customers,
         x.reactivated_customers, x.churned_customers)
  FROM (SELECT month FROM history_mrr_movements UNION SELECT month FROM history_actual_movements) k
  LEFT JOIN (SELECT month, sum(new) AS new, sum(expansion) AS expansion, sum(contraction) AS contraction, sum(churn) AS churn,
                    sum(reactivation) AS reactivation, sum(new_customers) AS new_customers, sum(reactivated_customers) AS reactivated_customers,
                    sum(churned_customers) AS churned_customers
             FROM history_mrr_movements GROUP BY month) s USING (month)
  LEFT JOIN history_actual_movements x USING (month)
  WHERE (coalesce(s.new, 0), coalesce(s.expansion, 0), coalesce(s.contraction, 0), coalesce(s.churn, 0), coalesce(s.reactivation, 0),
         coalesce(s.new_customers, 0), coalesce(s.reactivated_customers, 0), coalesce(s.churned_customers, 0))
        IS DISTINCT FROM (coalesce(x.new, 0), coalesce(x.expansion, 0), coalesce(x.contraction, 0), coalesce(x.churn, 0), coalesce(x.reactivation, 0),
         coalesce(x.new_customers, 0), coalesce(x.reactivated_customers, 0), coalesce(x.churned_customers, 0))
  ORDER BY 1, 2;
  GET DIAGNOSTICS differing = ROW_COUNT;
  IF differing > 0 THEN
    PERFORM history_analytics_rebuild();
  END IF;
END $$;

SELECT history_analytics_rebuild();
