/**
 * npm run bench:request-cost: the API's CPU per single heartbeat against the bare Express handler's
 * (bench/bare-express.ts), in paired rounds, so the ratio holds on a noisy machine
 * (docs/request-cost.md).
 *
 *   BENCH_ROUNDS=3 BENCH_DURATION_SECONDS=8 npm run bench:request-cost
 *   BENCH_PREVIOUS_API=/tmp/pulse-prev/dist/api/main.js npm run bench:request-cost
 *
 * Each round starts, warms up (BENCH_WARMUP_SECONDS) and measures in turn the bare handler (started
 * with `app.listen`, and again through Pulse's HTTP server: see bench/bare-express.ts), this
 * build (dist/api/main.js, compiled by the npm script) and, when BENCH_PREVIOUS_API names another
 * build's compiled entry point, that build; the order rotates from round to round. CPU per request
 * is the process's CPU time during the measured window (from /proc) divided by the requests
 * answered, as in `npm run bench`. The API runs as shipped (group commit, LOG_LEVEL=warn as in
 * `npm run bench`).
 */
import { fileURLToPath } from 'node:url';
import {
  fillTable,
  openBenchDatabase,
  prepare,
  randomUserId,
  runLoad,
  startApi,
  startBareExpress,
  type ApiProcess,
  type LoadResult,
} from './support.ts';

const env = process.env;
const rows = Number(env.BENCH_ROWS ?? 100_000);
const durationSeconds = Number(env.BENCH_DURATION_SECONDS ?? 8);
const warmupSeconds = Number(env.BENCH_WARMUP_SECONDS ?? 3);
const rounds = Number(env.BENCH_ROUNDS ?? 3);
const connections = Number(env.BENCH_CONNECTIONS ?? 32);
const previousEntry = env.BENCH_PREVIOUS_API;
const thisEntry = fileURLToPath(new URL('../dist/api/main.js', import.meta.url));

interface Contender {
  name: string;
  start(): Promise<ApiProcess>;
}

const fmt = (n: number) => n.toFixed(0);

async function main(): Promise<void> {
  const db = await openBenchDatabase('pulse_bench_request_cost');
  try {
    await fillTable(db, rows);
    const singles = prepare(5000, () => ({
      method: 'POST',
      path: '/status/update',
      body: JSON.stringify({ user_id: randomUserId(rows) }),
    }));
    const api = (entry: string) => () => startApi(db.url, { BATCH_MAX_IDS: '1000' }, [entry]);
    const contenders: Contender[] = [
      { name: 'bare', start: () => startBareExpress() },
      { name: 'barePulse', start: () => startBareExpress('pulse') },
      { name: 'this', start: api(thisEntry) },
      ...(previousEntry ? [{ name: 'previous', start: api(previousEntry) }] : []),
    ];
    const table: Array<Record<string, LoadResult>> = [];
    for (let round = 0; round < rounds; round += 1) {
      const results: Record<string, LoadResult> = {};
      for (let turn = 0; turn < contenders.length; turn += 1) {
        const contender = contenders[(round + turn) % contenders.length]!;
        const server = await contender.start();
        try {
          const load = (seconds: number) =>
            runLoad({
              url: server.url,
              requests: singles,
              connections,
              durationSeconds: seconds,
              api: server,
            });
          if (warmupSeconds > 0) await load(warmupSeconds);
          results[contender.name] = await load(durationSeconds);
        } finally {
          await server.stop();
        }
        const r = results[contender.name]!;
        console.error(
          `round ${round + 1} ${contender.name}: ${fmt(r.cpuUsPerRequest)} us/request, ` +
            `${fmt(r.requestsPerSecond)} requests/s, ${r.errors + r.non2xx} failed`,
        );
      }
      table.push(results);
    }

    const header = previousEntry
      ? "| round | bare handler | bare, Pulse's server | Pulse, this build | Pulse, previous | this / bare | this / bare on Pulse's server | previous / bare |\n|---|---|---|---|---|---|---|---|"
      : "| round | bare handler | bare, Pulse's server | Pulse, this build | this / bare | this / bare on Pulse's server |\n|---|---|---|---|---|---|";
    const lines = table.map((r, i) => {
      const bare = r.bare!.cpuUsPerRequest;
      const barePulse = r.barePulse!.cpuUsPerRequest;
      const cells = [`${i + 1}`, `${fmt(bare)} us`, `${fmt(barePulse)} us`];
      cells.push(`${fmt(r.this!.cpuUsPerRequest)} us`);
      if (previousEntry) cells.push(`${fmt(r.previous!.cpuUsPerRequest)} us`);
      cells.push(`${(r.this!.cpuUsPerRequest / bare).toFixed(2)}x`);
      cells.push(`${(r.this!.cpuUsPerRequest / barePulse).toFixed(2)}x`);
      if (previousEntry) cells.push(`${(r.previous!.cpuUsPerRequest / bare).toFixed(2)}x`);
      return `| ${cells.join(' | ')} |`;
    });
    console.log(`
API CPU per single heartbeat (${connections} connections, ${warmupSeconds} s warm-up then ${durationSeconds} s, ${rows} rows; target <= 1.25x the bare handler)

${header}
${lines.join('\n')}
`);
  } finally {
    await db.close();
  }
}

await main();
