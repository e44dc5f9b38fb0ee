/**
 * npm start: the whole stack on one machine. Uses DATABASE_URL when set; otherwise boots an
 * embedded PostgreSQL whose data lives in .pulse-data/. Applies migrations, then runs the API and
 * the sweeper as child processes. Ctrl-C or SIGTERM stops the API and the sweeper, then the
 * database (dev/supervisor.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { loadApiConfig, loadMigrateConfig, loadStartConfig } from '../lib/infra/config.ts';
import { openDatabase } from '../lib/infra/db.ts';
import { runMain } from '../lib/infra/entry.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { migrateToLatest } from '../lib/store/migrator.ts';
import { updatePresenceSettings } from '../lib/store/pulse-store.ts';
import { redactConnectionString } from '../lib/infra/redact.ts';
import { Supervisor } from './supervisor.ts';
import { firstNodeUrl } from '../lib/infra/database-url.ts';

function startChild(
  script: string,
  env: NodeJS.ProcessEnv,
  { ipc = false, nodeFlags = [] as string[] } = {},
): ChildProcess {
  const file = fileURLToPath(new URL(script, import.meta.url));
  // Own process group (detached): a terminal's Ctrl-C reaches only this parent, which stops the
  // children in order (otherwise each would get the SIGINT at the same moment as this parent).
  return spawn(process.execPath, [...nodeFlags, '--import', 'tsx', file], {
    env,
    stdio: ['ignore', 'inherit', 'inherit', ...(ipc ? (['ipc'] as const) : [])],
    detached: true,
  });
}

/** Starts dev/embedded-database.ts and waits for the URL of its `pulse` database. */
async function startEmbeddedDatabase(supervisor: Supervisor, port: number): Promise<string> {
  console.log(`starting embedded PostgreSQL on 127.0.0.1:${port}`);
  const child = startChild('./embedded-database.ts', process.env, { ipc: true });
  supervisor.setDatabase('embedded PostgreSQL', child, () => {
    if (child.connected) child.send({ stop: true });
    else child.kill('SIGTERM');
  });
  const ready = once(child, 'message') as Promise<[{ url: string }]>;
  // It printed why; the supervisor says it exited and stops the rest.
  const failed = once(child, 'exit').then(async () => process.exit(await supervisor.stopped));
  const [{ url }] = await Promise.race([ready, failed]);
  return url;
}

runMain(async () => {
  const startConfig = loadStartConfig(process.env);
  const supervisor = new Supervisor((line) => console.error(line));
  let stopRequested = false;
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      // tsx relays the terminal's SIGINT too: say it once.
      if (!stopRequested)
        console.log(`${signal}: stopping the API and the sweeper, then the database`);
      stopRequested = true;
      void supervisor.stop(0);
    });
  }
  try {
    const databaseUrl =
      startConfig.DATABASE_URL ??
      (await startEmbeddedDatabase(supervisor, startConfig.EMBEDDED_PG_PORT));
    const env = { ...process.env, DATABASE_URL: databaseUrl };
    const config = loadApiConfig(env);

    const database = openDatabase({
      // Several Citus nodes listed: migrations go to the first, as npm run migrate does.
      connectionString: firstNodeUrl(databaseUrl),
      poolMax: 1,
      applicationName: 'pulse-start',
      logger: createLogger('pulse-start', config.LOG_LEVEL),
    });
    try {
      const applied = await migrateToLatest(database.db);
      console.log(
        applied.length ? `migrations applied: ${applied.join(', ')}` : 'schema up to date',
      );
      // As npm run migrate does: the shared presence rules the API and the sweeper read live.
      const shared = loadMigrateConfig(env);
      await updatePresenceSettings(database.db, {
        onlineThresholdSeconds: shared.ONLINE_THRESHOLD_SECONDS,
        lastSeenEnabled: shared.LAST_SEEN_ENABLED,
        lastSeenRetentionDays: shared.LAST_SEEN_RETENTION_DAYS,
      });
    } finally {
      await database.close();
    }

    supervisor.addService(
      'the API',
      startChild('../api/main.ts', env, { nodeFlags: ['--expose-gc'] }),
    );
    supervisor.addService('the sweeper', startChild('../sweeper/main.ts', env));
    const base = `http://${config.HOST}:${config.PORT}`;
    // The links only once they work: the API answers when its server listens.
    const local = ['0.0.0.0', '::'].includes(config.HOST) ? '127.0.0.1' : config.HOST;
    const probe = `http://${local.includes(':') ? `[${local}]` : local}:${config.PORT}/healthz`;
    if (!(await answers(probe, supervisor))) process.exit(await supervisor.stopped);
    console.log(`Pulse API:  ${base}`);
    if (config.DEMO_PAGE) console.log(`Demo page:  ${base}/demo/`);
    // A user-supplied URL is shown without its password; the embedded server's local, fixed
    // credentials are shown in full so the line can be pasted into psql.
    const shownUrl = startConfig.DATABASE_URL ? redactConnectionString(databaseUrl) : databaseUrl;
    console.log(`Database:   ${shownUrl}`);
    console.log('Ctrl-C stops everything.');
  } catch (error) {
    // Whatever started before the failure stops too (the database last), then runMain reports it.
    await supervisor.stop(1);
    throw error;
  }
  // Runs until a signal, or a child's failure, stops the stack.
  const code = await supervisor.stopped;
  if (code === 0) {
    console.log(
      startConfig.DATABASE_URL
        ? 'stopped: the API and the sweeper (the database in DATABASE_URL keeps running)'
        : 'stopped: the API, the sweeper and the embedded PostgreSQL',
    );
  }
  process.exit(code);
});

/** Polls `url` until it answers (true), or the stack stops first (false). */
async function answers(url: string, supervisor: Supervisor): Promise<boolean> {
  let stopped = false;
  void supervisor.stopped.then(() => (stopped = true));
  while (!stopped) {
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await response.body?.cancel();
      return true;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  return false;
}
