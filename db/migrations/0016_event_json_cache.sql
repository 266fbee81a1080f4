-- A cache of each event's JSON text (issue 12: the feed at 100,000 events/s through one client).
-- Building the text (history_event_json) was about 5.5 µs an event, most of a feed page's
-- PostgreSQL time; storing it at write time cost the seed and every write (docs/events.md). Here a
-- filler in the service (src/history/json-cache.ts, EVENT_JSON_FILL_MS) renders events in the
-- background, in the feed's own order, and the unfiltered feed reads the cached text where there
-- is one and renders the rest as before: the same bytes either way.
--
-- Events never change (the append-only guard of 0006), so a cached text never goes stale. A
-- migration that changes the rendering (history_event_json or what it calls) must empty the cache
-- in the same migration: TRUNCATE event_json; UPDATE event_json_position SET xid = '0', id = 0;
-- the filler then renders everything again.

-- Keyed by the feed's position, not by id: the cache is always a prefix of the feed (every event up
-- to event_json_position), so a page reads it as one range of this index, in feed order, without
-- looking the events up (a join by id cost an index probe an event).
CREATE TABLE event_json (
  xid  xid8   NOT NULL,
  id   bigint NOT NULL,
  json text   NOT NULL,
  PRIMARY KEY (xid, id)
);

-- The feed position of the last event rendered (one row). Every event at or before it, below the
-- horizon, has its text in event_json: the filler inserts the texts and moves the position in one
-- transaction, holding this row's lock (so one filler works at a time, whatever the number of
-- workers and instances; the others skip).
CREATE TABLE event_json_position (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  xid xid8   NOT NULL,
  id  bigint NOT NULL
);
INSERT INTO event_json_position (xid, id) VALUES ('0', 0);

-- Renders the next events after the position, up to batch of them, below the horizon, in feed
-- order; returns how many, or NULL when another filler holds the position (nothing done). One call
-- is one transaction's work when called on its own (autocommit). The horizon argument of the feed
-- holds here too (docs/events.md, "The guarantee"): every event before the last one rendered has
-- an xid below this statement's horizon, so it had committed (and is rendered) or never will.
CREATE FUNCTION event_json_fill(batch integer) RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
  from_xid xid8; from_id bigint; n integer; to_xid xid8; to_id bigint;
BEGIN
  SELECT p.xid, p.id INTO from_xid, from_id FROM event_json_position p FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN RETURN NULL; END IF;
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

-- The unfiltered feed's page (0012), now from the cache where it has the events: first the cached
-- texts after the cursor, then, if the page is not full, the events after max(cursor, cache
-- position) rendered as before. The two ranges are disjoint, follow each other in feed order and
-- together are exactly 0012's range. Two statements, each one index range in order like 0012's
-- (as one UNION ALL, the generic plan sorted the whole history). Same output as 0012
-- (test/event-json-cache.test.ts compares the pages with the cache empty, partly filled and full).
--
-- Every statement of a STABLE function runs with its caller's snapshot: the horizon, the position
-- and both ranges are read from one snapshot, as the guarantee needs.
CREATE OR REPLACE FUNCTION history_feed_page(after_xid xid8, after_id bigint, page_limit integer,
  OUT horizon xid8, OUT fetched bigint, OUT data text, OUT last_xid xid8, OUT last_id bigint)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
  from_xid xid8; from_id bigint;
  more bigint; more_data text; more_xid xid8; more_id bigint;
BEGIN
  horizon := pg_snapshot_xmin(pg_current_snapshot());
  SELECT count(*),
         string_agg(c.json, ',' ORDER BY c.xid, c.id) FILTER (WHERE c.n <= page_limit),
         (array_agg(c.xid ORDER BY c.xid, c.id))[least(count(*), page_limit)],
         (array_agg(c.id ORDER BY c.xid, c.id))[least(count(*), page_limit)]
  INTO fetched, data, last_xid, last_id
  FROM (
    SELECT j.xid, j.id, row_number() OVER (ORDER BY j.xid, j.id) AS n, j.json
    FROM event_json j
    WHERE j.xid < horizon AND (j.xid, j.id) > (after_xid, after_id)
    ORDER BY j.xid, j.id
    LIMIT page_limit + 1
  ) c;
  IF fetched > page_limit THEN RETURN; END IF;

  SELECT p.xid, p.id INTO from_xid, from_id FROM event_json_position p;
  IF NOT FOUND OR (after_xid, after_id) > (from_xid, from_id) THEN
    from_xid := after_xid;
    from_id := after_id;
  END IF;
  SELECT count(*),
         string_agg(e.json, ',' ORDER BY e.xid, e.id) FILTER (WHERE e.n <= page_limit - fetched),
         (array_agg(e.xid ORDER BY e.xid, e.id))[least(count(*), page_limit - fetched)],
         (array_agg(e.id ORDER BY e.xid, e.id))[least(count(*), page_limit - fetched)]
  INTO more, more_data, more_xid, more_id
  FROM (
    SELECT ev.xid, ev.id, row_number() OVER (ORDER BY ev.xid, ev.id) AS n,
           history_event_json(ev.id, ev.type, ev.occurred_at, ev.object_type, ev.object_id, ev.object_user, ev.object_feature,
                              ev.object_subscription, ev.object_subscription_feature, ev.previous_attributes) AS json
    FROM events ev
    WHERE ev.xid < horizon AND (ev.xid, ev.id) > (from_xid, from_id)
    ORDER BY ev.xid, ev.id
    LIMIT page_limit + 1 - fetched
  ) e;
  IF more = 0 THEN RETURN; END IF;
  fetched := fetched + more;
  IF more_data IS NOT NULL THEN
    data := CASE WHEN data IS NULL THEN more_data ELSE data || ',' || more_data END;
    last_xid := more_xid;
    last_id := more_id;
  END IF;
END $fn$;
