-- The dataset of `make db-seed` and of the first `make run`, generated inside PostgreSQL with
-- generate_series. src/db/seed.ts runs the phases below (split at the `-- phase:` lines) in one
-- transaction, after it has truncated the tables and dropped their keys, indexes and foreign keys,
-- and rebuilds those from the catalog afterwards.
--
-- Parameters arrive as transaction-local settings: seed.users, seed.subscriptions, seed.features,
-- seed.seed and seed.today (the UTC date every date is relative to, so the last 12 months the
-- analytics report on always hold data).
--
-- Reproducible: every random choice is a hash of (row number, SEED, a stream number per choice),
-- never random(), so the rows cannot depend on evaluation order, plan shape or parallelism.
-- Same parameters and the same seed.today give identical rows.

-- phase: helpers
CREATE TEMP VIEW seed_params AS
SELECT current_setting('seed.users')::bigint         AS users,
       current_setting('seed.subscriptions')::bigint AS subscriptions,
       current_setting('seed.features')::integer     AS features,
       current_setting('seed.seed')::bigint          AS seed,
       current_setting('seed.today')::date           AS today,
       -- Users sign up and subscriptions start within the three years before today.
       1095                                          AS span_days,
       current_setting('seed.today')::date - 1095    AS window_start,
       -- window_start as seconds since 1970-01-01 UTC, for to_timestamp().
       (current_setting('seed.today')::date - 1095 - date '1970-01-01')::bigint * 86400 AS window_start_epoch
-- Not flattened into the queries: each setting is read once per statement, not once per row.
OFFSET 0;

-- A uniform double in [0, 1) from (n, seed, stream): 53 bits of a 64-bit hash. Inlined by the
-- planner (a one-expression SQL function), so it costs what the expression costs.
CREATE FUNCTION pg_temp.seed_random(n bigint, seed bigint, stream integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashint8extended(n, seed * 64 + stream) & 9007199254740991)::double precision / 9007199254740992 $$;

