-- An event as the API's JSON text, rendered by PostgreSQL: the one definition of an event's JSON
-- (GET /api/events and /api/events/{id}, webhook payloads; src/resources/events.ts selects
-- history_event_json). Node passes the text through without parsing rows or building objects:
-- the service's CPU per event fell 2.6x, PostgreSQL's rose (docs/events.md, "What it costs").
--
-- The text is exactly what JSON.stringify writes for the event: no spaces; fields in the API's
-- order (each object's as its row type in 0006 lists them); strings escaped as JSON.stringify
-- escapes them (to_json: \" \\ \b \f \n \r \t, other control characters as \u00xx, the rest as
-- is); numbers and dates as PostgreSQL writes them; null for a missing value; timestamps as
-- Date.prototype.toISOString writes them (UTC, milliseconds truncated from the microseconds, Z).

-- A timestamp as the API writes it (years 1 to 9999), or null.
CREATE FUNCTION history_json_time(t timestamptz) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce('"' || to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') || '"', 'null') $$;

-- A timestamp kept in previous_attributes (the string to_jsonb wrote, in the writer's time zone)
-- as the API writes it; a JSON null stays null. NULL when the field is not there.
CREATE FUNCTION history_json_time(v jsonb) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN jsonb_typeof(v) = 'string' THEN history_json_time((v #>> '{}')::timestamptz) ELSE v::text END $$;

-- An event's `data` per object type: the object with every field, and previous_attributes with
-- the fields present in it (the old values of those that changed), in the object's field order.
-- concat() skips the fields that are absent (NULL); substr drops the leading comma. Most events
-- have none ({}): they skip the lookups.
CREATE FUNCTION history_event_data(o history_user, previous jsonb) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT '{"object":{"id":' || coalesce(o.id::text, 'null')
  || ',"name":' || coalesce(to_json(o.name)::text, 'null')
  || ',"email":' || coalesce(to_json(o.email)::text, 'null')
  || ',"created_at":' || history_json_time(o.created_at)
  || ',"updated_at":' || history_json_time(o.updated_at)
  || '},"previous_attributes":{' || CASE WHEN previous = '{}' THEN '' ELSE substr(concat(
       ',"id":' || (previous -> 'id')::text,
       ',"name":' || (previous -> 'name')::text,
       ',"email":' || (previous -> 'email')::text,
       ',"created_at":' || history_json_time(previous -> 'created_at'),
       ',"updated_at":' || history_json_time(previous -> 'updated_at')), 2) END
  || '}}' $$;

CREATE FUNCTION history_event_data(o history_feature, previous jsonb) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT '{"object":{"id":' || coalesce(o.id::text, 'null')
  || ',"name":' || coalesce(to_json(o.name)::text, 'null')
  || ',"description":' || coalesce(to_json(o.description)::text, 'null')
  || ',"created_at":' || history_json_time(o.created_at)
  || ',"updated_at":' || history_json_time(o.updated_at)
  || '},"previous_attributes":{' || CASE WHEN previous = '{}' THEN '' ELSE substr(concat(
       ',"id":' || (previous -> 'id')::text,
       ',"name":' || (previous -> 'name')::text,
       ',"description":' || (previous -> 'description')::text,
       ',"created_at":' || history_json_time(previous -> 'created_at'),
       ',"updated_at":' || history_json_time(previous -> 'updated_at')), 2) END
  || '}}' $$;

CREATE FUNCTION history_event_data(o history_subscription, previous jsonb) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT '{"object":{"id":' || coalesce(o.id::text, 'null')
  || ',"user_id":' || coalesce(o.user_id::text, 'null')
  || ',"status":' || coalesce(to_json(o.status)::text, 'null')
  || ',"plan_name":' || coalesce(to_json(o.plan_name)::text, 'null')
  || ',"plan_cost":' || coalesce(to_json(o.plan_cost)::text, 'null')
  || ',"billing_period":' || coalesce(to_json(o.billing_period)::text, 'null')
  || ',"start_date":' || coalesce(to_json(o.start_date)::text, 'null')
  || ',"end_date":' || coalesce(to_json(o.end_date)::text, 'null')
  || ',"created_at":' || history_json_time(o.created_at)
  || ',"updated_at":' || history_json_time(o.updated_at)
  || '},"previous_attributes":{' || CASE WHEN previous = '{}' THEN '' ELSE substr(concat(
       ',"id":' || (previous -> 'id')::text,
       ',"user_id":' || (previous -> 'user_id')::text,
       ',"status":' || (previous -> 'status')::text,
       ',"plan_name":' || (previous -> 'plan_name')::text,
       ',"plan_cost":' || (previous -> 'plan_cost')::text,
       ',"billing_period":' || (previous -> 'billing_period')::text,
       ',"start_date":' || (previous -> 'start_date')::text,
       ',"end_date":' || (previous -> 'end_date')::text,
       ',"created_at":' || history_json_time(previous -> 'created_at'),
       ',"updated_at":' || history_json_time(previous -> 'updated_at')), 2) END
  || '}}' $$;

CREATE FUNCTION history_event_data(o history_subscription_feature, previous jsonb) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT '{"object":{"subscription_id":' || coalesce(o.subscription_id::text, 'null')
  || ',"feature_id":' || coalesce(o.feature_id::text, 'null')
  || ',"feature_name":' || coalesce(to_json(o.feature_name)::text, 'null')
  || ',"usage_limit":' || coalesce(o.usage_limit::text, 'null')
  || ',"added_at":' || history_json_time(o.added_at)
  || ',"updated_at":' || history_json_time(o.updated_at)
  || '},"previous_attributes":{' || CASE WHEN previous = '{}' THEN '' ELSE substr(concat(
       ',"subscription_id":' || (previous -> 'subscription_id')::text,
       ',"feature_id":' || (previous -> 'feature_id')::text,
       ',"feature_name":' || (previous -> 'feature_name')::text,
       ',"usage_limit":' || (previous -> 'usage_limit')::text,
       ',"added_at":' || history_json_time(previous -> 'added_at'),
       ',"updated_at":' || history_json_time(previous -> 'updated_at')), 2) END
  || '}}' $$;

-- The whole event, from its columns (SQL functions, inlined into the feed's query).
CREATE FUNCTION history_event_json(
  id bigint, type text, occurred_at timestamptz, object_type text, object_id text,
  object_user history_user, object_feature history_feature, object_subscription history_subscription,
  object_subscription_feature history_subscription_feature, previous_attributes jsonb
) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT '{"id":' || id || ',"type":' || to_json(type)::text || ',"occurred_at":' || history_json_time(occurred_at)
  || ',"object_type":' || to_json(object_type)::text || ',"object_id":' || to_json(object_id)::text
  || ',"data":' || CASE object_type
       WHEN 'user' THEN history_event_data(object_user, previous_attributes)
       WHEN 'feature' THEN history_event_data(object_feature, previous_attributes)
       WHEN 'subscription' THEN history_event_data(object_subscription, previous_attributes)
       ELSE history_event_data(object_subscription_feature, previous_attributes) END
  || '}' $$;
