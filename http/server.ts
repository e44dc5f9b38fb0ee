import { once } from 'node:events';
import type { Server } from 'node:http';
import type { RequestListener } from 'node:http';
import { createServer } from 'node:http';

export interface RunningServer {
  server: Server;
  port: number;
  /**
   * Stops accepting connections, lets requests in flight finish, and closes keep-alive
   * connections as they go idle (clients are told `Connection: close`). Idempotent.
   */
  stop(): Promise<void>;
}

export async function listen(
  handler: RequestListener,
  port: number,
  host: string,
): Promise<RunningServer> {
  const server = createServer(handler);
  let stopping: Promise<void> | undefined;
  server.on('request', (_req, res) => {
    if (stopping && !res.headersSent) res.setHeader('Connection', 'close');
  });
  server.listen(port, host);
  await once(server, 'listening');
  const address = server.address();
  return {
    server,
    port: typeof address === 'object' && address ? address.port : port,
    stop() {
      stopping ??= new Promise<void>((resolve) => {
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
