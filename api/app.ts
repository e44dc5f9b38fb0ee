import express, { type Express, type Request, type Response } from 'express';
import type { Registry } from 'prom-client';
import type { Logger } from '../lib/infra/logger.ts';
import { opsRoutes } from '../http/ops-routes.ts';
import {
  setDevicesOffline,
  setOffline,
  statusRow,
  UNKNOWN_PRESENCE,
  type Executor,
} from '../lib/store/pulse-store.ts';
import { shedResponses, type Admission } from './edge/admission.ts';
import {
  assertMayWrite,
  createAuthenticate,
  createTokenVerifier,
  principalOf,
  type AuthConfig,
} from './edge/auth.ts';
import { createCors } from './edge/cors.ts';
import type { CallerLimits } from './edge/caller-limits.ts';
import { demoRoutes, serviceIndex } from './demo.ts';
import { createEdge } from './edge/edge.ts';
import { createErrorHandler, notFound } from './edge/errors.ts';
import type { SettingsMissingLog } from './read/settings-missing-log.ts';
import type { HeartbeatWriter } from './write/heartbeat-writer.ts';
import type { DeferredOffline } from './write/deferred-offline.ts';
import type { ShardRouter } from '../lib/citus/shard-routing.ts';
import type { OnlineThreshold } from '../lib/store/online-threshold.ts';
import { openApiDocument } from './openapi.ts';
import type { StatusReader } from './read/status-reader.ts';
import { createRequestLog } from './edge/request-log.ts';
import { securityHeaders } from './edge/security-headers.ts';
import { createStreamRoute, type StreamRouteDeps } from './stream/status-stream.ts';
import { privacyRoutes } from './write/privacy.ts';
import {
  parseBatchBody,
  parseHeartbeatBody,
  parseGraceParam,
  parseUserIdParam,
  requireJson,
} from './edge/validation.ts';

export interface AppDeps {
  db: Executor;
  /** The pools per node when DATABASE_URL lists several Citus nodes: /readyz checks each. */
  databaseNodes?: ReadonlyArray<{ name: string; db: Executor }> | undefined;
  /** On Citus, where each user's shard is: a device's offline runs per shard. */
  shardRouter?: ShardRouter | undefined;
  heartbeats: HeartbeatWriter;
  /** Offline after a grace (`POST /status/offline?grace_ms=`). */
  deferredOffline: DeferredOffline;
  statuses: StatusReader;
  logger: Logger;
  registry: Registry;
  /** Records a finished request's duration (api/metrics.ts). */
  observeRequest: (req: Request, res: Response, seconds: number) => void;
  /** Admission control (api/edge/admission.ts), mounted on each /status route before its body parser. */
  admission: Admission;
  stream: Omit<StreamRouteDeps, 'config' | 'admission' | 'callerLimits'>;
  /** Per-caller stream and read limits (api/edge/caller-limits.ts); absent: none. */
  callerLimits?: CallerLimits | undefined;
  /** Told of each read refused for a missing pulse_settings row; absent: nothing logged. */
  settingsMissingLog?: SettingsMissingLog | undefined;
  /**
   * The database's online threshold in force (api/stream/held-presence.ts): heartbeat answers carry it in
   * `Pulse-Online-Threshold-Seconds`, so a client's fallback heartbeat loop can follow the server.
   */
  onlineThreshold?: OnlineThreshold | undefined;
  config: AuthConfig & {
    /** Set: /metrics is served by the separate metrics listener, not by this app. */
    METRICS_PORT?: number | undefined;
    BATCH_MAX_IDS: number;
    BODY_LIMIT_BYTES: number;
    CORS_ORIGINS: readonly string[];
    DEMO_PAGE: boolean;
  };
}

/** Heartbeat answers say the online threshold, so clients can pace their fallback loop. */
export const THRESHOLD_HEADER = 'Pulse-Online-Threshold-Seconds';

/** `{"status":"success"}`, serialized once. */
const SUCCESS = jsonAnswer({ status: 'success' });

