import express from 'express';
import type { Kysely } from 'kysely';
import type { Registry } from 'prom-client';
import { listen, type RunningServer } from './server.ts';
import { opsRoutes } from './ops-routes.ts';
import { errorBody } from './error-catalogue.ts';

/** The sweeper's small HTTP port: /healthz, /readyz and /metrics for the orchestrator. */
export function startOpsServer<DB>(options: {
  db: Kysely<DB>;
  /** The API's pools per node (DATABASE_URL listing several): /readyz checks each. */
  nodes?: ReadonlyArray<{ name: string; db: Kysely<DB> }>;
  registry: Registry;
  host: string;
  port: number;
}): Promise<RunningServer> {
  const app = express();
  app.disable('x-powered-by');
  app.use(opsRoutes({ db: options.db, nodes: options.nodes, registry: options.registry }));
  app.use((req, res) => {
    res.status(404).json(errorBody('not_found', `no route for ${req.method} ${req.path}`));
  });
  return listen(app, options.port, options.host);
}
