import type { Deps } from '../deps.js';
import type { OperationHandlers } from '../http/operation.js';
import { analyticsHandlers } from './analytics.js';
import { eventHandlers } from './events.js';
import { featureHandlers } from './features.js';
import { mrrHandlers } from './mrr.js';
import { subscriptionFeatureHandlers } from './subscription-features.js';
import { subscriptionHandlers } from './subscriptions.js';
import { userHandlers } from './users.js';
import { webhookEndpointHandlers } from './webhook-endpoints.js';

/**
 * Every operation's handler, from the resource modules: the one list a new resource is added to.
 * `satisfies OperationHandlers` makes an operation of the spec without a handler a compile error.
 */
export function allHandlers(deps: Deps): OperationHandlers {
  return {
    ...userHandlers(deps),
    ...subscriptionHandlers(deps),
    ...featureHandlers(deps),
    ...subscriptionFeatureHandlers(deps),
    ...analyticsHandlers(deps),
    ...mrrHandlers(deps),
    ...eventHandlers(deps),
    ...webhookEndpointHandlers(deps),
  } satisfies OperationHandlers;
}
