-- History: every committed change to a user, subscription, feature or feature link is an event,
-- written by PostgreSQL itself in the same transaction as the change, whoever writes (the API,
-- plain SQL, foreign-key cascades, bulk statements, TRUNCATE). A rolled-back transaction leaves
-- no event, because its events roll back with it.
--
-- The feed (GET /api/events) is ordered by (xid, id): the writing transaction's id first, then the
-- event's id. It only serves events whose xid is below the oldest transaction still running
-- (pg_snapshot_xmin of the reading statement's snapshot): every transaction that can still commit
-- has an xid at or above that horizon, so nothing can later appear before a page already served.
-- docs/events.md has the argument in full; a delivery queue (webhooks) follows the same order.

-- Each resource with the fields the API shows, in its order (src/resources/*.ts, the to*
-- functions): money already as its exact 2-decimal string; timestamps as they are, which the API
-- writes as toISOString() does (src/resources/events.ts, the one place that turns an event into
-- JSON). An event keeps its object in the column of its type. Typed rows rather than jsonb
-- documents: the seed's 725,000 events cost a quarter of the CPU and about half of the space
-- (measured: building 500,000 subscription objects took 3.1 s of CPU as jsonb, 1.6 s as rows with
-- formatted timestamps, less without), and SQL over the history reads typed fields, e.g.
-- (object_subscription).status or (object_subscription).plan_cost::numeric.
CREATE TYPE history_user AS (id bigint, name text, email text, created_at timestamptz, updated_at timestamptz);
CREATE TYPE history_feature AS (id bigint, name text, description text, created_at timestamptz, updated_at timestamptz);
CREATE TYPE history_subscription AS (
  id bigint, user_id bigint, status text, plan_name text, plan_cost text, billing_period text,
  start_date date, end_date date, created_at timestamptz, updated_at timestamptz);
CREATE TYPE history_subscription_feature AS (
  subscription_id bigint, feature_id bigint, feature_name text, usage_limit integer, added_at timestamptz, updated_at timestamptz);

CREATE TABLE events (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- The top-level transaction that wrote the event (the same for a subtransaction's events).
  xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
  type        text        NOT NULL,
  -- The writing transaction's time (now(), as updated_at), to the millisecond the API shows.
  occurred_at timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  object_type text        NOT NULL,
  -- "42" for a user, subscription or feature; "<subscription_id>:<feature_id>" for a link.
  object_id   text        NOT NULL,
  -- Whose the object is (the subscription's user for subscriptions and links); NULL for features.
  -- Served only as a filter, it is not part of the event's representation.
  user_id     bigint,
  -- The object as the API shows it after the change (before it, for a deletion): exactly one of
  -- these, the one of object_type.
  object_user                 history_user,
  object_feature              history_feature,
  object_subscription         history_subscription,
  object_subscription_feature history_subscription_feature,
  -- The old values of the fields whose value changed (updates only, else {}), as to_jsonb of the
  -- object's fields writes them.
  previous_attributes jsonb NOT NULL DEFAULT '{}',
  CONSTRAINT events_type_check CHECK (type IN (
    'user.created', 'user.updated', 'user.deleted',
    'subscription.created', 'subscription.updated', 'subscription.deleted',
    'feature.created', 'feature.updated', 'feature.deleted',
    'subscription_feature.attached', 'subscription_feature.updated', 'subscription_feature.detached')),
  CONSTRAINT events_object_type_check CHECK (object_type = split_part(type, '.', 1)),
  -- Exactly the object column of object_type is set. num_nonnulls: a row value with a null field
  -- is still a value (IS NULL would say otherwise).
  CONSTRAINT events_object_check CHECK (
    num_nonnulls(object_user, object_feature, object_subscription, object_subscription_feature) = 1
    AND CASE object_type WHEN 'user' THEN num_nonnulls(object_user) WHEN 'feature' THEN num_nonnulls(object_feature)
                         WHEN 'subscription' THEN num_nonnulls(object_subscription)
                         ELSE num_nonnulls(object_subscription_feature) END = 1)
);
-- The feed's order: every page is a range scan from the cursor (xid, id) up to the horizon.
CREATE INDEX events_feed_idx ON events (xid, id);
-- The object_id and user_id filters, in feed order; object_type is checked on the few rows that
-- share an object_id. (The type and time filters are checked along the feed index.)
CREATE INDEX events_object_idx ON events (object_id, xid, id);
CREATE INDEX events_user_idx ON events (user_id, xid, id);

-- History is append-only: an event, once committed, never changes and is never removed (retention
-- is forever; pruning, if ever wanted, would disable this trigger on purpose).
CREATE FUNCTION history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'events are append-only history: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION history_append_only();

-- ---------------------------------------------------------------------------------------------
-- Each table's row as its event object: one overloaded function per table (and the same for its
-- object_id and user_id), so the triggers below are one template. SQL functions, inlined.

CREATE FUNCTION history_object(r users) RETURNS history_user LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ROW(r.id, r.name, r.email, r.created_at, r.updated_at)::history_user $$;

CREATE FUNCTION history_object(r features) RETURNS history_feature LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ROW(r.id, r.name, r.description, r.created_at, r.updated_at)::history_feature $$;

-- plan_cost is numeric(12,2): its text always has two decimals.
CREATE FUNCTION history_object(r subscriptions) RETURNS history_subscription LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ROW(r.id, r.user_id, r.status, r.plan_name, r.plan_cost::text, r.billing_period, r.start_date, r.end_date,
                 r.created_at, r.updated_at)::history_subscription $$;

-- A link shows its feature's name (as it is when the event is written). The RESTRICT foreign key
-- keeps a linked feature from being deleted, so the name is always there.
CREATE FUNCTION history_object(r subscription_features) RETURNS history_subscription_feature LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT ROW(r.subscription_id, r.feature_id, (SELECT f.name FROM features f WHERE f.id = r.feature_id), r.usage_limit,
                 r.added_at, r.updated_at)::history_subscription_feature $$;

CREATE FUNCTION history_object_id(r users) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT r.id::text $$;
CREATE FUNCTION history_object_id(r features) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT r.id::text $$;
CREATE FUNCTION history_object_id(r subscriptions) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT r.id::text $$;
CREATE FUNCTION history_object_id(r subscription_features) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT r.subscription_id::text || ':' || r.feature_id::text $$;

CREATE FUNCTION history_user_id(r users) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT r.id $$;
CREATE FUNCTION history_user_id(r features) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT NULL::bigint $$;
CREATE FUNCTION history_user_id(r subscriptions) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT r.user_id $$;
-- The link's subscription's user. When a cascade deletes the links, their subscription is already
-- gone: its latest event (every subscription has at least its `created`) still says whose it was.
CREATE FUNCTION history_user_id(r subscription_features) RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce(
  (SELECT s.user_id FROM subscriptions s WHERE s.id = r.subscription_id),
  (SELECT e.user_id FROM events e
   WHERE e.object_id = r.subscription_id::text AND e.object_type = 'subscription'
   ORDER BY e.xid DESC, e.id DESC LIMIT 1)) $$;

-- The old values of the fields whose value differs, for previous_attributes.
CREATE FUNCTION history_changes(before jsonb, after jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT coalesce(jsonb_object_agg(b.key, b.value), '{}'::jsonb) FROM jsonb_each(before) b WHERE after -> b.key IS DISTINCT FROM b.value $$;

-- ---------------------------------------------------------------------------------------------
-- The triggers: statement-level with transition tables, one INSERT ... SELECT per statement (a
-- bulk statement writes all its events at once; PL/pgSQL caches the plan). The events of one
-- statement are numbered in key order. Functions and triggers are named history_*.
--
-- An update pairs old and new rows by primary key. It is an event only if a field of the object
-- other than updated_at changed: a statement that rewrites a row with the same values (a PATCH of
-- what is already there, `UPDATE users SET name = name`) moves updated_at alone and records
-- nothing. previous_attributes holds every field that changed, updated_at included. A row whose key an UPDATE changed (only SQL can) has no partner: it is recorded as
-- the deletion of the old object and the creation of the new one.
DO $do$
DECLARE
  tables constant text[][] := ARRAY[
    -- table, object type, created, deleted, key columns, key join of old (o) and new (n) rows
    ['users',                 'user',                 'created',  'deleted',  'id',                          'n.id = o.id'],
    ['features',              'feature',              'created',  'deleted',  'id',                          'n.id = o.id'],
    ['subscriptions',         'subscription',         'created',  'deleted',  'id',                          'n.id = o.id'],
    ['subscription_features', 'subscription_feature', 'attached', 'detached', 'subscription_id, feature_id', 'n.subscription_id = o.subscription_id AND n.feature_id = o.feature_id']];
  -- One event per row of a transition table (or of the table itself, for TRUNCATE), as it is or was.
  each_row constant text := $fn$
    CREATE FUNCTION %1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
      INSERT INTO events (type, object_type, object_id, user_id, %7$I)
      SELECT %2$L, %3$L, history_object_id(r::%6$I), history_user_id(r::%6$I), history_object(r::%6$I)
      FROM %4$s r
      ORDER BY %5$s;
      RETURN NULL;
    END $body$ $fn$;
  updates constant text := $fn$
    CREATE FUNCTION %1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
      INSERT INTO events (type, object_type, object_id, user_id, %10$I, previous_attributes)
      SELECT CASE WHEN c.is_creation THEN %2$L WHEN c.is_deletion THEN %3$L ELSE %4$L END,
             %5$L, c.object_id, c.user_id, c.object, c.changes
      FROM (
        SELECT b.*, CASE WHEN b.is_creation OR b.is_deletion THEN '{}'::jsonb
                         ELSE history_changes(to_jsonb(b.before), to_jsonb(b.object)) END AS changes
        FROM (
          SELECT CASE WHEN o.%11$I IS NULL THEN NULL ELSE history_object(o::%9$I) END AS before,
                 CASE WHEN n.%11$I IS NULL THEN history_object(o::%9$I) ELSE history_object(n::%9$I) END AS object,
                 CASE WHEN n.%11$I IS NULL THEN history_object_id(o::%9$I) ELSE history_object_id(n::%9$I) END AS object_id,
                 CASE WHEN n.%11$I IS NULL THEN history_user_id(o::%9$I) ELSE history_user_id(n::%9$I) END AS user_id,
                 o.%11$I IS NULL AS is_creation,
                 n.%11$I IS NULL AS is_deletion,
                 CASE WHEN n.%11$I IS NULL THEN ROW(%6$s) ELSE ROW(%7$s) END AS sort_key
          FROM old_rows o FULL JOIN new_rows n ON %8$s
          OFFSET 0
        ) b
        OFFSET 0
      ) c
      WHERE c.is_creation OR c.is_deletion OR c.changes - 'updated_at' <> '{}'::jsonb
      -- Deletions first (a changed key frees the old one), then creations and changes, in key order.
      ORDER BY c.is_deletion DESC, c.sort_key;
      RETURN NULL;
    END $body$ $fn$;
  tbl text;
  object_type text;
  created text;
  deleted text;
  key_columns text;
BEGIN
  FOR i IN 1 .. array_length(tables, 1) LOOP
    tbl := tables[i][1]; object_type := tables[i][2]; created := tables[i][3]; deleted := tables[i][4]; key_columns := tables[i][5];
    EXECUTE format(each_row, 'history_' || tbl || '_inserted', object_type || '.' || created, object_type, 'new_rows',
                   regexp_replace(key_columns, '(\w+)', 'r.\1', 'g'), tbl, 'object_' || object_type);
    EXECUTE format(each_row, 'history_' || tbl || '_deleted', object_type || '.' || deleted, object_type, 'old_rows',
                   regexp_replace(key_columns, '(\w+)', 'r.\1', 'g'), tbl, 'object_' || object_type);
    -- TRUNCATE removes rows without row events: each row's deletion is recorded first (before a
    -- TRUNCATE ... CASCADE truncates anything, every table it names is still intact).
    EXECUTE format(each_row, 'history_' || tbl || '_truncated', object_type || '.' || deleted, object_type, quote_ident(tbl),
                   regexp_replace(key_columns, '(\w+)', 'r.\1', 'g'), tbl, 'object_' || object_type);
    EXECUTE format(updates, 'history_' || tbl || '_updated', object_type || '.' || created, object_type || '.' || deleted,
                   object_type || '.updated', object_type,
                   regexp_replace(key_columns, '(\w+)', 'o.\1', 'g'), regexp_replace(key_columns, '(\w+)', 'n.\1', 'g'),
                   tables[i][6], tbl, 'object_' || object_type, split_part(key_columns, ',', 1));

    EXECUTE format('CREATE TRIGGER history_inserted AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %I()', tbl, 'history_' || tbl || '_inserted');
    EXECUTE format('CREATE TRIGGER history_updated AFTER UPDATE ON %I REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %I()', tbl, 'history_' || tbl || '_updated');
    EXECUTE format('CREATE TRIGGER history_deleted AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %I()', tbl, 'history_' || tbl || '_deleted');
    EXECUTE format('CREATE TRIGGER history_truncated BEFORE TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION %I()', tbl, 'history_' || tbl || '_truncated');
  END LOOP;
END $do$;

-- ---------------------------------------------------------------------------------------------
-- The history the current rows imply, for rows loaded without triggers (the seed) and for the
-- rows that exist when this migration runs: users and features `created` at their created_at;
-- each subscription `created` at its start_date (00:00 UTC), and for canceled and expired ones
-- (with an end_date) an `updated` at their end_date (00:00 UTC) recording the status change. What
-- a subscription was before it ended is not stored anywhere: it is taken to have been `active`,
-- open-ended, last updated when it was created. Links are not part of the implied history (the
-- contract's list); their `attached` events start with the first change made through triggers.
--
-- All these events belong to the calling transaction (one xid), so the feed orders them by id:
-- they are numbered in occurred_at order (then users, features, subscriptions; then by id). The
-- rows are sorted narrow (their columns) and the objects built after the sort: sorting the built
-- objects (about 300 MB at 500k subscriptions) spills to disk and took several times longer.
-- Expects none of these objects to have events yet.
CREATE FUNCTION history_record_implied() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  written bigint;
BEGIN
  INSERT INTO events (type, occurred_at, object_type, object_id, user_id, object_user, object_feature, object_subscription, previous_attributes)
  SELECT CASE kind WHEN 1 THEN 'user.created' WHEN 2 THEN 'feature.created'
                   WHEN 3 THEN 'subscription.created' ELSE 'subscription.updated' END,
         occurred_at,
         CASE kind WHEN 1 THEN 'user' WHEN 2 THEN 'feature' ELSE 'subscription' END,
         id::text, user_id,
         CASE WHEN kind = 1 THEN history_object(ROW(id, name, email, created_at, updated_at)::users) END,
         CASE WHEN kind = 2 THEN history_object(ROW(id, name, description, created_at, updated_at)::features) END,
         CASE WHEN kind > 2 THEN
           history_object(ROW(id, user_id, status, plan_name, plan_cost, billing_period, start_date, end_date, created_at, updated_at)::subscriptions)
         END,
         -- The ending changed status and end_date, and updated_at unless it is the same instant.
         CASE WHEN kind = 4 THEN
           jsonb_build_object('status', 'active', 'end_date', NULL)
           || CASE WHEN updated_at = created_at THEN '{}'::jsonb ELSE jsonb_build_object('updated_at', created_at) END
         ELSE '{}'::jsonb END
  FROM (
    SELECT 1 AS kind, date_trunc('milliseconds', u.created_at) AS occurred_at, u.id, u.id AS user_id, u.name, u.email,
           NULL::text AS description, NULL::text AS status, NULL::text AS plan_name, NULL::numeric AS plan_cost,
           NULL::text AS billing_period, NULL::date AS start_date, NULL::date AS end_date,
           u.created_at, u.updated_at
    FROM users u
    UNION ALL
    SELECT 2, date_trunc('milliseconds', f.created_at), f.id, NULL, f.name, NULL, f.description,
           NULL, NULL, NULL, NULL, NULL, NULL, f.created_at, f.updated_at
    FROM features f
    UNION ALL
    -- Created: as it is, or an ended one as it was before it ended; updated: as it is.
    SELECT 2 + stage, CASE WHEN stage = 1 THEN s.start_date ELSE s.end_date END::timestamp AT TIME ZONE 'UTC',
           s.id, s.user_id, NULL, NULL, NULL,
           CASE WHEN before_end THEN 'active' ELSE s.status END, s.plan_name, s.plan_cost, s.billing_period, s.start_date,
           CASE WHEN before_end THEN NULL ELSE s.end_date END, s.created_at,
           CASE WHEN before_end THEN s.created_at ELSE s.updated_at END
    FROM subscriptions s
    CROSS JOIN (VALUES (1), (2)) AS stages (stage)
    CROSS JOIN LATERAL (SELECT s.status IN ('canceled', 'expired') AND s.end_date IS NOT NULL AS ended) AS e
    CROSS JOIN LATERAL (SELECT stage = 1 AND e.ended AS before_end) AS b
    WHERE stage = 1 OR e.ended
    ORDER BY 2, 1, 3
  ) implied;
  GET DIAGNOSTICS written = ROW_COUNT;
  RETURN written;
END $$;

SELECT history_record_implied();
