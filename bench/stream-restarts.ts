/**
 * `npm run bench:stream-restarts`: do streams fed by the change log stay right across an API
 * restart and a PostgreSQL restart?
 *
 * Runs on its own embedded PostgreSQL (it restarts it; DATABASE_URL is not used). 2 API processes
 * serve BENCH_STREAMS streams watching BENCH_WATCH ids each, out of BENCH_USERS users; a driver
 * keeps BENCH_ONLINE users beating and, every round, brings some online, takes some offline
 * explicitly and lets some expire by the threshold. Midway, one API process is stopped (SIGTERM)
 * and started again; later PostgreSQL is stopped (fast shutdown) and started again. A stream that
 * ends reconnects, like the client library, and takes its fresh snapshot as its view.
 *
 * Each stream keeps its view (snapshot, then each change). Counted: changes that did not change
 * the view (told twice), and, once everything is quiet, watched ids whose view differs from the
 * database (a change lost). Both must be 0. Writes bench/results/stream-restarts.json.
 */
import http from 'node:http';
import os from 'node:os';
import { mkdtempSync, chmodSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { sql } from 'kysely';
import { freePort, startEmbeddedPostgres, type EmbeddedServer } from '../dev/embedded-postgres.ts';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { recordHeartbeats, setOffline } from '../lib/store/pulse-store.ts';
import {
  fillTable,
  openBenchDatabase,
  requireOpenFiles,
  sample,
  sleep,
  startApi,
  type ApiProcess,
} from './support.ts';

const streamCount = Number(process.env.BENCH_STREAMS ?? 1_000);
const watchCount = Number(process.env.BENCH_WATCH ?? 50);
const users = Number(process.env.BENCH_USERS ?? 200_000);
const onlineCount = Number(process.env.BENCH_ONLINE ?? 20_000);
const changesPerRound = Number(process.env.BENCH_CHANGES ?? 300);
const rounds = 9;
const roundMs = 5_000;
const thresholdSeconds = 10;
const restartApiAtRound = 2;
const restartDatabaseAtRound = 5;
const resultsFile =
  process.env.BENCH_RESULTS ?? new URL('./results/stream-restarts.json', import.meta.url);

/** One client's stream: its view of the watched ids, kept across reconnections. */
interface Watcher {
  watch: number[];
  view: Map<number, boolean>;
  request?: http.ClientRequest;
  connected: boolean;
}

interface Counts {
  snapshots: number;
  reconnects: number;
  changes: number;
  toldTwice: number;
  driverWritesFailed: number;
}

async function main(): Promise<void> {
  requireOpenFiles(streamCount + 1_000);
  const parent = mkdtempSync(path.join(os.tmpdir(), 'pulse-bench-restarts-'));
  chmodSync(parent, 0o755); // the server runs as the unprivileged postgres user
  const port = await freePort();
  const startServer = () =>
    startEmbeddedPostgres({ dataDir: path.join(parent, 'pg'), port, persistent: true });
  let server: EmbeddedServer = await startServer();
  const bench = await openBenchDatabase('pulse_bench_restarts', server.url);
  const driver = openDatabase({
    connectionString: bench.url,
    poolMax: 4,
    applicationName: 'pulse-bench-driver',
    logger: createLogger('pulse-bench', 'silent'),
  });
  const counts: Counts = {
    snapshots: 0,
    reconnects: 0,
    changes: 0,
    toldTwice: 0,
    driverWritesFailed: 0,
  };
  const apis: Array<ApiProcess | undefined> = [];
  const watchers: Watcher[] = [];
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  let closing = false;
  let refresher: NodeJS.Timeout | undefined;
  const env = {
    STREAM_MAX_OPEN: String(streamCount + 100),
    ONLINE_THRESHOLD_SECONDS: String(thresholdSeconds),
    STREAM_CHANGE_SOURCE: 'log',
    STREAM_RETRY_MS: '500',
  };
  try {
    console.error(`bench:stream-restarts: ${users} users, ${onlineCount} online`);
    await fillTable(bench, users, 3_600);
    await bench.query(`UPDATE pulse_settings SET online_threshold_seconds = $1`, [
      thresholdSeconds,
    ]);
    const online = new Set(
      sample(
        Array.from({ length: users }, (_, i) => i + 1),
        onlineCount,
      ),
    );
    await recordHeartbeats(driver.db, [...online]);
    // The online users' clients beat every 3 s; a failed beat (database down) is a missed beat.
    refresher = setInterval(() => {
      void bench
        .query(`UPDATE pulse SET last_hb = now() WHERE user_id = ANY($1::bigint[])`, [[...online]])
        .catch(() => (counts.driverWritesFailed += 1));
    }, 3_000);
    for (let i = 0; i < 2; i += 1) apis.push(await startApi(bench.url, env));

    const offlinePool = sample(
      Array.from({ length: users }, (_, i) => i + 1).filter((id) => !online.has(id)),
      onlineCount,
    );
    const watchable = [...online, ...offlinePool];
    let nextApi = 0;
    const connect = (watcher: Watcher): void => {
      if (closing) return;
      const live = apis.filter((api): api is ApiProcess => api !== undefined);
      const api = live[nextApi++ % Math.max(1, live.length)];
      const retry = () => {
        watcher.connected = false;
        if (closing) return;
        counts.reconnects += 1;
        setTimeout(() => connect(watcher), 250 + Math.random() * 500).unref();
      };
      if (!api) return retry();
      const req = http.get(
        `${api.url}/status/stream?watch=${watcher.watch.join(',')}`,
        { agent },
        (res) => {
          if (res.statusCode !== 200) {
            res.resume();
            return retry();
          }
          res.setEncoding('utf8');
          let buffer = '';
          res.on('data', (chunk: string) => {
            buffer += chunk;
            let end: number;
            while ((end = buffer.indexOf('\n\n')) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              const data = block.slice(block.indexOf('data: ') + 6);
              if (block.startsWith('event: snapshot')) {
                const rows = JSON.parse(data) as Array<{ user_id: number; is_online: boolean }>;
                watcher.view = new Map(rows.map((row) => [row.user_id, row.is_online]));
                watcher.connected = true;
                counts.snapshots += 1;
              } else if (block.startsWith('event: change')) {
                const row = JSON.parse(data) as { user_id: number; is_online: boolean };
                counts.changes += 1;
                if (watcher.view.get(row.user_id) === row.is_online) counts.toldTwice += 1;
                watcher.view.set(row.user_id, row.is_online);
              }
            }
          });
          res.on('end', retry);
          res.on('error', () => undefined);
        },
      );
      req.on('error', retry);
      watcher.request = req;
    };
    for (let i = 0; i < streamCount; i += 1) {
      const watcher: Watcher = {
        watch: sample(watchable, watchCount),
        view: new Map(),
        connected: false,
      };
      watchers.push(watcher);
      connect(watcher);
      if (i % 50 === 49) await sleep(20);
    }
    while (watchers.some((w) => !w.connected)) await sleep(200);
    counts.reconnects = 0;

    for (let round = 0; round < rounds; round += 1) {
      const roundStart = Date.now();
      if (round === restartApiAtRound) {
        console.error('bench:stream-restarts: restarting API process 0');
        const stopping = apis[0]!;
        apis[0] = undefined;
        await stopping.stop();
        apis[0] = await startApi(bench.url, env);
      }
      if (round === restartDatabaseAtRound) {
        console.error('bench:stream-restarts: restarting PostgreSQL');
        await server.stop();
        await sleep(1_000);
        server = await startServer();
      }
      const third = Math.floor(changesPerRound / 3);
      const comingOn = sample(
        offlinePool.filter((id) => !online.has(id)),
        third,
      );
      const picked = sample([...online], 2 * third);
      try {
        await recordHeartbeats(driver.db, comingOn);
        for (const id of comingOn) online.add(id);
        await setOffline(driver.db, picked.slice(0, third));
        for (const id of picked) online.delete(id); // the second third just stops beating
      } catch {
        counts.driverWritesFailed += 1;
      }
      await sleep(roundMs - (Date.now() - roundStart));
    }
    // Quiet: the last crossings are logged within a threshold, then read and delivered.
    await sleep(thresholdSeconds * 1000 + 5_000);
    while (watchers.some((w) => !w.connected)) await sleep(200);
    await sleep(2_000);

    const watched = [...new Set(watchers.flatMap((w) => w.watch))];
    const { rows } = await sql<{ user_id: string }>`
      SELECT user_id FROM pulse
      WHERE user_id = ANY(${watched}::bigint[])
        AND last_hb > now() - make_interval(secs => ${thresholdSeconds})`.execute(driver.db);
    const truth = new Set(rows.map((row) => Number(row.user_id)));
    let wrong = 0;
    for (const watcher of watchers) {
      for (const id of watcher.watch) {
        if ((watcher.view.get(id) ?? false) !== truth.has(id)) wrong += 1;
      }
    }
    const result = {
      measuredAt: new Date().toISOString(),
      machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'CPU'}`,
      sizes: { streamCount, watchCount, users, onlineCount, changesPerRound, rounds, roundMs },
      thresholdSeconds,
      restarts: { apiAtRound: restartApiAtRound, databaseAtRound: restartDatabaseAtRound },
      ...counts,
      watchedPairs: watchers.length * watchCount,
      viewsWrongAtTheEnd: wrong,
    };
    console.log(JSON.stringify(result, null, 2));
    writeFileSync(resultsFile, `${JSON.stringify(result, null, 2)}\n`);
    if (wrong > 0 || counts.toldTwice > 0) process.exitCode = 1;
  } finally {
    closing = true;
    clearInterval(refresher);
    for (const watcher of watchers) watcher.request?.destroy();
    agent.destroy();
    for (const api of apis) await api?.stop();
    await driver.close();
    await bench.close();
    await server.stop();
    rmSync(parent, { recursive: true, force: true });
  }
}

await main();
