/**
 * The embedded PostgreSQL of `npm start`, as a process of its own. `npm start` spawns it in its
 * own process group, so a terminal's Ctrl-C never reaches the database server directly: the
 * supervisor stops it last, after the API and the sweeper, by sending it { stop: true }.
 *
 * Tells its parent { url } once the `pulse` database accepts connections. Exits 0 once the server
 * stopped, 1 (with the reason on stderr) when it could not start or stop.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { loadStartConfig } from '../lib/infra/config.ts';
import { runMain } from '../lib/infra/entry.ts';
import { startEmbeddedPostgres } from './embedded-postgres.ts';

const DATABASE = 'pulse';
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

runMain(async () => {
  if (!process.send) throw new Error('dev/embedded-database.ts is started by npm start');
  const config = loadStartConfig(process.env);
  // A relative folder is relative to the repository, wherever npm start is run from.
  const dataDir = path.resolve(repoRoot, config.EMBEDDED_PG_DATA_DIR);
  const server = await startEmbeddedPostgres({
    dataDir,
    port: config.EMBEDDED_PG_PORT,
    persistent: true,
    onNotice: (line) => console.log(line),
  });
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(
          `embedded PostgreSQL did not stop: ${error instanceof Error ? error.message : String(error)}`,
        );
        process.exit(1);
      },
    );
  };
  // { stop: true } from npm start, or npm start gone without saying so.
  process.on('message', (message) => {
    if ((message as { stop?: unknown } | null)?.stop === true) stop();
  });
  process.on('disconnect', stop);
  process.send({ url: await ensureDatabase(server.url, DATABASE) });
});
