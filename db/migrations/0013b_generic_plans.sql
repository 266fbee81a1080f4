-- Generic plans for the history's read functions and 0013's writes (their statements take the
-- functions' arguments as parameters: with the default plan_cache_mode PostgreSQL kept choosing
-- custom plans, re-planning every statement on every call, as 0010 found for history_apply), and
-- 0013's snapshot check in one probe.
-- Measured at 500k, interleaved (4 rounds each, load 7-9): as_of 2.6-3.4 ms -> 1.6-2.8 ms per call,
-- the MRR report 0.54-1.30 ms -> 0.41-0.78 ms.
ALTER FUNCTION history_analytics_at(timestamptz, boolean) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION history_analytics_inputs(timestamptz) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION history_top_users(timestamptz, integer) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION history_mrr_report(date, date) SET plan_cache_mode = force_generic_plan;

-- 0013's history_apply with one probe where it had four: a statement whose changes all lie on the
-- latest snapshot day (nearly every write) reads max(day) before and after taking the shared lock.
-- In the server, 1 client at load ~9: the two checks took 0.37 ms of a 2.6 ms single-row insert.
CREATE OR REPLACE FUNCTION history_apply(changes history_change[]) RETURNS void LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
  first_day date;
  one_day boolean;
  days date[];
  d date;
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
  SELECT min(x.day), min(x.day) = max(x.day), array_agg(DISTINCT x.day) INTO first_day, one_day, days FROM (SELECT (c.effective_at AT TIME ZONE 'UTC')::date AS day FROM unnest(changes) c) x;
  IF first_day IS NULL THEN
    RETURN;
  END IF;

  -- Snapshots. Changes all on the latest snapshot day (nearly every write): nothing to do, under a
  -- shared lock, checked again once it is held (a builder may have committed meanwhile). Otherwise
  -- the exclusive lock, so that every change of the days before is committed and seen: the first
  -- writer of a day builds its snapshot, a change back in time rebuilds the snapshots after it.
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
