-- Webhooks (src/webhooks/, src/resources/webhook-endpoints.ts, docs/webhooks.md): endpoints that
-- receive events, and the delivery log, which is also the queue. Nothing here is written by the
-- request path of any other resource: the delivery worker reads the event feed (events, in its
-- (xid, id) order, below the horizon pg_snapshot_xmin(pg_current_snapshot()), as GET /api/events
-- does), so writers pay nothing for webhooks.
--
-- Each endpoint keeps its own place in the feed (cursor_xid, cursor_id): the position after which
-- its next event is read. An event becomes a delivery (a row below) in the same transaction that
-- moves the cursor past it, so every event of the feed is either a delivery or still ahead of the
-- cursor: none is skipped, whatever crashes when. At most one delivery per endpoint is pending at
-- a time (a unique index), and the next event is read only when there is none: deliveries of an
-- endpoint are made one after the other in feed order.

CREATE TABLE webhook_endpoints (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- An absolute http or https URL without a fragment (the API also refuses non-public hosts, which
  -- depend on name resolution and cannot be a constraint; deliveries check them again).
  url         text        NOT NULL CONSTRAINT webhook_endpoints_url_check
                CHECK (url ~* '^https?://[^/?#\s]+[^#\s]*$' AND length(url) <= 2048),
  -- Exact types or `<object>.*` prefixes, as the events list's type filter takes them.
  event_types text[]      NOT NULL CONSTRAINT webhook_endpoints_event_types_check CHECK (
    cardinality(event_types) BETWEEN 1 AND 16
    AND array_position(event_types, NULL) IS NULL
    AND event_types <@ ARRAY[
      'user.*', 'user.created', 'user.updated', 'user.deleted',
      'subscription.*', 'subscription.created', 'subscription.updated', 'subscription.deleted',
      'feature.*', 'feature.created', 'feature.updated', 'feature.deleted',
      'subscription_feature.*', 'subscription_feature.attached', 'subscription_feature.updated',
      'subscription_feature.detached']::text[]),
  description text        CONSTRAINT webhook_endpoints_description_check CHECK (length(description) <= 500),
  enabled     boolean     NOT NULL DEFAULT true,
  -- Standard Webhooks' form: whsec_ + base64 of the key (32 random bytes).
  secret      text        NOT NULL CONSTRAINT webhook_endpoints_secret_check CHECK (secret ~ '^whsec_[A-Za-z0-9+/]{40,}={0,2}$'),
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  -- The place in the feed: events after (cursor_xid, cursor_id) are still to be read. A new
  -- endpoint starts at the horizon of its creating statement: every event committed after it is
  -- delivered (and those of transactions still running then, which may commit just before).
  cursor_xid  xid8        NOT NULL DEFAULT pg_snapshot_xmin(pg_current_snapshot()),
  cursor_id   bigint      NOT NULL DEFAULT 0,
  -- The lease of the worker process now serving this endpoint (src/webhooks/worker.ts): only the
  -- holder of an unexpired lease reads its next event or records an attempt (every such write
  -- checks lease_token), so several processes deliver each event once per attempt. Released, the
  -- token is cleared and lease_until says when the endpoint was last served (the least recently
  -- served endpoint with work is claimed first).
  lease_token uuid,
  lease_until timestamptz,
  CONSTRAINT webhook_endpoints_lease_check CHECK (lease_token IS NULL OR lease_until IS NOT NULL)
);
CREATE TRIGGER webhook_endpoints_updated_at BEFORE UPDATE OF url, event_types, description, enabled ON webhook_endpoints
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE webhook_deliveries (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  endpoint_id      bigint      NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
  event_id         bigint      NOT NULL REFERENCES events (id),
  event_type       text        NOT NULL,
  -- The body sent: the event exactly as GET /api/events/{id} shows it (the same bytes each attempt,
  -- which the signature covers).
  payload          text        NOT NULL,
  status           text        NOT NULL DEFAULT 'pending'
                     CONSTRAINT webhook_deliveries_status_check CHECK (status IN ('pending', 'succeeded', 'failed')),
  attempt_count    integer     NOT NULL DEFAULT 0 CONSTRAINT webhook_deliveries_attempt_count_check CHECK (attempt_count >= 0),
  -- When the next attempt is due: always for a pending delivery, and for a manual retry asked for.
  next_attempt_at  timestamptz,
  -- A manual retry asked for (POST .../retry) and not yet made.
  retry_requested  boolean     NOT NULL DEFAULT false,
  first_attempt_at timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT webhook_deliveries_once UNIQUE (endpoint_id, event_id),
  CONSTRAINT webhook_deliveries_due_check CHECK (
    (status = 'pending' OR retry_requested) = (next_attempt_at IS NOT NULL))
);
-- The order guarantee as a constraint: one pending delivery per endpoint.
CREATE UNIQUE INDEX webhook_deliveries_one_pending ON webhook_deliveries (endpoint_id) WHERE status = 'pending';
-- The delivery log, newest first, per endpoint.
CREATE INDEX webhook_deliveries_log_idx ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
-- What the worker polls for: deliveries with an attempt due.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE next_attempt_at IS NOT NULL;

CREATE TABLE webhook_attempts (
  delivery_id  bigint      NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
  attempt      integer     NOT NULL CONSTRAINT webhook_attempts_attempt_check CHECK (attempt >= 1),
  trigger      text        NOT NULL CONSTRAINT webhook_attempts_trigger_check CHECK (trigger IN ('scheduled', 'manual')),
  attempted_at timestamptz NOT NULL,
  duration_ms  integer     NOT NULL CONSTRAINT webhook_attempts_duration_check CHECK (duration_ms >= 0),
  status_code  integer     CONSTRAINT webhook_attempts_status_code_check CHECK (status_code BETWEEN 100 AND 599),
  error        text,
  PRIMARY KEY (delivery_id, attempt),
  -- An attempt either got an HTTP status or failed for a stated reason.
  CONSTRAINT webhook_attempts_outcome_check CHECK (status_code IS NOT NULL OR error IS NOT NULL)
);
