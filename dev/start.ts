/**
 * npm start: the whole stack on one machine. Uses DATABASE_URL when set; otherwise boots an
 * embedded PostgreSQL whose data lives in .pulse-data/. Applies migrations, then runs the API and
 * the sweeper as two child processes. Ctrl-C or SIGTERM stops all of it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadApiConfig, loadStartConfig } from '../lib/config.ts';
import { openDatabase } from '../lib/db.ts';
import { startEmbeddedPostgres, type EmbeddedServer } from './embedded-postgres.ts';
import { runMain } from '../lib/entry.ts';
import { createLogger } from '../lib/logger.ts';
import { migrateToLatest } from '../lib/migrator.ts';
import { redactConnectionString } from '../lib/redact.ts';

const EMBEDDED_DATABASE = 'pulse';
const repoRoot = fileURLToPath(new URL('..', import.meta.url));

async function ensureDatabase(serverUrl: string, name: string): Promise<string> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (!rowCount) await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`);
  } finally {
    await client.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

function startChild(script: string, env: NodeJS.ProcessEnv): ChildProcess {
  const file = fileURLToPath(new URL(script, import.meta.url));
  // Own process group: a terminal's Ctrl-C reaches only this parent, which stops the children
  // in order (otherwise they would get the SIGINT and then our SIGTERM, a "second signal").
  return spawn(process.execPath, ['--import', 'tsx', file], {
    env,
    stdio: 'inherit',
    detached: true,
  });
}

runMain(async () => {
  const startConfig = loadStartConfig(process.env);
  let embedded: EmbeddedServer | undefined;
  let databaseUrl = startConfig.DATABASE_URL;
  if (!databaseUrl) {
    const port = startConfig.EMBEDDED_PG_PORT;
    // A relative folder is relative to the repository, wherever npm start is run from.
    const dataDir = path.resolve(repoRoot, startConfig.EMBEDDED_PG_DATA_DIR);
    console.log(`starting embedded PostgreSQL on 127.0.0.1:${port} (data in ${dataDir})`);
    embedded = await startEmbeddedPostgres({ dataDir, port, persistent: true });
    databaseUrl = await ensureDatabase(embedded.url, EMBEDDED_DATABASE);
  }
  const env = { ...process.env, DATABASE_URL: databaseUrl };
  const config = loadApiConfig(env);

  const database = openDatabase({
    connectionString: databaseUrl,
    poolMax: 1,
    applicationName: 'pulse-start',
    logger: createLogger('pulse-start', config.LOG_LEVEL),
  });
  try {
    const applied = await migrateToLatest(database.db);
    console.log(applied.length ? `migrations applied: ${applied.join(', ')}` : 'schema up to date');
  } finally {
    await database.close();
  }

  const children = [startChild('../api/main.ts', env), startChild('../sweeper/main.ts', env)];
  console.log(`Pulse API:  http://${config.HOST}:${config.PORT}`);
  // A user-supplied URL is shown without its password; the embedded server's local, fixed
  // credentials are shown in full so the line can be pasted into psql.
  const shownUrl = embedded ? databaseUrl : redactConnectionString(databaseUrl);
  console.log(`Database:   ${shownUrl}`);

  let stopping = false;
  const stopAll = async (exitCode: number) => {
    if (stopping) return;
    stopping = true;
    const exits = children
      .filter((child) => child.exitCode === null && child.signalCode === null)
      .map((child) => {
        child.kill('SIGTERM');
        return once(child, 'exit');
      });
    await Promise.all(exits);
    await embedded?.stop();
    process.exit(exitCode);
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => void stopAll(0));
  }
  for (const child of children) {
    child.on('exit', (code) => {
      if (stopping) return;
      console.error(`a child process exited unexpectedly (code ${code}); stopping everything`);
      void stopAll(1);
    });
  }
});
