-- `GET /api/features?q=` is a case-insensitive substring search (name ILIKE '%q%'): a btree cannot
-- serve a leading wildcard, a trigram GIN index can (for 3 or more characters; shorter terms match
-- too many names to be worth an index). pg_trgm ships with PostgreSQL's contrib and is a trusted
-- extension since 13, so the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX features_name_trgm_idx ON features USING gin (name gin_trgm_ops);
