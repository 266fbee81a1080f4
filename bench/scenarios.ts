/**
 * What `make bench` measures: comparisons of sides in interleaved rounds, and the ratios between
 * them. A new scenario is a side (a server and its requests) and, when it divides something, a
 * ratio, pushed onto the list below, e.g.:
 *
 *   list.push(compare('/metrics', [oursOneRow, ours('GET /metrics', [get(t`/metrics`)])],
 *     [ratio('/metrics p50 / one-row p50', 'GET /metrics', oursOneRow.name, 'p50Ms')]));
 *
 * A side may name a service of its own, declared in `services` with the settings that differ from
 * ours (as the rate limiter's below); metrics are req/s, p50, p99, bytes per response and RSS.
 */
import type { DatabaseHandle } from '../src/db/database.js';
import { checkAnalytics, type AnalyticsCheck, type MaintenanceTriggers, type RestoreResult } from './analytics.js';
import { walkFeed, type FeedWalk } from './feed.js';
import { get, int, keyed, pick, post, render, t, type BenchRequest } from './requests.js';
import type { Comparison, LimitSpec, Metric, RatioSpec, Side, Target } from './rounds.js';
import { requestHeaders, type Server } from './servers.js';
import type { BenchSettings } from './settings.js';
import { webhookRun } from './webhooks.js';

/** Another instance of our service for some sides: its name and the environment that differs. */
export interface ExtraService {
  name: string;
  env: Record<string, string>;
  /** Checked once both it and ours are up (that the setting took); a line for the log, or it throws. */
  verify?: (server: Server, ours: Server) => Promise<string>;
}

