/**
 * npm run bench:visibility: what the operator's visibility rule costs the database (issue 24: with
 * a rule joining a friends table of 10M rows, POST /status/batch of 1,000 ids costs at most 1.5x
 * the database CPU it costs with no rule), and a stream snapshot of 1,000 ids with and without it,
 * in alternating rounds of one run through the compiled API (AUTH_MODE=jwt, one token per viewer).
 *
 *   flock /tmp/pulse-bench.lock npm run bench:visibility
 *   BENCH_USERS=1000000 BENCH_FRIENDS=10 BENCH_IDS=1000 BENCH_REQUESTS=300 BENCH_STREAMS=100
 *   BENCH_ROUNDS=5 BENCH_CONNECTIONS=2
 *
 * `pulse` holds a third of BENCH_USERS online, `pulse_last_seen` another half; `friends` holds
 * BENCH_FRIENDS friends per user on average (1 to 2 x BENCH_FRIENDS - 1, built with
 * generate_series), and the rule is the function docs/security.md shows. Each request's viewer is
 * a random user; its ids are that viewer's friends and random others. Database CPU: the API's
 * backends (application_name pulse-api) and autovacuum, from /proc (the server must run here).
 */
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { randomBytes } from 'node:crypto';
import { SignJWT } from 'jose';
import { Kysely, PostgresDialect, type CompiledQuery } from 'kysely';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import type { Database } from '../lib/store/schema.ts';
import { readPresence } from '../lib/store/pulse-store.ts';
import { watchBackends } from './process-cpu.ts';
import { openBenchDatabase, startApi, type ApiProcess, type BenchDatabase } from './support.ts';

const users = Number(process.env.BENCH_USERS ?? 1_000_000);
const friendsPerUser = Number(process.env.BENCH_FRIENDS ?? 10);
const idsPerRequest = Number(process.env.BENCH_IDS ?? 1_000);
const requestsPerRound = Number(process.env.BENCH_REQUESTS ?? 300);
const streamsPerRound = Number(process.env.BENCH_STREAMS ?? 100);
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 2);
const resultsFile =
  process.env.BENCH_RESULTS ?? new URL('./results/visibility.json', import.meta.url);

/** The rule exactly as docs/security.md shows it. */
export const FRIENDS_RULE = `
  CREATE FUNCTION pulse_visible_users(viewer bigint, targets bigint[])
    RETURNS SETOF bigint LANGUAGE sql STABLE AS $$
      SELECT f.friend_id FROM friends f
      WHERE f.user_id = viewer AND f.friend_id = ANY(targets)
      UNION ALL
      SELECT t FROM unnest(targets) AS t WHERE viewer IS NULL
  $$`;
const DROP_RULE = 'DROP FUNCTION IF EXISTS pulse_visible_users(bigint, bigint[])';

// Friend k of user u is u + k * step (mod users): distinct, never u itself, spread over the ids.
const step = Math.floor(users / (2 * friendsPerUser));
const friendCount = (user: number) => 1 + (user % (2 * friendsPerUser - 1));
const friendsOf = (user: number) =>
  Array.from({ length: friendCount(user) }, (_, k) => 1 + ((user - 1 + (k + 1) * step) % users));
const randomUser = () => 1 + Math.floor(Math.random() * users);

async function fill(bench: BenchDatabase): Promise<void> {
  console.error('bench:visibility: filling pulse, pulse_last_seen and friends');
  // Online for the whole run: the share online must not drain while the rounds run.
  await bench.query('UPDATE pulse_settings SET online_threshold_seconds = 86400 WHERE id = 1');
  await bench.query(
    `INSERT INTO pulse (user_id, last_hb, online_since)
     SELECT g, now(), now() FROM generate_series(1, $1::bigint) g WHERE g % 6 < 2`,
    [users],
  );
  await bench.query(
    `INSERT INTO pulse_last_seen (user_id, last_seen)
     SELECT g, now() - interval '1 day' FROM generate_series(1, $1::bigint) g WHERE g % 6 >= 3`,
    [users],
  );
  await bench.query('CREATE TABLE friends (user_id bigint NOT NULL, friend_id bigint NOT NULL)');
  await bench.query(
    `INSERT INTO friends (user_id, friend_id)
     SELECT u, 1 + (u - 1 + k * $2::bigint) % $1::bigint
     FROM generate_series(1, $1::bigint) u, generate_series(1, 1 + u % ($3::bigint * 2 - 1)) k`,
    [users, step, friendsPerUser],
  );
  await bench.query('ALTER TABLE friends ADD PRIMARY KEY (user_id, friend_id)');
  await bench.query('VACUUM ANALYZE pulse, pulse_last_seen, friends');
}

interface Viewer {
  id: number;
  token: string;
  ids: number[];
}

async function viewers(count: number, secret: string): Promise<Viewer[]> {
  const key = new TextEncoder().encode(secret);
  return Promise.all(
    Array.from({ length: count }, async () => {
      const id = randomUser();
      const ids = new Set(friendsOf(id));
      while (ids.size < idsPerRequest) ids.add(randomUser());
      const token = await new SignJWT({ sub: String(id) })
        .setProtectedHeader({ alg: 'HS256' })
        .setExpirationTime('2h')
        .sign(key);
      return { id, token, ids: [...ids] };
    }),
  );
}

