/**
 * A small TCP proxy for fault tests: put it between a client (a pg pool, an HTTP client) and a
 * server, then drop every connection and refuse new ones for a while, as a restarting database or
 * a network cut would, without touching the real server.
 *
 *   const proxy = await startTcpProxy({ targetHost: '127.0.0.1', targetPort: 5432 });
 *   const url = proxy.rewriteUrl(databaseUrl);   // same URL, host:port of the proxy
 *   await proxy.outage(1000);                    // drop all, refuse for 1 s, accept again
 */
import { once } from 'node:events';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';

export interface TcpProxyOptions {
  targetHost: string;
  targetPort: number;
  /** Where the proxy listens; 127.0.0.1 and a free port unless given. */
  listenHost?: string;
  listenPort?: number;
}

export interface TcpProxy {
  readonly host: string;
  readonly port: number;
  /** Open client connections right now. */
  readonly connectionCount: number;
  /** Connections accepted and forwarded since the start. */
  readonly acceptedCount: number;
  /** `url` with its host and port replaced by the proxy's. */
  rewriteUrl(url: string): string;
  /** Resets every open connection (both sides). */
  dropConnections(): void;
  /** From now on, new connections are reset as soon as they arrive. */
  refuse(): void;
  /** Forward new connections again. */
  accept(): void;
  /** dropConnections + refuse for `ms` milliseconds, then accept. */
  outage(ms: number): Promise<void>;
  /** Stops listening and resets every connection. */
  close(): Promise<void>;
}

export async function startTcpProxy(options: TcpProxyOptions): Promise<TcpProxy> {
  const pairs = new Set<[Socket, Socket]>();
  let refusing = false;
  let accepted = 0;

  const server = createServer((client) => {
    if (refusing) {
      client.resetAndDestroy();
      return;
    }
    accepted += 1;
    const upstream = createConnection({ host: options.targetHost, port: options.targetPort });
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.listen(options.listenPort ?? 0, options.listenHost ?? '127.0.0.1');
  await once(server, 'listening');
  const address = server.address() as AddressInfo;

  const dropConnections = () => {
    for (const [client, upstream] of pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    pairs.clear();
  };

  return {
    host: address.address,
    port: address.port,
    get connectionCount() {
      return pairs.size;
    },
    get acceptedCount() {
      return accepted;
    },
    rewriteUrl(url) {
      const parsed = new URL(url);
      parsed.hostname = address.address;
      parsed.port = String(address.port);
      return parsed.toString();
    },
    dropConnections,
    refuse() {
      refusing = true;
    },
    accept() {
      refusing = false;
    },
    async outage(ms) {
      refusing = true;
      dropConnections();
      await new Promise((resolve) => setTimeout(resolve, ms));
      refusing = false;
    },
    async close() {
      refusing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      dropConnections();
      await closed;
    },
  };
}