/** A JSON answer serialized once: its text and its length in bytes. */
function jsonAnswer(value: unknown): { text: string; length: string } {
  const text = JSON.stringify(value);
  return { text, length: String(Buffer.byteLength(text)) };
}

/**
 * Sends an answer serialized once: what res.json would send (Express's ETag is off), without
 * serializing, looking up the content type or checking freshness per request. A string, not a
 * Buffer: Node then writes the head and the body as one chunk (a Buffer goes out with writev).
 */
function sendJsonAnswer(res: Response, answer: { text: string; length: string }): void {
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', answer.length);
  res.end(answer.text);
}

/** Who reads, for the visibility rule: the caller's user id, or null (gateway, AUTH_MODE=none). */
const viewerOf = (req: Request) => principalOf(req).userId ?? null;

/** One user's entry in GET /status/{id}, POST /status/batch and the stream (the Status schema). */
export { statusRow };

/** Builds the HTTP app without listening: the entry point and the tests both call this. */
export function buildApp({
  db,
  databaseNodes,
  shardRouter,
  heartbeats,
  deferredOffline,
  statuses,
  logger,
  registry,
  observeRequest,
  admission,
  stream,
  config,
  onlineThreshold,
  callerLimits,
  settingsMissingLog,
}: AppDeps): Express {
  // The header follows pulse_settings (read again at most once a second while answers ask).
  const thresholdHeader = () =>
    onlineThreshold === undefined ? undefined : String(onlineThreshold.seconds);
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  // One layer for what every request gets (api/edge/edge.ts), in this order: the request id and log
  // line; CORS for browser clients on other origins, before everything else, so preflights need
  // no token; security headers for a JSON API; the request duration histogram. Its one 'close'
  // listener also gives back what admission control admitted.
  const security = securityHeaders();
  app.use(
    createEdge({
      requestLog: createRequestLog(logger, {
        // Probes and scrapes every few seconds would drown the request log.
        ignore: /^\/(healthz|readyz|metrics)$/,
        // Requests refused by admission control are counted (metrics, a periodic line), not logged.
        skip: (res) => shedResponses.has(res),
        // The demo page's scripts and styles: a dozen lines a page load would flood a terminal.
        quiet: /^\/(demo\/[^?]|client\/)/,
      }),
      cors: createCors(config.CORS_ORIGINS),
      headers: security.api,
      observe: observeRequest,
      onClose: admission.release,
    }),
  );

  // Only application/json is parsed; routes answer any other content type with 415. Compressed
  // bodies are refused (415): the size limit then bounds exactly what the parser reads. Each route
  // passes admission control first, so a refused request's body is never parsed.
  // Admission weighs each body by the bytes read (verify runs after reading, before parsing).
  const jsonBody = express.json({
    limit: config.BODY_LIMIT_BYTES,
    strict: true,
    inflate: false,
    verify: admission.bodyRead,
  });
  const admit = admission.guard;
  const inTime = admission.withinDeadline;

  // Every /status route authenticates first. The routes carry the middleware themselves, so a
  // request walks no router layer it does not use (the single heartbeat is the hot path:
  // docs/request-cost.md); `app.use('/status', authenticate)` below is for the paths no route
  // matches, which are then 401 before they are 404.
  // One verifier for every route: with AUTH_JWKS_URL, one key cache and one fetch per process.
  const verifier = createTokenVerifier(config, logger);
  const authenticate = createAuthenticate(config, verifier && { verifier });

  app.post('/status/update', authenticate, admit, jsonBody, async (req, res) => {
    requireJson(req);
    const { userIds, many, devices } = parseHeartbeatBody(req.body, config.BATCH_MAX_IDS);
    assertMayWrite(principalOf(req), userIds);
    await inTime(res, heartbeats.record(userIds, devices && { devices }));
    const threshold = thresholdHeader();
    if (threshold !== undefined) res.setHeader(THRESHOLD_HEADER, threshold);
    if (many) res.json({ status: 'success', accepted: userIds.length });
    else sendJsonAnswer(res, SUCCESS);
  });

  app.post('/status/offline', authenticate, admit, jsonBody, async (req, res) => {
    requireJson(req);
    const { userIds, many, devices } = parseHeartbeatBody(req.body, config.BATCH_MAX_IDS);
    assertMayWrite(principalOf(req), userIds);
    const graceMs = parseGraceParam(req.query.grace_ms);
    // Items naming a device end only that device; the others end the user on every device.
    const everywhere = userIds.filter((_, index) => devices?.ids[index] == null);
    const oneDevice = userIds.filter((_, index) => devices?.ids[index] != null);
    const leaving = devices?.ids.filter((id): id is string => id !== null) ?? [];
    if (graceMs > 0) {
      // A page going away: offline unless the user (device) beats again within the grace (a reload).
      if (everywhere.length > 0) await inTime(res, deferredOffline.schedule(everywhere, graceMs));
      if (oneDevice.length > 0) {
        await inTime(res, deferredOffline.schedule(oneDevice, graceMs, leaving));
      }
      res.status(202);
      res.json(many ? { status: 'accepted', accepted: userIds.length } : { status: 'accepted' });
      return;
    }
    // Offline is final until a newer heartbeat: this process's earlier beats of these users (of
    // these devices) are dropped from the queue or, already being written, commit before the
    // DELETE runs.
    const offline = async () => {
      if (everywhere.length > 0) {
        await heartbeats.withdraw(everywhere);
        await setOffline(db, everywhere);
      }
      if (oneDevice.length > 0) {
        await heartbeats.withdraw(oneDevice, leaving);
        await setDevicesOffline(db, oneDevice, leaving, undefined, shardRouter);
      }
    };
    await inTime(res, offline());
    res.json(many ? { status: 'success', accepted: userIds.length } : { status: 'success' });
  });

  app.post('/status/batch', authenticate, admit, jsonBody, async (req, res) => {
    requireJson(req);
    const userIds = parseBatchBody(req.body, config.BATCH_MAX_IDS);
    callerLimits?.chargeRead(principalOf(req).caller, userIds.length);
    const found = await inTime(res, statuses.readAmong(userIds, viewerOf(req)));
    res.json(userIds.map((id) => statusRow(id, found.get(id) ?? UNKNOWN_PRESENCE)));
  });

  // The stream is a long-lived GET (no body); it also accepts the token as access_token. Its
  // snapshot passes admission inside the route (the stream itself is not counted).
  app.get(
    '/status/stream',
    createAuthenticate(config, { queryToken: true, ...(verifier && { verifier }) }),
    createStreamRoute({ ...stream, admission, config, callerLimits }),
  );

  // Before /status/:userId, which would read "privacy" as a user id.
  const privacy = privacyRoutes(db, inTime);
  app.get('/status/privacy', authenticate, admit, privacy.get);
  app.put('/status/privacy', authenticate, admit, jsonBody, privacy.put);

  app.get(
    '/status/:userId',
    authenticate,
    admit,
    async (req: Request<{ userId: string }>, res: Response) => {
      const userId = parseUserIdParam(req.params.userId);
      // One id of the caller's read budget: a loop of single reads is a batch read spread out.
      callerLimits?.chargeRead(principalOf(req).caller, 1);
      res.json(statusRow(userId, await inTime(res, statuses.read(userId, viewerOf(req)))));
    },
  );

  app.use('/status', authenticate);

  // Probes, metrics, the contract and the demo are public. Mounted after the /status routes, which
  // then match without walking these layers first (the single-heartbeat path is the hot one).
  app.use(
    opsRoutes({
      db,
      nodes: databaseNodes,
      registry: config.METRICS_PORT === undefined ? registry : undefined,
    }),
  );
  app.get('/openapi.json', (_req, res) => {
    res.json(openApiDocument);
  });
  app.get('/', serviceIndex(security.document, config.DEMO_PAGE));
  if (config.DEMO_PAGE) {
    const demo = demoRoutes(security.document);
    if (!demo.built) {
      logger.warn('the demo page is not served: build the client library (npm run build:client)');
    }
    app.use(demo.router);
  }
  app.use(notFound);
  app.use(
    createErrorHandler((error) => {
      if (error.code === 'settings_missing') settingsMissingLog?.refused();
    }),
  );
  return app;
}
