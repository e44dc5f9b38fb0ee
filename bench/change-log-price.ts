/**
 * What the change log costs the heartbeat path, before and after, in one run: the database CPU
 * per heartbeat of the upsert Pulse ran before the log (no online_since, no event CTE; unnamed,
 * as Pulse ran it then) and of today's (lib/store/pulse-store.ts recordHeartbeats, a named
 * statement by default), on the same table, in alternating rounds on one connection each. For
 * comparison, also the old upsert run by name (`beforeNamed`): what naming alone saves it. Batches of `batch` random users (a group-commit flush under load),
 * synchronous commit; in each batch a `comingOnline` share of the users comes online (their mark
 * is cleared beforehand, outside the measured connection), so today's upsert also writes its
 * events. Used by bench:heartbeat-log and bench:scale.
 */
import { CompiledQuery } from 'kysely';
import { openDatabase } from '../lib/infra/db.ts';
import { createLogger } from '../lib/infra/logger.ts';
import { preparedStatement } from '../lib/infra/prepared-statements.ts';
import { recordHeartbeats } from '../lib/store/pulse-store.ts';
import { watchBackends } from './process-cpu.ts';
import type { BenchDatabase } from './support.ts';

const OLD_UPSERT = `INSERT INTO pulse (user_id, last_hb) SELECT hb, now() FROM unnest($1::bigint[]) AS hb
  ON CONFLICT (user_id) DO UPDATE SET last_hb = EXCLUDED.last_hb`;
/** The same text with a comment, so that its name is not taken for the unnamed runs' text. */
const NAMED_OLD_UPSERT = `${OLD_UPSERT} -- named`;

export interface LogPriceOptions {
  /** A user id that has a row in `pulse` (random each call). */
  randomUserId: () => number;
  batch: number;
  roundSeconds: number;
  rounds: number;
  comingOnline: number;
}

export interface LogPrice {
  sizes: Omit<LogPriceOptions, 'randomUserId'>;
  /** Database CPU per heartbeat, µs, per round. */
  dbCpuUsPerHeartbeat: { before: number[]; beforeNamed: number[]; after: number[] };
  /** The median round of each, after / before, and after / beforeNamed. */
  median: {
    before: number;
    beforeNamed: number;
    after: number;
    ratio: number;
    ratioToNamedBefore: number;
  };
}

/**
 * Measures on `bench`, whose `pulse` rows are all marked online first (a steady state: users come
 * online only as the options say); leaves them unmarked again.
 */
export async function measureLogPrice(
  bench: BenchDatabase,
  options: LogPriceOptions,
): Promise<LogPrice> {
  const { batch, roundSeconds, rounds, comingOnline } = options;
  const logger = createLogger('pulse-bench', 'warn');
  const open = (name: string) =>
    openDatabase({ connectionString: bench.url, poolMax: 1, applicationName: name, logger });
  const variants = {
    before: open('pulse-hb-before'),
    beforeNamed: open('pulse-hb-beforeNamed'),
    after: open('pulse-hb-after'),
  };
  const results = { before: [] as number[], beforeNamed: [] as number[], after: [] as number[] };
  const randomIds = () => {
    const ids = new Set<number>();
    while (ids.size < batch) ids.add(options.randomUserId());
    return [...ids];
  };
  try {
    await bench.query('UPDATE pulse SET online_since = last_hb');
    await bench.query('VACUUM ANALYZE pulse');
    for (let round = 0; round < rounds; round += 1) {
      for (const name of ['before', 'beforeNamed', 'after'] as const) {
        const watch = watchBackends(bench, `pulse-hb-${name}`);
        const { db } = variants[name];
        await watch.start();
        const until = Date.now() + roundSeconds * 1000;
        let heartbeats = 0;
        while (Date.now() < until) {
          const ids = randomIds();
          // On average a `comingOnline` share of the heartbeats, whole users per batch.
          const back = ids.slice(0, Math.floor(ids.length * comingOnline + Math.random()));
          if (back.length > 0) {
            await bench.query(
              'UPDATE pulse SET online_since = NULL WHERE user_id = ANY($1::bigint[])',
              [back],
            );
          }
          if (name === 'after') await recordHeartbeats(db, ids);
          else {
            const text = name === 'beforeNamed' ? preparedStatement(NAMED_OLD_UPSERT) : OLD_UPSERT;
            await db.executeQuery(CompiledQuery.raw(text, [ids]));
          }
          heartbeats += ids.length;
        }
        const cpu = await watch.stop();
        if (!cpu.local) throw new Error('database CPU needs the PostgreSQL server on this machine');
        results[name].push(((cpu.backendsSeconds + cpu.autovacuumSeconds) * 1e6) / heartbeats);
      }
    }
    await bench.query('UPDATE pulse SET online_since = NULL');
    await bench.query('VACUUM ANALYZE pulse');
  } finally {
    await Promise.all(Object.values(variants).map((variant) => variant.close()));
  }
  // The median round: this machine is shared, and one disturbed round should not decide.
  const median = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)]!;
  };
  const before = median(results.before);
  const beforeNamed = median(results.beforeNamed);
  const after = median(results.after);
  return {
    sizes: { batch, roundSeconds, rounds, comingOnline },
    dbCpuUsPerHeartbeat: results,
    median: {
      before,
      beforeNamed,
      after,
      ratio: after / before,
      ratioToNamedBefore: after / beforeNamed,
    },
  };
}
