/**
 * The demo page (/demo/) and the built client library it uses (/client/, the same files a page on
 * another origin can import as a module). Both are static: client/demo/ holds the page, and
 * client/dist/ the library that `npm run build:client` compiles (npm start and npm test build it
 * first). The page gets its own Content-Security-Policy: its scripts, styles and API calls all come
 * from this origin, nothing else. Its files also get the security headers meant for documents,
 * which API answers go without (api/edge/security-headers.ts): they have helmet's full set.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import express, { Router, type RequestHandler, type Response } from 'express';
import { HttpError } from './edge/errors.ts';
import { setHeaders, type HeaderList } from './edge/security-headers.ts';

const DEMO_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** client/ beside api/: one level up in the source tree, two from dist/api/ in a build. */
function clientFolder(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.resolve(here, '..', 'client'), path.resolve(here, '..', '..', 'client')];
  return candidates.find((dir) => existsSync(path.join(dir, 'package.json'))) ?? candidates[0]!;
}

export interface DemoRoutes {
  router: Router;
  /** Whether the built library was found (the page needs it). */
  built: boolean;
}

/**
 * `documentHeaders`: the security headers for HTML pages that API answers go without; `client`:
 * the client package's folder (tests give another).
 */
export function demoRoutes(documentHeaders: HeaderList, client = clientFolder()): DemoRoutes {
  const library = path.join(client, 'dist');
  const built = existsSync(path.join(library, 'index.js'));
  const router = Router();
  const noCache = (res: Response) => res.setHeader('Cache-Control', 'no-cache');

  if (!built) {
    router.use(['/demo', '/client'], () => {
      // Every 503 says when to come back; a build takes about a minute.
      throw new HttpError('client_not_built', undefined, { 'Retry-After': '60' });
    });
    return { router, built };
  }
  router.use(
    '/client',
    express.static(library, {
      index: false,
      setHeaders: (res) => {
        noCache(res);
        setHeaders(res, documentHeaders);
      },
      dotfiles: 'ignore',
    }),
  );
  router.use(
    '/demo',
    express.static(path.join(client, 'demo'), {
      index: 'index.html',
      dotfiles: 'ignore',
      setHeaders: (res) => {
        noCache(res);
        setHeaders(res, documentHeaders);
        res.setHeader('Content-Security-Policy', DEMO_CSP);
      },
    }),
  );
  return { router, built };
}

/**
 * `GET /`: where to go from here, the demo page (when served) and the API contract. A browser
 * gets a page with the two links, anything else JSON.
 */
export function serviceIndex(documentHeaders: HeaderList, demoPage: boolean): RequestHandler {
  const links = { ...(demoPage ? { demo: '/demo/' } : {}), contract: '/openapi.json' };
  const items = [
    ...(demoPage
      ? ['<li><a href="/demo/">The demo page</a>: live presence in your browser</li>']
      : []),
    '<li><a href="/openapi.json">The API contract</a> (OpenAPI 3.1)</li>',
  ];
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Pulse</title><link rel="icon" href="data:,"></head>
<body><h1>Pulse</h1><p>Online/offline presence. This is its API.</p><ul>${items.join('')}</ul></body></html>
`;
  return (req, res) => {
    if (req.accepts(['json', 'html']) === 'html') {
      setHeaders(res, documentHeaders);
      res.setHeader('Content-Security-Policy', "default-src 'none'; frame-ancestors 'none'");
      res.type('html').send(html);
      return;
    }
    res.json({ service: 'pulse', ...links });
  };
}
