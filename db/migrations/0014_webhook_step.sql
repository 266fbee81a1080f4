-- Webhook delivery in fewer round trips and cheaper statements (issue 12; src/webhooks/worker.ts,
-- docs/webhooks.md, "How it works"). The design and its guarantees are 0009's; these functions do
-- in one round trip what the worker did in two to four statements.

-- The worker's look-up of an endpoint's delivery to attempt next (the pending one, or a manual
-- retry asked for): without it, the planner walked the endpoint's whole delivery log (log_idx, or
-- all of webhook_deliveries) filtering on status, a cost that grows with every delivery ever made.
-- Holds at most one pending delivery per endpoint and the retries asked for.
CREATE INDEX webhook_deliveries_todo_idx ON webhook_deliveries (endpoint_id, id) WHERE status = 'pending' OR retry_requested;

-- The endpoint's next event of its types becomes its pending delivery, in the statement that moves
-- its place in the feed past it, or, with none below the horizon, its place moves to the horizon
-- (every event below it has been seen). The horizon and the event are read in ONE statement, so
-- from one snapshot (the feed's guarantee, docs/events.md; a later statement would see a later
-- snapshot); the moves are done only if the place is still (p_cursor_xid, p_cursor_id) and the
-- lease is held. The body is the event's JSON text as the feed serves it (history_event_json, the
-- same text as GET /api/events/{id}).
--
-- Returns one row: the place now and, if an event became the delivery, that delivery; no row when
-- the lease is lost, the endpoint disabled or deleted, or its place moved by someone else.
-- Types are exact ('user.created') or '<object>.*', as webhook_endpoints.event_types holds them.
-- A generic plan (planned once per connection): the page of the feed index after the place, in
-- its order, the first row of the types.
CREATE FUNCTION webhook_next_delivery(p_endpoint_id bigint, p_token uuid, p_lease_ms bigint, p_cursor_xid xid8, p_cursor_id bigint, p_types text[])
RETURNS TABLE (cursor_xid xid8, cursor_id bigint, id bigint, event_id bigint, payload text, status text, attempt_count integer,
               first_attempt_at timestamptz, next_attempt_at timestamptz, retry_requested boolean)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
  v_horizon xid8;
  v_xid xid8;
  v_id bigint;
  v_type text;
  v_json text;
BEGIN
  WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
  SELECT h.xmin, e.xid, e.id, e.type, e.json INTO v_horizon, v_xid, v_id, v_type, v_json
  FROM h LEFT JOIN LATERAL (
    SELECT ev.xid, ev.id, ev.type,
           history_event_json(ev.id, ev.type, ev.occurred_at, ev.object_type, ev.object_id, ev.object_user, ev.object_feature,
                              ev.object_subscription, ev.object_subscription_feature, ev.previous_attributes) AS json
    FROM events ev
    WHERE ev.xid < h.xmin AND (ev.xid, ev.id) > (p_cursor_xid, p_cursor_id)
      AND (ev.type = ANY (p_types) OR ev.object_type || '.*' = ANY (p_types))
    ORDER BY ev.xid, ev.id
    LIMIT 1) e ON true;
  IF v_id IS NULL THEN
    -- Nothing of its types below the horizon: the place moves there, unless it is there already.
    IF (p_cursor_xid, p_cursor_id) < (v_horizon, 0::bigint) THEN
      UPDATE webhook_endpoints e SET cursor_xid = v_horizon, cursor_id = 0, lease_until = now() + p_lease_ms * interval '1 millisecond'
      WHERE e.id = p_endpoint_id AND e.lease_token = p_token AND e.cursor_xid = p_cursor_xid AND e.cursor_id = p_cursor_id;
      IF NOT FOUND THEN RETURN; END IF;
      RETURN QUERY SELECT v_horizon, 0::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::integer, NULL::timestamptz, NULL::timestamptz, NULL::boolean;
    ELSE
      RETURN QUERY SELECT p_cursor_xid, p_cursor_id, NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::integer, NULL::timestamptz, NULL::timestamptz, NULL::boolean;
    END IF;
    RETURN;
  END IF;
  UPDATE webhook_endpoints e SET cursor_xid = v_xid, cursor_id = v_id, lease_until = now() + p_lease_ms * interval '1 millisecond'
  WHERE e.id = p_endpoint_id AND e.lease_token = p_token AND e.enabled AND e.cursor_xid = p_cursor_xid AND e.cursor_id = p_cursor_id;
  IF NOT FOUND THEN RETURN; END IF;
  RETURN QUERY
    INSERT INTO webhook_deliveries AS d (endpoint_id, event_id, event_type, payload, next_attempt_at)
    VALUES (p_endpoint_id, v_id, v_type, v_json, now())
    RETURNING v_xid, v_id, d.id, d.event_id, d.payload, d.status, d.attempt_count, d.first_attempt_at, d.next_attempt_at, d.retry_requested;
