-- A user, feature or subscription as the API's JSON text, rendered by PostgreSQL for
-- GET /api/<resource>/{id} (src/resources/by-id.ts selects api_json(<table>)): node sends the
-- text as it is, without parsing a row into values and Dates and serializing them again. Measured
-- on the one-row GET of 500k subscriptions, 10 interleaved rounds against the same service with
-- the row parsed in node: 1.09x and 1.22x the requests per second in two sittings, the service's
-- CPU per request 0.86x and 0.79x; PostgreSQL's read 0.095-0.127 ms against 0.085-0.114 without
-- (docs/performance.md, "The one-row GET against the floor").
--
-- The text is exactly what JSON.stringify writes for the representation src/resources/*.ts builds
-- from the row (toUser, toFeature, toSubscription; test/object-json.test.ts compares the two for
-- every row, edge cases included), so that a GET's ETag is the one writes compute: no spaces;
-- fields in the representation's order; strings escaped as JSON.stringify escapes them (to_json,
-- 0011); ids as their digits; money as the two-decimal text of numeric(12, 2) (formatMoney); dates
-- as the session writes them (the service's type parser keeps that text too); timestamps as
-- Date.prototype.toISOString writes them (history_json_time, 0012: UTC, milliseconds truncated
-- from the microseconds, Z, years 1 to 9999).
--
-- One SELECT of one expression, STABLE: PostgreSQL inlines them into the statement that calls them,
-- which is planned once per connection (a prepared statement).

CREATE FUNCTION api_json(o users) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT '{"id":' || o.id
  || ',"name":' || to_json(o.name)
  || ',"email":' || to_json(o.email)
  || ',"created_at":' || history_json_time(o.created_at)
  || ',"updated_at":' || history_json_time(o.updated_at)
  || '}' $$;

CREATE FUNCTION api_json(o features) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT '{"id":' || o.id
  || ',"name":' || to_json(o.name)
  || ',"description":' || coalesce(to_json(o.description)::text, 'null')
  || ',"created_at":' || history_json_time(o.created_at)
  || ',"updated_at":' || history_json_time(o.updated_at)
  || '}' $$;

CREATE FUNCTION api_json(o subscriptions) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT '{"id":' || o.id
  || ',"user_id":' || o.user_id
  || ',"status":' || to_json(o.status)
  || ',"plan_name":' || coalesce(to_json(o.plan_name)::text, 'null')
  || ',"plan_cost":"' || o.plan_cost
  || '","billing_period":' || to_json(o.billing_period)
  || ',"start_date":"' || o.start_date
  || '","end_date":' || coalesce('"' || o.end_date || '"', 'null')
  || ',"created_at":' || history_json_time(o.created_at)
  || ',"updated_at":' || history_json_time(o.updated_at)
  || '}' $$;
