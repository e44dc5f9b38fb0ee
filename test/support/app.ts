import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { buildApp } from '../../api/app.ts';
import { createHeartbeatWriter } from '../../api/heartbeat-writer-factory.ts';
import type { HeartbeatWriter } from '../../api/heartbeat-writer.ts';
import { loadApiConfig, type ApiConfig } from '../../lib/config.ts';
import type { Logger } from '../../lib/logger.ts';
import type { Executor } from '../../lib/pulse-store.ts';
import { silentLogger } from './database.ts';

export interface TestApp {
  baseUrl: string;
  config: Readonly<ApiConfig>;
  heartbeats: HeartbeatWriter;
  /** Stops listening and flushes queued heartbeats (not the database: the caller owns it). */
  close(): Promise<void>;
  post(path: string, body: unknown, headers?: Record<string, string>): Promise<Response>;
  get(path: string, headers?: Record<string, string>): Promise<Response>;
}

/** The real app on a random port, configured as the API would be from `env`. */
export async function startTestApp(
  db: Executor,
  databaseUrl: string,
  env: Record<string, string> = {},
  logger: Logger = silentLogger,
): Promise<TestApp> {
  const config = loadApiConfig({ DATABASE_URL: databaseUrl, ...env });
  const heartbeats = createHeartbeatWriter(db, config);
  const app = buildApp({ db, heartbeats, logger, config });
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    baseUrl,
    config,
    heartbeats,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
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
