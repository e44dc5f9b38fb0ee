import { Router } from 'express';
import type { Kysely } from 'kysely';
import type { Registry } from 'prom-client';
import { checkNodesReadiness, checkReadiness } from '../lib/store/readiness.ts';
import { errorBody } from './error-catalogue.ts';

/**
 * GET /healthz (the process is alive), /readyz (the database answers and the schema is migrated),
 * /metrics (Prometheus text). Served by the sweeper on METRICS_PORT, by the API on its port and,
 * when METRICS_PORT is set for it, on that port instead (/metrics leaves the public port).
 */
export function opsRoutes<DB>({
  db,
  nodes = [],
  registry,
}: {
  db: Kysely<DB>;
  /** The API's pools per node when DATABASE_URL lists several: /readyz checks each. */
  nodes?: ReadonlyArray<{ name: string; db: Kysely<DB> }> | undefined;
  /** Undefined: no /metrics here (the API with its own metrics listener). */
  registry: Registry | undefined;
}): Router {
  const router = Router();
  router.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  router.get('/readyz', async (_req, res) => {
    if (nodes.length > 1) {
      const readiness = await checkNodesReadiness(nodes);
      if (!readiness.ready) {
        res.status(503).set('Retry-After', '1').json(errorBody('not_ready', readiness.reason));
        return;
      }
      res.json({
        status: 'ready',
        nodes: readiness.nodes.map((n) =>
          n.ready
            ? { node: n.node, status: 'ready' }
            : { node: n.node, status: 'not_ready', reason: n.reason },
        ),
      });
      return;
    }
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