-- Users sign up in id order, evenly over the window (ids grow with time, as identities do), at a
-- random second of their sign-up day: seconds since window_start. Subscriptions use this to pick
-- only users who existed, and to be created after their user. Seconds and to_timestamp(): per row,
-- interval and time-zone arithmetic made generating a subscription twice as expensive.
CREATE FUNCTION pg_temp.seed_user_signup_second(u bigint, users bigint, span_days integer, seed bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (u - 1) * span_days / users * 86400 + floor(pg_temp.seed_random(u, seed, 3) * 86400)::bigint $$;

-- The feature catalogue: ids are positions. base_limit: metered features get a usage_limit of
-- 1-4 times this on each subscription; NULL: unmetered.
CREATE TEMP TABLE seed_catalogue (position, name, description, base_limit) ON COMMIT DROP AS VALUES
  (1,  'SMS Notifications',          'Text-message alerts for account and billing events (messages per month).', 500),
  (2,  'Email Notifications',        'Transactional and digest emails (emails per month).', 10000),
  (3,  'Priority Support',           'Tickets answered first, within four business hours.', NULL),
  (4,  'API Access',                 'Programmatic access to the REST API (requests per day).', 100000),
  (5,  'Advanced Analytics',         'Cohorts, funnels and retention dashboards.', NULL),
  (6,  'Custom Domains',             'Serve your pages from your own domains (domains).', 5),
  (7,  'Single Sign-On',             'SAML and OpenID Connect login for your organisation.', NULL),
  (8,  'Two-Factor Authentication',  'TOTP and hardware-key second factors for every member.', NULL),
  (9,  'Team Seats',                 'Additional members in your workspace (seats).', 10),
  (10, 'Cloud Storage',              'Files and attachments kept for you (gigabytes).', 100),
  (11, 'Data Export',                'Full exports in CSV and JSON, on demand or scheduled.', NULL),
  (12, 'Audit Logs',                 'Who did what and when, kept for a year.', NULL),
  (13, 'Webhooks',                   'Events pushed to your endpoints (endpoints).', 50),
  (14, 'White Labeling',             'Your brand instead of ours, everywhere customers look.', NULL),
  (15, 'Dedicated Account Manager',  'One named person who knows your account.', NULL),
  (16, '24/7 Phone Support',         'A human on the phone at any hour.', NULL),
  (17, 'Offline Mode',               'Keep working without a connection; changes sync later.', NULL),
  (18, 'Mobile App Access',          'The iOS and Android apps.', NULL),
  (19, 'Custom Reports',             'Reports built from your own fields (saved reports).', 20),
  (20, 'Integrations Marketplace',   'Connectors for CRMs, accounting and chat tools.', NULL),
  (21, 'Automated Backups',          'Daily snapshots kept for thirty days.', NULL),
  (22, 'Role-Based Access Control',  'Custom roles and fine-grained permissions.', NULL),
  (23, 'Usage Alerts',               'Warnings before a limit is reached.', NULL),
  (24, 'Multi-Currency Billing',     'Invoice your customers in their own currency.', NULL),
  (25, 'Invoice Customization',      'Your logo, fields and wording on every invoice.', NULL),
  (26, 'Sandbox Environment',        'An isolated copy for testing changes (sandboxes).', 3),
  (27, 'Uptime SLA',                 '99.95% monthly availability, with service credits.', NULL),
  (28, 'Early Access Features',      'New features before general availability.', NULL),
  (29, 'Video Calls',                'Meetings in the browser (minutes per month).', 1000),
  (30, 'Live Chat Support',          'Chat with support during business hours.', NULL),
  (31, 'Document Signing',           'Legally binding e-signatures (envelopes per month).', 50),
  (32, 'Workflow Automation',        'Rules that act on events without code (active workflows).', 100),
  (33, 'AI Assistant',               'Drafts, summaries and answers from your data (requests per month).', 500),
  (34, 'Scheduled Reports',          'Reports emailed on a schedule.', NULL),
  (35, 'IP Allowlisting',            'Restrict sign-in to your networks.', NULL),
  (36, 'EU Data Residency',          'Data stored and processed in the European Union only.', NULL),
  (37, 'Custom Branding',            'Colours, fonts and logo in the app.', NULL),
  (38, 'Bulk Import',                'Import records from spreadsheets in one go.', NULL),
  (39, 'Push Notifications',         'Notifications to mobile devices (pushes per month).', 5000),
  (40, 'Ad-Free Experience',         'No promotions anywhere in the product.', NULL);

-- phase: features
-- The catalogue in order; beyond its 40 entries, numbered add-ons. Created before any user.
INSERT INTO features (id, name, description, created_at, updated_at) OVERRIDING SYSTEM VALUE
SELECT f.id,
       coalesce(c.name, 'Add-on ' || f.id),
       coalesce(c.description, 'An optional extra for any plan.'),
       created_at, created_at
FROM seed_params p
CROSS JOIN generate_series(1, p.features) AS f(id)
LEFT JOIN seed_catalogue c ON c.position = f.id
CROSS JOIN LATERAL (SELECT to_timestamp(p.window_start_epoch - 30 * 86400 + f.id * 3600) AS created_at) t;

-- phase: users
-- Names from two lists; emails unique by the id they carry, on reserved example domains.
INSERT INTO users (id, name, email, created_at, updated_at) OVERRIDING SYSTEM VALUE
SELECT u.id, n.first || ' ' || n.last, e.email, t.created_at, t.created_at
FROM seed_params p
CROSS JOIN (SELECT
  '{Ada,Alan,Grace,Linus,Margaret,Dennis,Barbara,Ken,Frances,Edsger,Donald,Radia,John,Katherine,Tim,Hedy,
    Niklaus,Sophie,Guido,Anita,James,Mary,Robert,Patricia,Michael,Jennifer,William,Linda,David,Elizabeth,
    Richard,Susan,Joseph,Jessica,Thomas,Sarah,Charles,Karen,Daniel,Nancy,Matthew,Lisa,Anthony,Betty,Mark,
    Sandra,Paul,Ashley,Steven,Emily,Andrew,Donna,Joshua,Michelle,Kevin,Carol,Brian,Amanda,George,Melissa,
    Timothy,Deborah,Ronald,Stephanie,Jason,Rebecca,Edward,Laura,Jeffrey,Helen,Ryan,Sharon,Jacob,Cynthia,
    Gary,Kathleen,Nicholas,Amy,Eric,Angela,Jonathan,Anna,Stephen,Ruth,Larry,Brenda,Justin,Pamela,Scott,
    Nicole,Brandon,Samantha,Benjamin,Olivia,Samuel,Emma,Gregory,Chloe,Alexander,Mia,Priya,Wei,Yuki,Omar,
    Fatima,Mateo,Lucia,Ivan,Olga,Kwame,Amara,Arjun,Mei,Hiroshi,Ingrid,Lars,Sven,Aisha,Diego,Camila}'::text[] AS firsts,
  '{Lovelace,Turing,Hopper,Torvalds,Hamilton,Ritchie,Liskov,Thompson,Allen,Dijkstra,Knuth,Perlman,McCarthy,
    Johnson,Berners-Lee,Lamarr,Wirth,Wilson,Rossum,Borg,Smith,Williams,Brown,Jones,Garcia,Miller,Davis,
    Rodriguez,Martinez,Hernandez,Lopez,Gonzalez,Anderson,Thomas,Taylor,Moore,Jackson,Martin,Lee,Perez,
    Thompson,White,Harris,Sanchez,Clark,Ramirez,Lewis,Robinson,Walker,Young,King,Wright,Scott,Torres,
    Nguyen,Hill,Flores,Green,Adams,Nelson,Baker,Hall,Rivera,Campbell,Mitchell,Carter,Roberts,Patel,Chen,
    Wang,Kim,Singh,Kumar,Tanaka,Sato,Muller,Schmidt,Schneider,Fischer,Weber,Rossi,Russo,Ferrari,Dubois,
    Moreau,Laurent,Silva,Santos,Oliveira,Novak,Kowalski,Nowak,Ivanova,Petrov,Hansen,Larsen,Johansson,
    Andersen,Mensah,Okafor,Haddad,Cohen,Murphy,Kelly,Byrne}'::text[] AS lasts,
  '{example.com,example.org,example.net,mail.example.com,inbox.example.org,company.example}'::text[] AS domains
) AS l
CROSS JOIN generate_series(1, p.users) AS u(id)
CROSS JOIN LATERAL (SELECT
  l.firsts[1 + floor(pg_temp.seed_random(u.id, p.seed, 1) * cardinality(l.firsts))::integer] AS first,
  l.lasts[1 + floor(pg_temp.seed_random(u.id, p.seed, 2) * cardinality(l.lasts))::integer] AS last) AS n