export interface ScenarioContext {
  settings: BenchSettings;
  database: DatabaseHandle;
  triggers: MaintenanceTriggers;
  /** The running servers by name, filled in by main once they are up (before any side runs). */
  servers: Record<string, Server>;
  /** Ids of the seeded rows run 1..users and 1..subscriptions. */
  users: number;
  subscriptions: number;
  deepCursor: string;
  sixMonthsAgo: string;
  baseline: boolean;
  variant: boolean;
  /** Filled while the scenarios run, for the report. */
  record: {
    restores: Array<RestoreResult & { round: number }>;
    feedWalk?: FeedWalk;
    midFlight: Array<AnalyticsCheck & { round: number; rowsAtStartOfRun: number; runSeconds: number }>;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export const side = (name: string, server: string, requests: BenchRequest[], extra: Partial<Side> = {}): Side => ({ name, server, requests, ...extra });
export const ratio = (name: string, numerator: string, denominator: string, metric: Metric, target?: Target): RatioSpec => ({
  name,
  numerator,
  denominator,
  metric,
  ...(target ? { target } : {}),
});
export const compare = (name: string, sides: Side[], ratios: RatioSpec[] = [], limits: LimitSpec[] = []): Comparison => ({ name, sides, ratios, limits });
const atLeast = (value: number): Target => ({ op: '>=', value });
const atMost = (value: number): Target => ({ op: '<=', value });
const under = (value: number): Target => ({ op: '<', value });
const rssUnder200 = (s: Side): LimitSpec => ({ name: `${s.name}: RSS of the largest process (MB)`, side: s.name, metric: 'rssMaxPerProcessMb', target: under(200) });

export function scenarios(ctx: ScenarioContext): { services: ExtraService[]; comparisons: Comparison[] } {
  const { settings } = ctx;
  const statuses = ['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired'];
  const today = new Date().toISOString().slice(0, 10);
  const newSubscription = post(t`/api/subscriptions`, t`{"user_id":${int(ctx.users)},"status":"${pick(statuses)}","plan_cost":"${int(200)}.99","start_date":"${today}"}`);
  const oneRow = get(t`/api/subscriptions/${int(ctx.subscriptions)}`);
  const oneUser = get(t`/api/users/${int(ctx.users)}`);
  const analytics = get(t`/api/analytics/`);
  const firstPage = get(t`/api/subscriptions?limit=50`);
  const deepPage = get(t`/api/subscriptions?limit=50&cursor=${ctx.deepCursor}`);
  const userList = get(t`/api/subscriptions?user_id=${int(ctx.users)}`);

  const ours = (name: string, requests: BenchRequest[], extra?: Partial<Side>) => side(name, 'ours', requests, extra);
  const oursOneRow = ours('one-row GET /api/subscriptions/{id}', [oneRow]);
  const mixed = [oneUser, analytics, newSubscription, firstPage, userList];

  // Metrics from history (issue 13): the 12-month MRR report, and analytics as of a random past
  // instant (one of 200 spread over the seed's three years).
  const mrrReport = get(t`/api/analytics/mrr`);
  const pastInstants = Array.from({ length: 200 }, (_, i) => new Date(Date.now() - Math.floor(((i + 1) * 3 * 365 * 86_400_000) / 201)).toISOString());
  const asOf = get(t`/api/analytics?as_of=${pick(pastInstants)}`);
  const oursOneUser = ours('one-row GET /api/users/{id}', [oneUser]);

  const list: Comparison[] = [
    compare(
      'metrics from history',
      [ours('GET /api/analytics/mrr (12 months)', [mrrReport]), ours('GET /api/analytics?as_of=<random past instant>', [asOf]), oursOneUser],
      [
        ratio('MRR report p50 / one-row p50', 'GET /api/analytics/mrr (12 months)', oursOneUser.name, 'p50Ms', atMost(2)),
        ratio('as_of p50 / one-row p50', 'GET /api/analytics?as_of=<random past instant>', oursOneUser.name, 'p50Ms', atMost(5)),
      ],
    ),
    compare(
      'floor',
      [oursOneRow, side('floor: node:http + pg, same GET', 'floor', [oneRow])],
      [ratio('one-row GET req/s, ours / floor', oursOneRow.name, 'floor: node:http + pg, same GET', 'requestsPerSecond', atLeast(0.6))],
    ),
    compare(
      'analytics',
      [ours('analytics (maintained aggregates)', [analytics]), oursOneRow, ours('one-row GET /api/users/{id}', [oneUser])],
      [ratio('analytics p50 / one-row p50', 'analytics (maintained aggregates)', oursOneRow.name, 'p50Ms', atMost(1))],
    ),
    compare(
      'pages',
      [
        ours('first page GET /api/subscriptions?limit=50', [firstPage]),
        ours('deep page (90% into the table, by cursor)', [deepPage]),
        ours(`filtered: status=active & start_date_from=${ctx.sixMonthsAgo}`, [get(t`/api/subscriptions?limit=50&status=active&start_date_from=${ctx.sixMonthsAgo}`)]),
      ],
      [ratio('deep page p50 / first page p50', 'deep page (90% into the table, by cursor)', 'first page GET /api/subscriptions?limit=50', 'p50Ms', atMost(1.5))],
    ),
    // The plain way costs hundreds of ms per call: compared at 2 connections, beside the maintained one at 2.
    compare(
      'analytics, plain SQL',
      [
        ours('analytics (maintained aggregates), 2 conns', [analytics], { connections: 2 }),
        ours('analytics (plain SQL over base tables), 2 conns', [get(t`/api/analytics/?source=base_tables`)], { connections: 2, amount: 10 }),
      ],
      [ratio('plain-SQL analytics p50 / maintained p50 (2 conns)', 'analytics (plain SQL over base tables), 2 conns', 'analytics (maintained aggregates), 2 conns', 'p50Ms')],
    ),
    // Issues 12 and 13: what the analytics aggregates, the history of events and the MRR aggregates
    // kept from it cost a single-row insert: the same load with every one of their triggers off
    // (bench/analytics.ts finds them); the rows inserted meanwhile are deleted before they are on again.
    compare(
      'inserts',
      [
        ours('POST /api/subscriptions (aggregates and history maintained)', [newSubscription]),
        ours('POST /api/subscriptions (aggregate and history triggers disabled)', [newSubscription], {
          before: () => ctx.triggers.disable(),
          after: async () => {
            await sleep(2_000); // the load generator does not wait for its last requests: let those land unmaintained
            const restored = await ctx.triggers.restore();
            ctx.record.restores.push({ round: ctx.record.restores.length, ...restored });
          },
        }),
      ],
      [
        ratio(
          'insert req/s, aggregates and history maintained / all their triggers disabled',
          'POST /api/subscriptions (aggregates and history maintained)',
          'POST /api/subscriptions (aggregate and history triggers disabled)',
          'requestsPerSecond',
          atLeast(0.7),
        ),
        // Steadier on a shared machine: what the same ratio would be if the two cores did nothing else.
        ratio(
          'insert CPU per request (service + PostgreSQL), triggers disabled / maintained',
          'POST /api/subscriptions (aggregate and history triggers disabled)',
          'POST /api/subscriptions (aggregates and history maintained)',
          'cpuUsPerRequest',
        ),
      ],
    ),
  ];

  // Issue 14: an Idempotency-Key's record rides in the write's own transaction; a 500-row page goes
  // out compressed when the client accepts it, a one-object body never.
  const fullPage = get(t`/api/subscriptions?limit=500`);
  list.push(
    compare(
      'idempotency',
      [ours('POST /api/subscriptions', [newSubscription]), ours('POST /api/subscriptions with an Idempotency-Key', [keyed(newSubscription)])],
      [ratio('POST req/s, with an Idempotency-Key / without', 'POST /api/subscriptions with an Idempotency-Key', 'POST /api/subscriptions', 'requestsPerSecond', atLeast(0.9))],
    ),
    compare(
      'compression',
      [
        ours('500-row page, identity', [get(fullPage.path, { 'Accept-Encoding': 'identity' })]),
        ours('500-row page, gzip', [get(fullPage.path, { 'Accept-Encoding': 'gzip' })]),
        ours('one-row GET, identity', [get(oneRow.path, { 'Accept-Encoding': 'identity' })]),
        ours('one-row GET, gzip', [get(oneRow.path, { 'Accept-Encoding': 'gzip' })]),
      ],
      [
        ratio('500-row page bytes, identity / gzip', '500-row page, identity', '500-row page, gzip', 'bytesPerRequest', atLeast(4)),
        ratio('500-row page req/s, gzip / identity', '500-row page, gzip', '500-row page, identity', 'requestsPerSecond'),
        ratio('one-row GET req/s, gzip / identity', 'one-row GET, gzip', 'one-row GET, identity', 'requestsPerSecond'),
      ],
    ),
  );

  // Issue 12, following the feed: full pages of GET /api/events?limit=500 by cursor, at random,
  // through one connection; the cursors come from one walk of the whole feed when the side first runs.
  const feedPages: string[] = [];
  const feedPageSize = 500;
  const feedSide = ours(`following the feed: GET /api/events?limit=${feedPageSize} by cursor, 1 conn`, [get(t`/api/events?limit=${feedPageSize}${pick(feedPages)}`)], {
    connections: 1,
    before: async () => {
      if (ctx.record.feedWalk) return;
      const walk = await walkFeed(ctx.servers.ours!.url, feedPageSize);
      if (walk.pages.length === 0) throw new Error(`the feed has no full page of ${feedPageSize} events`);
      feedPages.push(...walk.pages);
      ctx.record.feedWalk = walk;
    },
  });
  list.push(
    compare(
      'feed',
      [feedSide],
      [],
      [
        {
          name: `feed events/s through one client (req/s x ${feedPageSize} events a page)`,
          side: feedSide.name,
          metric: 'requestsPerSecond',
          factor: feedPageSize,
          target: atLeast(100_000),
        },
        { name: 'feed: service CPU ms per 1,000 events', side: feedSide.name, metric: 'serviceCpuUsPerRequest', factor: 1000 / feedPageSize / 1000 },
        { name: 'feed: PostgreSQL CPU ms per 1,000 events', side: feedSide.name, metric: 'databaseCpuUsPerRequest', factor: 1000 / feedPageSize / 1000 },
      ],
    ),
  );

  // Issue 12, webhook delivery: one endpoint on a receiver in this process, subscription.created
  // produced at a steady rate; commit-to-receipt latency, and every event received once, signed.
  const webhookRunOf = (deliver: boolean) => (seconds: number) =>
    webhookRun({
      serverUrl: ctx.servers.ours!.url,
      rate: settings.webhookRate,
      seconds,
      drainSeconds: settings.webhookDrainSeconds,
      body: () => render(newSubscription.body!),
      deliver,
    });
  const webhookSide = ours(`webhook delivery: POST /api/subscriptions at ${settings.webhookRate}/s, one receiver on 127.0.0.1`, [newSubscription], {
    connections: 1,
    driver: webhookRunOf(true),
  });
  // The same POSTs at the same rate with no endpoint: what a delivery costs is the difference in CPU per request.
  const undeliveredSide = ours(`the same POSTs at ${settings.webhookRate}/s, no webhook endpoint`, [newSubscription], { connections: 1, driver: webhookRunOf(false) });
  const figure = (name: string, key: string, target?: Target): LimitSpec => ({ name, side: webhookSide.name, metric: { figure: key }, ...(target ? { target } : {}) });
  list.push(
    compare(
      'webhooks',
      [webhookSide, undeliveredSide],
      [
        ratio('CPU per POST (service + PostgreSQL), with its webhook delivery / without', webhookSide.name, undeliveredSide.name, 'cpuUsPerRequest'),
        ratio('PostgreSQL CPU per POST, with its webhook delivery / without', webhookSide.name, undeliveredSide.name, 'databaseCpuUsPerRequest'),
      ],
      [
        figure('webhook delivery p50, occurred_at to receipt (ms)', 'deliveryP50Ms', under(200)),
        figure('webhook delivery p99, occurred_at to receipt (ms)', 'deliveryP99Ms'),
        figure('webhook delivery p50, POST answered to receipt (ms)', 'afterAnswerP50Ms'),
        figure('webhook events lost (of those created in the run)', 'lost', atMost(0)),
        figure('webhook events received more than once', 'duplicates', atMost(0)),
        figure('webhook deliveries whose signature fails', 'badSignatures', atMost(0)),
      ],
    ),
  );

  /**
   * What one feature costs the one-row GET: ours against `other`, a service that differs from ours
   * in that feature only (on in ours if `oursHasIt`); req/s, p50 and a CPU figure as on / off.
   */
  const featureCost = (feature: string, other: Side, oursHasIt: boolean, [cpuName, cpuMetric]: [string, Metric]): Comparison => {
    const [on, off] = oursHasIt ? [oursOneRow, other] : [other, oursOneRow];
    return compare(
      feature,
      [oursOneRow, other],
      [
        ratio(`one-row GET req/s, ${feature} on / off`, on.name, off.name, 'requestsPerSecond'),
        ratio(`one-row GET p50, ${feature} on / off`, on.name, off.name, 'p50Ms'),
        ratio(`one-row GET ${cpuName}, ${feature} on / off`, on.name, off.name, cpuMetric),
      ],
    );
  };

  // What the rate limiter costs a request: the same GET with a limit no run reaches (one upsert per request).
  const services: ExtraService[] = [{ name: 'rate-limited', env: { RATE_LIMIT_PER_MINUTE: '1000000000' } }];
  const limited = side('one-row GET, rate limiter on', 'rate-limited', [oneRow]);
  list.push(featureCost('rate limiter', limited, false, ['CPU per request (service + PostgreSQL)', 'cpuUsPerRequest']));

  // Issue 11: what the /metrics collection costs a request: the same GET on a second service with
  // METRICS=0 (no collection middleware, no /metrics route; checked when it starts).
  services.push({
    name: 'no-metrics',
    env: { METRICS: '0' },
    verify: async (server, oursServer) => {
      const status = async (s: Server) => (await fetch(`${s.url}/metrics`, { headers: requestHeaders })).status;
      const [on, off] = [await status(oursServer), await status(server)];
      if (on !== 200 || off !== 404) throw new Error(`GET /metrics answers ${on} on ours and ${off} with METRICS=0 (expected 200 and 404): the setting did not take`);
      return `GET /metrics: ${on} on ours, ${off} with METRICS=0`;
    },
  });
  const unmetered = side('one-row GET, metrics off (METRICS=0)', 'no-metrics', [oneRow]);
  list.push(featureCost('metrics', unmetered, true, ['service CPU per request', 'serviceCpuUsPerRequest']));

  const oursMixed = ours(`mixed 80% reads / 20% writes, ${settings.mixedConnections} conns`, mixed, {
    connections: settings.mixedConnections,
    // Analytics checked against the base tables while the writes go on, spread over the run.
    during: async (since, round) => {
      const rowsAtStartOfRun = Number((await ctx.database.pool.query('SELECT count(*) AS n FROM subscriptions')).rows[0].n);
      const n = settings.midFlightChecks;
      const checks = Array.from({ length: n }, async (_, i) => {
        await sleep(Math.max(0, since + ((i + 1) * settings.seconds * 1000) / (n + 1) - performance.now()));
        return checkAnalytics(ctx.database, `round ${round}, mid-flight ${i + 1}`, since);
      });
      for (const c of await Promise.all(checks)) ctx.record.midFlight.push({ ...c, round, rowsAtStartOfRun, runSeconds: settings.seconds });
    },
  });
  list.push(compare('mixed', [oursMixed], [], [rssUnder200(oursMixed)]));

  if (ctx.baseline) {
    // Ours against the older commit's service on the same data, pair by pair.
    const pairs: Array<[string, BenchRequest[], Target | undefined]> = [
      ['one-row GET /api/subscriptions/{id}', [oneRow], atLeast(4)],
      ['first page GET /api/subscriptions?limit=50', [firstPage], undefined],
      ['analytics (maintained aggregates)', [analytics], undefined],
      ['POST /api/subscriptions', [newSubscription], undefined],
    ];
    for (const [name, requests, target] of pairs) {
      list.push(
        compare(
          `baseline: ${name}`,
          [ours(`ours: ${name}`, requests), side(`baseline: ${name}`, 'baseline', requests)],
          [ratio(`${name} req/s, ours / baseline`, `ours: ${name}`, `baseline: ${name}`, 'requestsPerSecond', target)],
        ),
      );
    }
  }

  if (ctx.variant) {
    // Two settings of our service (workers, V8 flags), request by request and in the 64-connection mix.
    const pairs: Array<[string, BenchRequest[], number | undefined]> = [
      ['one-row GET /api/subscriptions/{id}', [oneRow], undefined],
      ['first page GET /api/subscriptions?limit=50', [firstPage], undefined],
      ['POST /api/subscriptions', [newSubscription], undefined],
      [`mixed, ${settings.mixedConnections} conns`, mixed, settings.mixedConnections],
    ];
    for (const [name, requests, connections] of pairs) {
      const extra = connections ? { connections } : {};
      const a = ours(`ours: ${name}`, requests, extra);
      const b = side(`variant: ${name}`, 'variant', requests, extra);
      list.push(
        compare(
          `variant: ${name}`,
          [a, b],
          [
            ratio(`${name} req/s, variant / ours`, b.name, a.name, 'requestsPerSecond'),
            ...(connections ? [ratio(`${name} RSS sum over the processes, variant / ours`, b.name, a.name, 'rssSumMb')] : []),
          ],
          connections ? [rssUnder200(a), rssUnder200(b)] : [],
        ),
      );
    }
  }
  return { services, comparisons: list };
}
