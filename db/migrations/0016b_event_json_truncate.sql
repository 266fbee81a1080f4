-- The event JSON cache (0016) is emptied with the events: TRUNCATE events (the seed's reload,
-- src/db/seed.ts, the only way events are ever removed) would otherwise leave texts of events that
-- no longer exist, and history_feed_page would serve them. A trigger rather than a foreign key to
-- events: nothing to check on each of the filler's inserts. The seed disables the events table's
-- triggers only after its TRUNCATE, so this one fires there.
CREATE FUNCTION event_json_truncated() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  TRUNCATE event_json;
  UPDATE event_json_position SET xid = '0', id = 0;
  RETURN NULL;
END $fn$;

CREATE TRIGGER event_json_truncated AFTER TRUNCATE ON events FOR EACH STATEMENT EXECUTE FUNCTION event_json_truncated();

-- event_json_fill (0016), cheaper when there is nothing to do and when committing: a turn with no
-- new event below the horizon now ends without locking the position row (no transaction id, no
-- commit record: the service's filler asks every EVENT_JSON_FILL_MS, mostly for nothing), and a
-- batch commits without waiting for its WAL flush (synchronous_commit off for that transaction
-- only): a batch lost in a crash loses its texts and its position move together, and is rendered
-- again. Its statements are planned for each call's position (force_custom_plan): generic plans
-- of the check above estimated a third of the events after any position and scanned the whole
-- table (200 to 290 ms a call, measured), where the custom plan reads one index entry.
CREATE OR REPLACE FUNCTION event_json_fill(batch integer) RETURNS integer LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan AS $fn$
DECLARE
  from_xid xid8; from_id bigint; n integer; to_xid xid8; to_id bigint;
BEGIN
  SELECT p.xid, p.id INTO from_xid, from_id FROM event_json_position p;
  IF NOT EXISTS (SELECT FROM events ev WHERE ev.xid < pg_snapshot_xmin(pg_current_snapshot()) AND (ev.xid, ev.id) > (from_xid, from_id)) THEN
    RETURN 0;
  END IF;
  SELECT p.xid, p.id INTO from_xid, from_id FROM event_json_position p FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN RETURN NULL; END IF;
  PERFORM set_config('synchronous_commit', 'off', true);
  -- A new snapshot for this statement (READ COMMITTED): it sees what the previous filler committed.
  WITH rendered AS MATERIALIZED (
    SELECT ev.xid, ev.id,
           history_event_json(ev.id, ev.type, ev.occurred_at, ev.object_type, ev.object_id, ev.object_user, ev.object_feature,
                              ev.object_subscription, ev.object_subscription_feature, ev.previous_attributes) AS json
    FROM events ev
    WHERE ev.xid < pg_snapshot_xmin(pg_current_snapshot()) AND (ev.xid, ev.id) > (from_xid, from_id)
    ORDER BY ev.xid, ev.id
    LIMIT batch
  ), stored AS (
    INSERT INTO event_json (xid, id, json) SELECT r.xid, r.id, r.json FROM rendered r
  )
  SELECT count(*), (array_agg(r.xid ORDER BY r.xid DESC, r.id DESC))[1], (array_agg(r.id ORDER BY r.xid DESC, r.id DESC))[1]
  INTO n, to_xid, to_id FROM rendered r;
  IF n > 0 THEN
    UPDATE event_json_position SET xid = to_xid, id = to_id;
  END IF;
  RETURN n;
END $fn$;
