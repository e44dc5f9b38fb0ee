import { once } from 'node:events';
import type { Server, ServerResponse } from 'node:http';
import { createServer } from 'node:http';
import type { ApiConfig } from '../lib/infra/config.ts';
import { expressBornConstructors, type ExpressApp } from './express-prototypes.ts';

export interface RunningServer {
  server: Server;
  port: number;
  /**
   * Stops accepting connections, lets requests in flight finish, and closes keep-alive
   * connections as they go idle (clients are told `Connection: close`). Idempotent.
   */
  stop(): Promise<void>;
}

/**
 * Limits for an API whose requests take milliseconds (docs/overload.md). Node's defaults (5 min
 * to send a request, no idle limit, no connection cap) let a client that sends its body a byte at
 * a time hold a connection for minutes.
 */
export interface HttpServerLimits {
  /** Longest a client may take to send a whole request, headers and body (answered 408). */
  requestTimeoutMs: number;
  /** Longest a client may take to send the request headers. At most requestTimeoutMs. */
  headersTimeoutMs: number;
  /** How long an idle keep-alive connection stays open between requests. */
  keepAliveTimeoutMs: number;
  /**
   * A connection with no traffic either way for this long is closed (0: never). A long-lived
   * response (a stream) opts out with `req.socket.setTimeout(0)`, or writes more often.
   */
  socketIdleTimeoutMs: number;
  /** Connections open at once; more are closed as soon as they are accepted. */
  maxConnections: number;
}

export const DEFAULT_HTTP_LIMITS: Readonly<HttpServerLimits> = Object.freeze({
  requestTimeoutMs: 10_000,
  headersTimeoutMs: 5_000,
  keepAliveTimeoutMs: 5_000,
  socketIdleTimeoutMs: 30_000,
  maxConnections: 10_000,
});

/** The HTTP server's limits as configured. */
export function httpLimitsOf(config: ApiConfig): HttpServerLimits {
  return {
    requestTimeoutMs: config.HTTP_REQUEST_TIMEOUT_MS,
    headersTimeoutMs: config.HTTP_HEADERS_TIMEOUT_MS,
    keepAliveTimeoutMs: config.HTTP_KEEP_ALIVE_TIMEOUT_MS,
    socketIdleTimeoutMs: config.HTTP_SOCKET_IDLE_TIMEOUT_MS,
    maxConnections: config.HTTP_MAX_CONNECTIONS,
  };
}

/**
 * Connections the kernel completes before the process accepts them (Linux caps it at
 * net.core.somaxconn). Node's default, 511, overflowed when 1,000 clients connected at once while
 * the event loop was busy: the dropped ones retried their SYN after 1, 3 and 7 s, and their first
 * request took that long.
 */
const LISTEN_BACKLOG = 4096;

export async function listen(
  app: ExpressApp,
  port: number,
  host: string,
  limits: Readonly<HttpServerLimits> = DEFAULT_HTTP_LIMITS,
): Promise<RunningServer> {
  const server = createServer(
    {
      ...expressBornConstructors(app),
      requestTimeout: limits.requestTimeoutMs,
      headersTimeout: limits.headersTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      // Node checks the two timeouts above only this often (30 s by default).
      connectionsCheckingInterval: Math.max(
        100,
        Math.min(1_000, Math.floor(limits.headersTimeoutMs / 4)),
      ),
    },
    app,
  );
  server.setTimeout(limits.socketIdleTimeoutMs);
  server.maxConnections = limits.maxConnections;
  let stopping: Promise<void> | undefined;
  server.listen({ port, host, backlog: LISTEN_BACKLOG });
  await once(server, 'listening');
  const address = server.address();
  return {
    server,
    port: typeof address === 'object' && address ? address.port : port,
    stop() {
      stopping ??= new Promise<void>((resolve) => {
        // Added only now (a second 'request' listener costs every request a little), and before
        // the app's, so an answer sent at once also carries it.
        server.prependListener('request', (_req, res: ServerResponse) => {
          if (!res.headersSent) res.setHeader('Connection', 'close');
        });
        server.close(() => resolve());
        server.closeIdleConnections();
        // A keep-alive connection is idle between requests: close each as soon as it is.
        const sweep = setInterval(() => server.closeIdleConnections(), 50);
        server.once('close', () => clearInterval(sweep));
      });
      return stopping;
    },
  };
}
