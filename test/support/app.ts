import { assembleApi } from '../../api/assemble.ts';
import type { Admission } from '../../api/edge/admission.ts';
import type { HeartbeatWriter } from '../../api/write/heartbeat-writer.ts';
import { loadApiConfig, type ApiConfig } from '../../lib/infra/config.ts';
import type { DatabaseHandle } from '../../lib/infra/db.ts';
import { httpLimitsOf, listen, type RunningServer } from '../../http/server.ts';
import { updatePresenceSettings } from '../../lib/store/pulse-store.ts';
import type { Logger } from '../../lib/infra/logger.ts';
import { silentLogger } from './database.ts';
import { checkCitusNode } from '../../lib/citus/citus-node.ts';

export interface TestApp {
  baseUrl: string;
  config: Readonly<ApiConfig>;
  heartbeats: HeartbeatWriter;
  admission: Admission;
  server: RunningServer['server'];
  /** Stops listening and flushes queued heartbeats (not the database: the caller owns it). */
  close(): Promise<void>;
  post(path: string, body: unknown, headers?: Record<string, string>): Promise<Response>;
  get(path: string, headers?: Record<string, string>): Promise<Response>;
}

/** The real app on a random port, configured as the API would be from `env`. */
export async function startTestApp(
  database: DatabaseHandle & { url: string },
  env: Record<string, string> = {},
  logger: Logger = silentLogger,
  /** 0: a free port; a given one to restart an API where its clients expect it. */
  port = 0,
): Promise<TestApp> {
  const config = loadApiConfig({ DATABASE_URL: database.url, ...env });
  // As `npm run migrate` would with the same variable: the threshold in force is the database's.
  await updatePresenceSettings(database.db, {
    onlineThresholdSeconds: config.ONLINE_THRESHOLD_SECONDS,
  });
  const citusNode = await checkCitusNode(database.db, logger);
  const { app, heartbeats, admission, streams } = assembleApi(database, config, logger, {
    citusNode,
  });
  const server = await listen(app, port, '127.0.0.1', httpLimitsOf(config));
  const baseUrl = `http://127.0.0.1:${server.port}`;
  return {
    baseUrl,
    config,
    heartbeats,
    admission,
    server: server.server,
    async close() {
      await streams.close();
      admission.close();
      await server.stop();
      await heartbeats.close();
    },
    post: (path, body, headers = {}) =>
      fetch(baseUrl + path, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      }),
    get: (path, headers = {}) => fetch(baseUrl + path, { headers }),
  };
}
