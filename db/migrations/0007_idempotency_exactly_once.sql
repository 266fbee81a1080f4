-- Idempotency-Key, exactly once: the stored response is written in the same transaction as the
-- request's effect, so the two commit together or not at all, whatever instant the process or the
-- database dies at. There is no "in progress" row any more: a request holds a transaction-level
-- advisory lock on its key while it runs (released by commit, rollback, or the end of its
-- connection), and a concurrent request with the same key waits on that lock, then replays.
--
-- Rows of the old design whose request never finished (status NULL) promised nothing to anyone:
-- their effect either committed without a stored answer (the window this migration closes) or
-- never happened. They are dropped, and every row is now a complete answer.
DELETE FROM idempotency_keys WHERE status IS NULL;
ALTER TABLE idempotency_keys ALTER COLUMN status SET NOT NULL;
-- The answer's body as the bytes that were sent (jsonb would reorder its keys): a replay is identical.
ALTER TABLE idempotency_keys ALTER COLUMN response_body TYPE text USING response_body::text;

-- Takes the key's lock, waiting at most `wait` for a request that holds it (then fails with
-- lock_not_available, 55P03: the first is still running), forgets the key's answer if it is older
-- than `retention`, and returns the stored answer if there is one. One round trip.
CREATE FUNCTION idempotency_begin(p_client text, p_key text, wait interval, retention interval)
RETURNS SETOF idempotency_keys LANGUAGE plpgsql AS $$
DECLARE
  previous text := current_setting('lock_timeout');
BEGIN
  PERFORM set_config('lock_timeout', (extract(epoch FROM wait) * 1000)::bigint::text, true);
  -- 'idem' in ASCII is the advisory-lock class of these keys; hash collisions only serialize.
  PERFORM pg_advisory_xact_lock(1768187245, hashtext(p_client || '/' || p_key));
  PERFORM set_config('lock_timeout', previous, true);
  DELETE FROM idempotency_keys k WHERE k.client = p_client AND k.key = p_key AND k.created_at < now() - retention;
  RETURN QUERY SELECT * FROM idempotency_keys k WHERE k.client = p_client AND k.key = p_key;
END $$;
