-- Idempotency-Key on POST (Stripe's design): the first response to a key is kept for 24 hours and
-- replayed to retries. A row whose status is NULL is a request still in progress.
CREATE TABLE idempotency_keys (
  client           text NOT NULL,
  key              text NOT NULL,
  request_hash     text NOT NULL,
  status           integer,
  response_headers jsonb,
  response_body    jsonb,
  created_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (client, key),
  CONSTRAINT idempotency_keys_key_check CHECK (char_length(key) BETWEEN 1 AND 255),
  CONSTRAINT idempotency_keys_status_check CHECK (status BETWEEN 100 AND 599)
);
-- Serves the pruning of keys older than 24 hours.
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