CROSS JOIN LATERAL (SELECT
  -- Two address styles, ada.lovelace.17@ and alovelace17@: the id makes each one unique.
  CASE WHEN pg_temp.seed_random(u.id, p.seed, 4) < 0.6
       THEN lower(n.first) || '.' || lower(n.last) || '.' || u.id
       ELSE lower(left(n.first, 1) || n.last) || u.id
  END || '@' || l.domains[1 + floor(pg_temp.seed_random(u.id, p.seed, 5) * cardinality(l.domains))::integer] AS email) AS e
CROSS JOIN LATERAL (SELECT to_timestamp(p.window_start_epoch + pg_temp.seed_user_signup_second(u.id, p.users, p.span_days, p.seed)) AS created_at) AS t;

-- phase: subscriptions
-- Status, plan tier and billing period drawn from fixed proportions; start dates over the last three
-- years, more of them recent (a growing business); trials started within the last 30 days; only
-- canceled and expired subscriptions have an end_date, between their start and today.
-- Each `OFFSET 0` level is computed once per row and read by the next as plain columns (without it
-- the planner would substitute, and re-evaluate, every expression wherever it is used).
INSERT INTO subscriptions (id, user_id, status, plan_name, plan_cost, billing_period, start_date, end_date, created_at, updated_at)
OVERRIDING SYSTEM VALUE
SELECT id, user_id, status, plan_name, plan_cost, billing_period, start_date, end_date,
       created_at, greatest(created_at, to_timestamp(window_start_epoch + (end_date - window_start) * 86400))