async function batch(api: ApiProcess, viewer: Viewer): Promise<Array<{ is_online: boolean }>> {
  const res = await fetch(`${api.url}/status/batch`, {
    method: 'POST',
    headers: { authorization: `Bearer ${viewer.token}`, 'content-type': 'application/json' },
    body: JSON.stringify(viewer.ids.map((id) => ({ user_id: id }))),
  });
  if (res.status !== 200) throw new Error(`POST /status/batch: ${res.status} ${await res.text()}`);
  return (await res.json()) as Array<{ is_online: boolean }>;
}

/** Opens a stream, waits for its snapshot, closes it. */
async function snapshot(api: ApiProcess, viewer: Viewer): Promise<void> {
  const abort = new AbortController();
  const res = await fetch(`${api.url}/status/stream?watch=${viewer.ids.join(',')}`, {
    headers: { authorization: `Bearer ${viewer.token}` },
    signal: abort.signal,
  });
  if (res.status !== 200) throw new Error(`GET /status/stream: ${res.status}`);
  const decoder = new TextDecoder();
  let text = '';
  try {
    for await (const chunk of res.body!) {
      text += decoder.decode(chunk as Uint8Array, { stream: true });
      if (text.includes('event: snapshot') && text.includes('\n\n', text.indexOf('data:'))) break;
    }
  } finally {
    abort.abort();
  }
}

/** Until the API has noticed the rule appear or go (it reads the catalog once a second). */
async function waitForRule(api: ApiProcess, viewer: Viewer, installed: boolean): Promise<void> {
  // A viewer sees as online exactly its online friends with the rule, and every online id without.
  const friends = new Set(friendsOf(viewer.id));
  const expected = async () => {
    const { rows } = await bench!.query<{ user_id: string }>(
      `SELECT user_id FROM pulse WHERE user_id = ANY($1::bigint[])`,
      [viewer.ids],
    );
    return rows.filter((r) => !installed || friends.has(Number(r.user_id))).length;
  };
  const want = await expected();
  for (let attempt = 0; attempt < 100; attempt += 1) {
    // A dropped rule fails reads until the API notices (docs/security.md): try again.
    const answer = await batch(api, viewer).catch(() => []);
    if (answer.filter((s) => s.is_online).length === want && answer.length > 0) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`the API did not see the rule ${installed ? 'installed' : 'dropped'}`);
}

/** Database CPU per operation, in us, over `count` operations on `connections` connections. */
async function measure(
  count: number,
  operation: (index: number) => Promise<unknown>,
): Promise<number> {
  const watch = watchBackends(bench!, 'pulse-api');
  await watch.start();
  let next = 0;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (next < count) await operation(next++);
    }),
  );
  const cpu = await watch.stop();
  if (!cpu.local) throw new Error('database CPU needs the PostgreSQL server on this machine');
  return ((cpu.backendsSeconds + cpu.autovacuumSeconds) * 1e6) / count;
}

/**
 * EXPLAIN (ANALYZE, BUFFERS) of the very statement POST /status/batch runs for `viewer`
 * (readPresence, captured from Kysely's log rather than copied), with or without the rule.
 */
async function explainBatch(viewer: Viewer, installed: boolean): Promise<string[]> {
  const handle = openDatabase({
    connectionString: bench!.url,
    poolMax: 1,
    applicationName: 'pulse-bench-explain',
    logger: createLogger('pulse-bench', 'warn'),
  });
  let captured: CompiledQuery | undefined;
  // A second Kysely on the same pool, whose log hands over the statement it compiled.
  const db = new Kysely<Database>({
    dialect: new PostgresDialect({ pool: handle.pool }),
    log: (event) => {
      captured ??= event.query;
    },
  });
  try {
    await readPresence(db, viewer.ids, undefined, installed ? { viewer: viewer.id } : undefined);
    const { rows } = await handle.pool.query<{ 'QUERY PLAN': string }>(
      `EXPLAIN (ANALYZE, BUFFERS) ${captured!.sql}`,
      [...captured!.parameters],
    );
    return shortPlan(rows);
  } finally {
    await handle.close();
  }
}

/** The rule's own statement (inlined by the planner when called in FROM), for one viewer. */
async function explainRule(viewer: Viewer): Promise<string[]> {
  const { rows } = await bench!.query<{ 'QUERY PLAN': string }>(
    'EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM pulse_visible_users($1::bigint, $2::bigint[])',
    [viewer.id, viewer.ids],
  );
  return shortPlan(rows);
}

/** Plan lines with the 1,000-id array literals shortened. */
const shortPlan = (rows: Array<{ 'QUERY PLAN': string }>) =>
  rows.map((row) => row['QUERY PLAN'].replace(/'\{[\d,]+\}'/g, "'{...ids}'"));

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
};

