import { Router } from 'express';
import type { Kysely } from 'kysely';
import type { Registry } from 'prom-client';
import { checkReadiness } from '../lib/store/readiness.ts';
import { errorBody } from './error-catalogue.ts';

/**
 * GET /healthz (the process is alive), /readyz (the database answers and the schema is migrated),
 * /metrics (Prometheus text). Served by the sweeper on METRICS_PORT, by the API on its port and,
 * when METRICS_PORT is set for it, on that port instead (/metrics leaves the public port).
 */
export function opsRoutes<DB>({
  db,
  registry,
}: {
  db: Kysely<DB>;
  /** Undefined: no /metrics here (the API with its own metrics listener). */
  registry: Registry | undefined;
}): Router {
  const router = Router();
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  router.get('/readyz', async (_req, res) => {
    const readiness = await checkReadiness(db);
    if (readiness.ready) res.json({ status: 'ready' });
    else res.status(503).set('Retry-After', '1').json(errorBody('not_ready', readiness.reason));
  });
  if (registry) {
    router.get('/metrics', async (_req, res) => {
      res.type(registry.contentType).send(await registry.metrics());
    });
  }
  return router;
}
