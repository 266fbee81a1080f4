/** EXPLAIN of every subscription list variant the service serves, on the seeded data. */
import type { DatabaseHandle } from '../src/db/database.js';
import type { CursorCodec } from '../src/http/cursor.js';
import { subscriptionPageQuery } from '../src/resources/subscriptions.js';
import { median } from './rounds.js';

/** A date this many days before today (YYYY-MM-DD). */
export const daysAgo = (days: number) => new Date(Date.now() - days * 86400_000).toISOString().slice(0, 10);

interface ExplainContext {
  database: DatabaseHandle;
  cursors: CursorCodec;
  runs: number;
}

type ListQuery = Parameters<typeof subscriptionPageQuery>[2];

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  'Actual Rows'?: number;
  'Actual Loops'?: number;
  'Index Cond'?: string;
  'Recheck Cond'?: string;
  Filter?: string;
  'Rows Removed by Filter'?: number;
  'Sort Key'?: string[];
  'Shared Hit Blocks'?: number;
  'Shared Read Blocks'?: number;
  Plans?: PlanNode[];
}
interface ExplainOutput {
  Plan: PlanNode;
  'Planning Time': number;
  'Execution Time': number;
}
export interface PageExplain {
  /** Median of the runs' execution times. */
  executionMs: number;
  executionRunsMs: number[];
  planningMs: number;
  indexes: string[];
  seqScanOnSubscriptions: boolean;
  rowsReturned: number;
  sharedHitBlocks: number;
  sharedReadBlocks: number;
  sql: string;
  parameters: unknown[];
  /** The plan tree, one node a line. */
  plan: string[];
}
export interface VariantExplain {
  variant: string;
  query: ListQuery;
  /** Rows matching the filters: the deep page starts after the row at 90% of them. */
  matchingRows: number;
  deepOffset: number | null;
  first: PageExplain;
  deep: PageExplain | null;
  deepOverFirst: number | null;
  flags: string[];
}

function walkPlan(node: PlanNode, visit: (node: PlanNode, depth: number) => void, depth = 0): void {
  visit(node, depth);
  for (const child of node.Plans ?? []) walkPlan(child, visit, depth + 1);
}

function describeNode(node: PlanNode): string {
  const parts = [node['Node Type']];
  if (node['Index Name']) parts.push(`using ${node['Index Name']}`);
  if (node['Relation Name']) parts.push(`on ${node['Relation Name']}`);
  parts.push(`(rows=${node['Actual Rows']} loops=${node['Actual Loops']})`);
  if (node['Index Cond']) parts.push(`Index Cond: ${node['Index Cond']}`);
  if (node['Recheck Cond']) parts.push(`Recheck Cond: ${node['Recheck Cond']}`);
  if (node.Filter) parts.push(`Filter: ${node.Filter} (removed ${node['Rows Removed by Filter'] ?? 0})`);
  if (node['Sort Key']) parts.push(`Sort Key: ${node['Sort Key'].join(', ')}`);
  return parts.join(' ');
}

const round2 = (n: number) => Math.round(n * 100) / 100;

/** EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) of the exact page query the service would run, explainRuns times. */
async function explainPage({ database, cursors, runs: explainRuns }: ExplainContext, query: ListQuery): Promise<PageExplain> {
  const { q } = subscriptionPageQuery(database.db, cursors, query);
  const compiled = q.compile();
  const outputs: ExplainOutput[] = [];
  for (let i = 0; i < explainRuns; i++) {
    const { rows } = await database.pool.query<{ 'QUERY PLAN': ExplainOutput[] }>(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${compiled.sql}`, compiled.parameters as unknown[]);
    outputs.push(rows[0]!['QUERY PLAN'][0]!);
  }
  const last = outputs.at(-1)!;
  const indexes = new Set<string>();
  let seqScanOnSubscriptions = false;
  const plan: string[] = [];
  walkPlan(last.Plan, (node, depth) => {
    if (node['Index Name']) indexes.add(node['Index Name']);
    if (node['Node Type'] === 'Seq Scan' && node['Relation Name'] === 'subscriptions') seqScanOnSubscriptions = true;
    plan.push(`${'  '.repeat(depth)}${describeNode(node)}`);
  });
  const runs = outputs.map((o) => round2(o['Execution Time']));
  return {
    executionMs: median(runs),
    executionRunsMs: runs,
    planningMs: round2(last['Planning Time']),
    indexes: [...indexes],
    seqScanOnSubscriptions,
    rowsReturned: last.Plan['Actual Rows'] ?? 0,
    sharedHitBlocks: last.Plan['Shared Hit Blocks'] ?? 0,
    sharedReadBlocks: last.Plan['Shared Read Blocks'] ?? 0,
    sql: compiled.sql,
    parameters: [...compiled.parameters],
    plan,
  };
}

/** First page and a page 90% deep (a real cursor: the keys of the row at 90% of the ordering, signed with the service's key). */
async function explainVariant(ctx: ExplainContext, variant: string, query: ListQuery): Promise<VariantExplain> {
  const { database, cursors } = ctx;
  const { q, sortName, keysOf } = subscriptionPageQuery(database.db, cursors, query);
  const all = q.clearLimit().clearOrderBy();
  const counted = await database.db
    .selectFrom(all.as('matching'))
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .executeTakeFirstOrThrow();
  const matchingRows = Number(counted.n);
  const first = await explainPage(ctx, query);
  let deep: PageExplain | null = null;
  let deepOffset: number | null = null;
  if (matchingRows > 1) {
    deepOffset = Math.min(matchingRows - 2, Math.floor(matchingRows * 0.9));
    const row = await q.clearLimit().limit(1).offset(deepOffset).executeTakeFirstOrThrow();
    deep = await explainPage(ctx, { ...query, cursor: cursors.encode(sortName, keysOf(row)) });
  }
  const deepOverFirst = deep ? round2(deep.executionMs / Math.max(first.executionMs, 0.001)) : null;
  const flags: string[] = [];
  if (first.seqScanOnSubscriptions) flags.push('first page seq-scans subscriptions');
  if (deep?.seqScanOnSubscriptions) flags.push('deep page seq-scans subscriptions');
  if (deepOverFirst !== null && deepOverFirst > 3) flags.push(`deep page ${deepOverFirst}x the first page`);
  return { variant, query, matchingRows, deepOffset, first, deep, deepOverFirst, flags };
}

/**
 * EXPLAIN (ANALYZE, BUFFERS) of the exact page query of 22 list variants (every sort, each filter
 * alone and in ranges, the most and least linked feature, filters with sorts), first page and a page
 * 90% deep, median of `runs` runs each; flags a seq scan of subscriptions or a deep page over 3x its first.
 */
export async function explainListVariants(database: DatabaseHandle, cursors: CursorCodec, runs: number): Promise<VariantExplain[]> {
  const ctx: ExplainContext = { database, cursors, runs };
  const sixMonthsAgo = daysAgo(182);
  const heaviestUser = Number((await database.pool.query('SELECT user_id FROM subscriptions GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1')).rows[0].user_id);
  const features = (await database.pool.query('SELECT feature_id, count(*) AS n FROM subscription_features GROUP BY feature_id ORDER BY n DESC, feature_id')).rows;
  const commonFeature = Number(features[0].feature_id);
  const rareFeature = Number(features.at(-1).feature_id);
  const yearAgo = daysAgo(365);
  const twoYearsAgo = daysAgo(730);
  const variants: Array<[string, ListQuery]> = [
    ['sort=id', {}],
    ['sort=-id', { sort: '-id' }],
    ['sort=start_date', { sort: 'start_date' }],
    ['sort=-start_date', { sort: '-start_date' }],
    ['sort=plan_cost', { sort: 'plan_cost' }],
    ['sort=-plan_cost', { sort: '-plan_cost' }],
    ['status=active', { status: ['active'] }],
    ['status=past_due&status=paused', { status: ['past_due', 'paused'] }],
    [`user_id=${heaviestUser} (most subscriptions)`, { user_id: heaviestUser }],
    [`start_date_from=${sixMonthsAgo}`, { start_date_from: sixMonthsAgo }],
    [`start_date_to=${twoYearsAgo}`, { start_date_to: twoYearsAgo }],
    [`start_date_from=${yearAgo}&start_date_to=${sixMonthsAgo}`, { start_date_from: yearAgo, start_date_to: sixMonthsAgo }],
    ['plan_cost_min=100', { plan_cost_min: '100' }],
    ['plan_cost_max=20', { plan_cost_max: '20' }],
    ['plan_cost_min=40&plan_cost_max=100', { plan_cost_min: '40', plan_cost_max: '100' }],
    [`feature_id=${commonFeature} (most linked)`, { feature_id: commonFeature }],
    [`feature_id=${rareFeature} (least linked)`, { feature_id: rareFeature }],
    [`status=active&start_date_from=${sixMonthsAgo}`, { status: ['active'], start_date_from: sixMonthsAgo }],
    // Filters with the sort a screen would pair them with.
    ['status=active&sort=-start_date', { status: ['active'], sort: '-start_date' }],
    [`user_id=${heaviestUser}&sort=-start_date`, { user_id: heaviestUser, sort: '-start_date' }],
    [`feature_id=${rareFeature}&sort=-start_date`, { feature_id: rareFeature, sort: '-start_date' }],
    ['plan_cost_min=100&sort=-plan_cost', { plan_cost_min: '100', sort: '-plan_cost' }],
  ];
  const results: VariantExplain[] = [];
  for (const [name, query] of variants) results.push(await explainVariant(ctx, name, query));
  return results;
}
