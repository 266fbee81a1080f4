-- Rate limiting per API key (src/http/rate-limit.ts, rate-limiter-flexible's RateLimiterPostgres):
-- one row per key and fixed window, updated by one atomic upsert per request, shared by every
-- process and instance on this database. The library's own table definition, column order
-- included (it inserts positionally); created here so the library never runs DDL at run time
-- (it is told tableCreated). `expire` is the window's end in epoch milliseconds.
--
-- UNLOGGED: the counters are worth a minute at most, so they skip the WAL: a request's upsert
-- commits without a WAL flush. The price, accepted: after a crash of PostgreSQL the table is
-- empty (every window starts afresh), and streaming replicas do not have it.
-- fillfactor 50: every update is a HOT update in place (the key never changes).
CREATE UNLOGGED TABLE rate_limits (
  key    varchar(255) PRIMARY KEY,
  points integer NOT NULL DEFAULT 0,
  expire bigint
) WITH (fillfactor = 50);
