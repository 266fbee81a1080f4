/**
 * The floor of our stack, run as its own process by the bench: node:http and pg, no framework, no
 * validation, no key check, one prepared SELECT by primary key, the service's pool size. It answers
 * GET /api/subscriptions/{id} with the row as JSON (404 when there is none) and /readyz with 200.
 * Environment: FLOOR_DATABASE_URL, FLOOR_PORT, FLOOR_POOL_SIZE.
 */
import http from 'node:http';
import pg from 'pg';

const pool = new pg.Pool({ connectionString: process.env.FLOOR_DATABASE_URL, max: Number(process.env.FLOOR_POOL_SIZE || 10) });
pool.on('error', () => {});
// A name makes pg prepare it once per connection and then only bind and execute.
const byId = { name: 'floor_subscription_by_id', text: 'SELECT * FROM subscriptions WHERE id = $1' };
const route = /^\/api\/subscriptions\/(\d+)(?:\?|$)/;

function send(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
}

const server = http.createServer((req, res) => {
  if (req.url === '/readyz') return send(res, 200, '{"status":"ready"}');
  const match = req.method === 'GET' ? route.exec(req.url ?? '') : null;
  if (!match) return send(res, 404, '{"status":404}');
  pool.query({ ...byId, values: [match[1]] }).then(
    ({ rows }) => (rows[0] ? send(res, 200, JSON.stringify(rows[0])) : send(res, 404, '{"status":404}')),
    () => send(res, 500, '{"status":500}'),
  );
});
server.listen(Number(process.env.FLOOR_PORT), '127.0.0.1');

process.on('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  void pool.end().finally(() => process.exit(0));
});