FROM (
  SELECT id, user_id, status, plan_name, plan_cost, billing_period, start_date, window_start, window_start_epoch,
         CASE WHEN status IN ('canceled', 'expired')
              THEN start_date + floor(pg_temp.seed_random(id, seed, 15) * (today - start_date + 1))::integer
         END AS end_date,
         -- Created the day before it starts, and never before its user.
         to_timestamp(window_start_epoch + greatest(
           pg_temp.seed_user_signup_second(user_id, users, span_days, seed),
           (start_date - 1 - window_start) * 86400 + floor(pg_temp.seed_random(id, seed, 16) * 86400)::bigint)) AS created_at
  FROM (
    SELECT id, status, seed, users, span_days, window_start, window_start_epoch, today,
           plans.names[tier] AS plan_name,
           CASE WHEN yearly THEN 'year' ELSE 'month' END AS billing_period,
           CASE WHEN yearly THEN plans.monthly_prices[tier] * 10 ELSE plans.monthly_prices[tier] END AS plan_cost,
           window_start + 1 + day AS start_date,
           -- Among the users who had signed up by the day before (see seed_user_signup_second).
           1 + floor(pg_temp.seed_random(id, seed, 14) * least(users, day * users / span_days + 1))::bigint AS user_id
    FROM (
      SELECT s.id, p.seed, p.users, p.span_days, p.window_start, p.window_start_epoch, p.today, st.status, pl.tier,
             -- Yearly billing for 28%, never on the free tier.
             pl.tier > 1 AND pg_temp.seed_random(s.id, p.seed, 12) < 0.28 AS yearly,
             -- Days since the window opened, 0 .. span_days - 1.
             CASE WHEN st.status = 'trialing'
                  THEN p.span_days - 1 - floor(pg_temp.seed_random(s.id, p.seed, 13) * 30)::integer
                  ELSE p.span_days - 1 - floor(power(pg_temp.seed_random(s.id, p.seed, 13), 1.4) * p.span_days)::integer
             END AS day
      FROM seed_params p
      CROSS JOIN generate_series(1, p.subscriptions) AS s(id)
      -- width_bucket over cumulative shares: 62% active, 6% trialing, 4% past_due, 3% paused, 17% canceled, 8% expired.
      CROSS JOIN LATERAL (SELECT ('{active,trialing,past_due,paused,canceled,expired}'::text[])[
        width_bucket(pg_temp.seed_random(s.id, p.seed, 10), '{0,0.62,0.68,0.72,0.75,0.92}'::float8[])] AS status) AS st
      -- Plan tiers: Free 6%, Starter 20%, Basic 24%, Pro 24%, Team 14%, Business 8%, Enterprise 4%.
      CROSS JOIN LATERAL (SELECT
        width_bucket(pg_temp.seed_random(s.id, p.seed, 11), '{0,0.06,0.26,0.50,0.74,0.88,0.96}'::float8[]) AS tier) AS pl
      OFFSET 0
    ) AS draws
    -- Monthly prices; a year costs ten months.
    CROSS JOIN (SELECT '{Free,Starter,Basic,Pro,Team,Business,Enterprise}'::text[] AS names,
                       '{0.00,9.99,19.99,49.00,99.00,249.00,999.00}'::numeric(12,2)[] AS monthly_prices) AS plans
    OFFSET 0
  ) AS plan
  OFFSET 0
) AS dated;

-- phase: subscription_features
-- Two or three distinct features per subscription, the catalogue's first entries the most popular:
-- first, first + step, first + 2 * step (mod features), with 2 * step < features so none repeat.
-- Metered features get a usage_limit of 1-4 times their base; added when the subscription was created.
INSERT INTO subscription_features (subscription_id, feature_id, usage_limit, added_at, updated_at)
SELECT id, feature_id,
       base_limits[feature_id] * (1 + floor(pg_temp.seed_random(id * 64 + feature_id, seed, 23) * 4))::integer,
       created_at, created_at
FROM (
  SELECT id, created_at, seed, base_limits, 1 + (first + generate_series(0, how_many - 1) * step) % features AS feature_id
  FROM (
    SELECT s.id, s.created_at, p.seed, p.features, l.base_limits,
           least(p.features, 2 + (pg_temp.seed_random(s.id, p.seed, 20) < 0.5)::integer) AS how_many,
           floor(power(pg_temp.seed_random(s.id, p.seed, 21), 1.3) * p.features)::integer AS first,
           1 + floor(pg_temp.seed_random(s.id, p.seed, 22) * greatest(1, (p.features - 1) / 2))::integer AS step
    FROM seed_params p
    CROSS JOIN (SELECT array_agg(base_limit ORDER BY position) AS base_limits FROM seed_catalogue) AS l
    CROSS JOIN subscriptions s
    OFFSET 0
  ) AS pick
  OFFSET 0
) AS picked;

-- phase: history
-- The history these rows imply (migration 0006, history_record_implied()): users and features
-- `created` at their created_at, each subscription `created` at its start_date (00:00 UTC) and,
-- when canceled or expired, `updated` at its end_date. One INSERT ... SELECT in this transaction,
-- numbered in occurred_at order, so the feed (ordered by transaction, then id) replays it in time order.
SELECT history_record_implied() AS events;

-- phase: cleanup
DROP FUNCTION pg_temp.seed_user_signup_second(bigint, bigint, integer, bigint);
DROP FUNCTION pg_temp.seed_random(bigint, bigint, integer);
DROP VIEW seed_params;