let bench: BenchDatabase | undefined;

async function main(): Promise<void> {
  bench = await openBenchDatabase('pulse_bench_visibility');
  const secret = randomBytes(32).toString('base64');
  const results = {
    batch: { none: [] as number[], rule: [] as number[] },
    snapshot: { none: [] as number[], rule: [] as number[] },
  };
  const plans = { none: [] as string[], rule: [] as string[], ruleBody: [] as string[] };
  let api: ApiProcess | undefined;
  try {
    await fill(bench);
    const pool = await viewers(200, secret);
    const probe = pool[0]!;
    api = await startApi(bench.url, {
      AUTH_MODE: 'jwt',
      AUTH_JWT_SECRET: secret,
      ONLINE_THRESHOLD_SECONDS: '86400',
      READ_IDS_PER_SECOND_PER_CALLER: '0',
      STREAM_MAX_OPEN_PER_CALLER: '0',
      // Nothing goes offline during the run: the detector's polls would only add noise.
      OFFLINE_DETECTOR: 'false',
      // Reads fail while a dropped rule is not yet noticed (waitForRule retries): no line each.
      LOG_LEVEL: 'fatal',
    });
    const pick = (index: number) => pool[index % pool.length]!;
    // Warm-up: the tables' pages in shared buffers, the API's code paths compiled.
    for (const installed of [true, false]) {
      await bench.query(installed ? FRIENDS_RULE : DROP_RULE);
      await waitForRule(api, probe, installed);
      await measure(100, (i) => batch(api!, pick(i)));
      await measure(20, (i) => snapshot(api!, pick(i)));
    }
    for (let round = 0; round < rounds; round += 1) {
      console.error(`bench:visibility: round ${round + 1} of ${rounds}`);
      for (const variant of ['none', 'rule'] as const) {
        await bench.query(variant === 'rule' ? FRIENDS_RULE : DROP_RULE);
        await waitForRule(api, probe, variant === 'rule');
        results.batch[variant].push(
          await measure(requestsPerRound, (i) => batch(api!, pick(round * 7 + i))),
        );
        results.snapshot[variant].push(
          await measure(streamsPerRound, (i) => snapshot(api!, pick(round * 11 + i))),
        );
        console.error(
          `  ${variant}: batch ${results.batch[variant].at(-1)!.toFixed(0)} us, snapshot ${results.snapshot[variant].at(-1)!.toFixed(0)} us`,
        );
      }
    }
    for (const variant of ['none', 'rule'] as const) {
      await bench.query(variant === 'rule' ? FRIENDS_RULE : DROP_RULE);
      plans[variant] = await explainBatch(probe, variant === 'rule');
    }
    plans.ruleBody = await explainRule(probe);
  } finally {
    await api?.stop();
    await bench.close();
  }
  const summary = (variant: { none: number[]; rule: number[] }) => ({
    none: median(variant.none),
    rule: median(variant.rule),
    ratio: median(variant.rule) / median(variant.none),
  });
  const batchSummary = summary(results.batch);
  const snapshotSummary = summary(results.snapshot);
  const machine = `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'CPU'}`;
  const postgres = process.env.DATABASE_URL ? 'DATABASE_URL' : 'embedded';
  writeFileSync(
    resultsFile,
    `${JSON.stringify(
      {
        measuredAt: new Date().toISOString(),
        machine,
        postgres,
        sizes: {
          users,
          friendsPerUser,
          friendsRows: users * friendsPerUser,
          idsPerRequest,
          requestsPerRound,
          streamsPerRound,
          rounds,
          connections,
        },
        dbCpuUsPerRequest: results,
        median: { batch: batchSummary, snapshot: snapshotSummary },
        batchPlan: plans,
      },
      null,
      2,
    )}\n`,
  );
  const row = (name: string, values: number[], value: number) =>
    `| ${name} | ${values.map((v) => v.toFixed(0)).join(', ')} us | ${value.toFixed(0)} us |`;
  console.log(`
Visibility rule: database CPU per request (${machine}, PostgreSQL: ${postgres})
${users.toLocaleString('en-US')} users, friends ${(users * friendsPerUser).toLocaleString('en-US')} rows, ${idsPerRequest} ids a request, ${rounds} alternating rounds

| request | database CPU (rounds) | median |
|---|---|---|
${row('POST /status/batch, no rule', results.batch.none, batchSummary.none)}
${row('POST /status/batch, friends rule', results.batch.rule, batchSummary.rule)}
| ratio rule / no rule | | x${batchSummary.ratio.toFixed(2)} (target <= 1.5) |
${row('stream snapshot, no rule', results.snapshot.none, snapshotSummary.none)}
${row('stream snapshot, friends rule', results.snapshot.rule, snapshotSummary.rule)}
| ratio rule / no rule | | x${snapshotSummary.ratio.toFixed(2)} |

The batch statement with the rule (EXPLAIN ANALYZE; without it: ${plans.none.at(-1)}):
${plans.rule.join('\n')}

The rule's own statement for that viewer:
${plans.ruleBody.join('\n')}
`);
}

await main();