END $fn$;

-- Records one attempt of a delivery and its new state, renewing the lease (0009's statement), and
-- in the same transaction and round trip: when no delivery of the endpoint is pending any more
-- (this attempt ended it: succeeded or given up) and p_types is given, the next event becomes the
-- pending delivery (webhook_next_delivery, a statement of its own: its own snapshot and horizon);
-- then returns the delivery to attempt next (a manual retry of a finished one first, else the
-- pending one) and the place in the feed. No row when the lease is lost or the attempt was already
-- recorded (a retried call whose first one committed): nothing is written then.
CREATE FUNCTION webhook_record_attempt(
  p_endpoint_id bigint, p_token uuid, p_lease_ms bigint,
  p_delivery_id bigint, p_attempt integer, p_trigger text, p_attempted_at timestamptz, p_duration_ms integer,
  p_status_code integer, p_error text, p_status text, p_retry_in_ms bigint,
  p_cursor_xid xid8, p_cursor_id bigint, p_types text[])
RETURNS TABLE (cursor_xid xid8, cursor_id bigint, id bigint, event_id bigint, payload text, status text, attempt_count integer,
               first_attempt_at timestamptz, next_attempt_at timestamptz, retry_requested boolean)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
  v_cursor_xid xid8 := p_cursor_xid;
  v_cursor_id bigint := p_cursor_id;
BEGIN
  -- The lease, renewed first: this locks the endpoint's row (a claim skips it meanwhile) and finds
  -- nothing if another process took the lease.
  UPDATE webhook_endpoints e SET lease_until = now() + p_lease_ms * interval '1 millisecond'
  WHERE e.id = p_endpoint_id AND e.lease_token = p_token;
  IF NOT FOUND THEN RETURN; END IF;
  UPDATE webhook_deliveries d
  SET attempt_count = p_attempt, status = p_status, retry_requested = false,
      first_attempt_at = coalesce(d.first_attempt_at, p_attempted_at),
      next_attempt_at = CASE WHEN p_retry_in_ms IS NULL THEN NULL ELSE now() + p_retry_in_ms * interval '1 millisecond' END
  WHERE d.id = p_delivery_id AND d.endpoint_id = p_endpoint_id AND d.attempt_count = p_attempt - 1;
  IF NOT FOUND THEN RETURN; END IF;
  INSERT INTO webhook_attempts (delivery_id, attempt, trigger, attempted_at, duration_ms, status_code, error)
  VALUES (p_delivery_id, p_attempt, p_trigger, p_attempted_at, p_duration_ms, p_status_code, p_error);
  IF p_types IS NOT NULL AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = p_endpoint_id AND d.status = 'pending') THEN
    SELECT n.cursor_xid, n.cursor_id INTO v_cursor_xid, v_cursor_id
    FROM webhook_next_delivery(p_endpoint_id, p_token, p_lease_ms, p_cursor_xid, p_cursor_id, p_types) n;
    -- No row: the place was not where the worker read it (the attempt is recorded all the same).
    IF NOT FOUND THEN v_cursor_xid := NULL; v_cursor_id := NULL; END IF;
  END IF;
  RETURN QUERY
    SELECT v_cursor_xid, v_cursor_id, d.id, d.event_id, d.payload, d.status, d.attempt_count, d.first_attempt_at, d.next_attempt_at, d.retry_requested
    FROM (SELECT 1) one
    LEFT JOIN LATERAL (
      SELECT * FROM webhook_deliveries x
      WHERE x.endpoint_id = p_endpoint_id AND (x.status = 'pending' OR x.retry_requested)
      ORDER BY x.status = 'pending', x.id
      LIMIT 1) d ON true;
END $fn$;

-- Whether any event follows the place (p_cursor_xid, p_cursor_id) below the horizon: the first
-- event after it in the feed index (in (xid, id) order: if the first one is not below the horizon,
-- none is), one index probe. The claim asks the same; an idle worker asks it of an endpoint it
-- keeps for a moment after delivering (src/webhooks/worker.ts, linger).
CREATE FUNCTION webhook_events_wait(p_cursor_xid xid8, p_cursor_id bigint) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT coalesce((SELECT v.xid FROM events v WHERE (v.xid, v.id) > (p_cursor_xid, p_cursor_id) ORDER BY v.xid, v.id LIMIT 1)
                  < pg_snapshot_xmin(pg_current_snapshot()), false)
$$;
