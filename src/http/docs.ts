import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type Router from '@koa/router';
import { projectRoot } from '../config.js';
import { ApiError } from './problem.js';
import type { RequestState } from './state.js';

/** The Redoc page, built by `make docs` (one self-contained file: it renders with no network). */
export const docsPath = path.join(projectRoot, 'docs', 'index.html');

/** swagger-ui-dist's folder, served locally so the page needs no CDN. */
const swaggerUiDir = path.dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'));

/** The only files served from swagger-ui-dist: a fixed list, so no request can name another path. */
const swaggerAssets: Record<string, string> = {
  'swagger-ui.css': 'text/css; charset=utf-8',
  'swagger-ui-bundle.js': 'text/javascript; charset=utf-8',
  'favicon-32x32.png': 'image/png',
  'favicon-16x16.png': 'image/png',
};

// validatorUrl null: Swagger UI would otherwise send the spec to an online validator.
const swaggerInit = `window.ui = SwaggerUIBundle({
  url: '/openapi.json',
  dom_id: '#swagger-ui',
  deepLinking: true,
  displayOperationId: true,
  displayRequestDuration: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: 'BaseLayout',
});
`;

const swaggerPage = `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Subscriptions API: Swagger UI</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="stylesheet" href="/docs/swagger/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/swagger/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="/docs/swagger/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger/init.js"></script>
</body>
</html>
`;

/** GET /docs (Redoc) and GET /docs/swagger (Swagger UI, with its assets under /docs/swagger/). */
export function registerDocsRoutes(router: Router<RequestState>): void {
  router.get('/docs', (ctx) => {
    if (!fs.existsSync(docsPath)) throw new ApiError(404, 'the documentation is not built; run make docs');
    ctx.type = 'text/html; charset=utf-8';
    ctx.body = fs.createReadStream(docsPath);
  });
  router.get('/docs/swagger', (ctx) => {
    ctx.type = 'text/html; charset=utf-8';
    ctx.body = swaggerPage;
  });
  router.get('/docs/swagger/init.js', (ctx) => {
    ctx.type = 'text/javascript; charset=utf-8';
    ctx.body = swaggerInit;
  });
  router.get('/docs/swagger/:file', (ctx) => {
    const file = ctx.params.file ?? '';
    const type = Object.hasOwn(swaggerAssets, file) ? swaggerAssets[file] : undefined;
    if (!type) throw new ApiError(404, `no resource at ${ctx.path}`);
    ctx.type = type;
    // The files change only when swagger-ui-dist is upgraded.
    ctx.set('Cache-Control', 'public, max-age=3600');
    ctx.body = fs.createReadStream(path.join(swaggerUiDir, file));
  });
}
