-- The feed's speed (issue 12: GET /api/events?limit=500 followed by one client). Same texts, less
-- PostgreSQL work per page; docs/events.md, "What it costs", has the figures.

-- A timestamp as the API writes it (as Date.prototype.toISOString does: UTC, milliseconds truncated
-- from the microseconds, Z), or null; the same text as 0011's to_char version, about 0.3 µs cheaper
-- a call (three calls an event). to_json writes a timestamp in ISO 8601 whatever DateStyle says,
-- but drops the fraction's trailing zeros: truncated to the millisecond plus one microsecond, the
-- fraction always has six digits, and the first 24 characters are '"YYYY-MM-DDTHH:MI:SS.mmm'.
-- Years 1 to 9999 (four digits); infinity, which toISOString cannot write, is null as before.
CREATE OR REPLACE FUNCTION history_json_time(t timestamptz) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN isfinite(t) THEN left(to_json(date_trunc('milliseconds', t AT TIME ZONE 'UTC') + interval '1 microsecond')::text, 24) || 'Z"'
                  ELSE 'null' END $$;

-- One page of the unfiltered feed, as GET /api/events sends it: the horizon it was read at, how many
-- events the page read (page_limit + 1 means there are more), their JSON texts joined with commas
-- (NULL for none) and the position of the last one shown. The same query as the filtered pages of
-- src/resources/events.ts (eventPageTextQuery), which Kysely builds per shape of filters.
--
-- Why a function: its statement is planned once per connection (a generic plan). Sent as a
-- prepared statement, PostgreSQL chose a custom plan for every page (the cursor's xid is the whole
-- seeded history's: the planner estimates one row after it, so the generic plan never looked
-- cheaper), and planning the inlined history_event_json took about 0.7 ms a page.
--
-- The exactly-once guarantee (docs/events.md) needs the horizon and the page from one snapshot: one
-- statement, and a STABLE function runs it with its caller's snapshot anyway. The horizon is a
-- materialized CTE read twice (the one value of the statement). Rows leave the index in feed order
-- and nothing re-sorts them: the window and the ordered aggregates take them as they come.
CREATE FUNCTION history_feed_page(after_xid xid8, after_id bigint, page_limit integer,
  OUT horizon xid8, OUT fetched bigint, OUT data text, OUT last_xid xid8, OUT last_id bigint)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $fn$
BEGIN
  WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
  SELECT (SELECT h.xmin FROM h), count(*),
         string_agg(e.json, ',' ORDER BY e.xid, e.id) FILTER (WHERE e.n <= page_limit),
         (array_agg(e.xid ORDER BY e.xid, e.id))[least(count(*), page_limit)],
         (array_agg(e.id ORDER BY e.xid, e.id))[least(count(*), page_limit)]
  INTO horizon, fetched, data, last_xid, last_id
  FROM (
    SELECT ev.xid, ev.id, row_number() OVER (ORDER BY ev.xid, ev.id) AS n,
           history_event_json(ev.id, ev.type, ev.occurred_at, ev.object_type, ev.object_id, ev.object_user, ev.object_feature,
                              ev.object_subscription, ev.object_subscription_feature, ev.previous_attributes) AS json
    FROM events ev
    WHERE ev.xid < (SELECT h.xmin FROM h) AND (ev.xid, ev.id) > (after_xid, after_id)
    ORDER BY ev.xid, ev.id
    LIMIT page_limit + 1
  ) e;
END $fn$;
