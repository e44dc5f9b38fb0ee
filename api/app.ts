import { randomUUID } from 'node:crypto';
import express, { type Express, type Request, type RequestHandler, type Response } from 'express';
import helmet from 'helmet';
import { pinoHttp } from 'pino-http';
import type { Registry } from 'prom-client';
import { logSerializers, type Logger } from '../lib/logger.ts';
import { opsRoutes } from '../http/ops-routes.ts';
import { findOnlineUserIds, type Executor } from '../lib/pulse-store.ts';
import type { Admission } from './admission.ts';
import { shedResponses } from './admission.ts';
import { assertMayWrite, createAuthenticate, principalOf, type AuthConfig } from './auth.ts';
import { errorHandler, notFound } from './errors.ts';
import type { HeartbeatWriter } from './heartbeat-writer.ts';
import { openApiDocument } from './openapi.ts';
import type { StatusReader } from './status-reader.ts';
import { parseBatchBody, parseHeartbeatBody, parseUserIdParam, requireJson } from './validation.ts';

export interface AppDeps {
  db: Executor;
  heartbeats: HeartbeatWriter;
  statuses: StatusReader;
  logger: Logger;
  registry: Registry;
  httpMetrics: RequestHandler;
  /** Admission control (api/admission.ts), mounted on each /status route before its body parser. */
  admission: Admission;
  config: AuthConfig & {
    ONLINE_THRESHOLD_SECONDS: number;
    BATCH_MAX_IDS: number;
    BODY_LIMIT_BYTES: number;
  };
}

/** Builds the HTTP app without listening: the entry point and the tests both call this. */
export function buildApp({
  db,
  heartbeats,
  statuses,
  logger,
  registry,
  httpMetrics,
  admission,
  config,
}: AppDeps): Express {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  app.use(
    pinoHttp({
      logger,
      genReqId: (req, res) => {
        const given = req.headers['x-request-id'];
        const id =
          typeof given === 'string' && /^[\w.:-]{1,128}$/.test(given) ? given : randomUUID();
        res.setHeader('X-Request-Id', id);
        return id;
      },
      // Probes and scrapes every few seconds would drown the request log.
      autoLogging: { ignore: (req) => /^\/(healthz|readyz|metrics)$/.test(req.url ?? '') },
      // Requests refused by admission control are counted (metrics, a periodic line), not logged.
      customLogLevel: (_req, res) => (shedResponses.has(res) ? 'silent' : 'info'),
      // A 5xx answer gets the same one access line as any other: no synthetic "failed with status
      // code" error and stack per request (the cause, if any, is logged once by errors.ts or the
      // database's outage log).
      customErrorMessage: () => 'request completed',
      customErrorObject: (_req, _res, _error, line: Record<string, unknown>) => ({
        ...line,
        err: undefined,
      }),
      serializers: {
        ...logSerializers,
        req: (req: { id: unknown; method: string; url: string }) => ({
          id: req.id,
          method: req.method,
          url: req.url,
        }),
        res: (res: { statusCode: number }) => ({ statusCode: res.statusCode }),
      },
    }),
  );
  // --- security: headers for a JSON API ---
  app.use(
    // JSON is never rendered: allow nothing, frame nothing.
    helmet({
      contentSecurityPolicy: {
        useDefaults: false,
        directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] },
      },
      xFrameOptions: { action: 'deny' },
    }),
  );
  app.use(httpMetrics);

  // Probes, metrics and the contract are public; /status needs a caller (before any body is read).
  app.use(opsRoutes({ db, registry }));
  app.get('/openapi.json', (_req, res) => {
    res.json(openApiDocument);
  });
  app.use('/status', createAuthenticate(config));

  // Only application/json is parsed; routes answer any other content type with 415. Compressed
  // bodies are refused (415): the size limit then bounds exactly what the parser reads. Each route
  // passes admission control first, so a refused request's body is never parsed.
  const jsonBody = express.json({ limit: config.BODY_LIMIT_BYTES, strict: true, inflate: false });
  const admit = admission.guard;

  app.post('/status/update', admit, jsonBody, async (req, res) => {
    requireJson(req);
    const { userIds, many } = parseHeartbeatBody(req.body, config.BATCH_MAX_IDS);
    assertMayWrite(principalOf(req), userIds);
    await heartbeats.record(userIds);
    res.json(many ? { status: 'success', accepted: userIds.length } : { status: 'success' });
  });

  app.post('/status/batch', admit, jsonBody, async (req, res) => {
    requireJson(req);
    const userIds = parseBatchBody(req.body, config.BATCH_MAX_IDS);
    const online = await findOnlineUserIds(db, userIds, config.ONLINE_THRESHOLD_SECONDS);
    res.json(userIds.map((id) => ({ user_id: id, is_online: online.has(id) })));
  });

  app.get('/status/:userId', admit, async (req: Request<{ userId: string }>, res: Response) => {
    const userId = parseUserIdParam(req.params.userId);
    res.json({ user_id: userId, is_online: await statuses.isOnline(userId) });
  });

  app.use(notFound);
  app.use(errorHandler);
  return app;
}
