/**
 * How one sweep walks `pulse`, one batch (one short transaction) at a time.
 *
 * On plain PostgreSQL, each batch is the next SWEEP_BATCH_SIZE user ids after a cursor: the
 * batch's upper bound is read from the primary key (`ORDER BY user_id LIMIT n`), so every batch
 * covers exactly that many rows.
 *
 * On Citus (pulse distributed by user_id), that bound is the expensive part: the LIMIT goes to
 * every shard, so each batch pulls shards x n ids to the coordinator. There, the walk cuts the span of user ids into key ranges instead, sized from
 * one count at the start of the sweep to hold about SWEEP_BATCH_SIZE rows each. A range's DELETE
 * still reaches every shard, but each shard walks only that key range of its own primary key, in
 * parallel, and nothing comes back to the coordinator but a row count. Each range is then resized
 * in proportion to how far the last batch was from TARGET_BATCH_MS (at most halved or doubled per
 * batch, between 1/16 and 8 times the first size), so a dense stretch of ids cannot make
 * transactions long, and the fixed cost of reaching every shard is paid for batches big enough to
 * be worth it (docs/citus.md).
 * Rows inserted above the highest id seen at the start are fresh: the next sweep has them.
 */
import { isDistributed } from '../lib/citus/citus-layout.ts';
import {
  measureUserIdSpace,
  sweepExpiredBatch,
  sweepExpiredRange,
  type Executor,
  type UserIdSpace,
} from '../lib/store/pulse-store.ts';

export interface SweepWalk {
  /** True once the whole table has been walked. */
  readonly finished: boolean;
  /**
   * Runs the next batch in `trx`: the rows deleted, or null when there was nothing left to
   * cover (that call was no batch).
   */
  next(trx: Executor): Promise<number | null>;
  /** How long the batch transaction took, in ms. */
  observe(batchMs: number): void;
}

export interface SweepWalkOptions {
  batchSize: number;
  olderThanSeconds: number;
}

/** Plain PostgreSQL: exact batches of `batchSize` ids after a cursor. */
export class CursorWalk implements SweepWalk {
  private cursor: string | null = null;
  finished = false;

  constructor(private readonly options: SweepWalkOptions) {}

  async next(trx: Executor): Promise<number | null> {
    const batch = await sweepExpiredBatch(trx, { cursor: this.cursor, ...this.options });
    this.cursor = batch.nextCursor;
    this.finished = batch.nextCursor === null;
    return this.finished ? null : batch.deleted;
  }

  observe(): void {}
}

/** The batch time the key-range walk steers towards (the target is: no batch over 250 ms). */
export const TARGET_BATCH_MS = 100;

const bigMin = (a: bigint, b: bigint) => (a < b ? a : b);
const bigMax = (a: bigint, b: bigint) => (a > b ? a : b);

/** Citus: key ranges of about `batchSize` rows, resized by the time each batch takes. */
export class KeyRangeWalk implements SweepWalk {
  private cursor: bigint;
  private width: bigint;
  private readonly last: bigint;
  private readonly minWidth: bigint;
  private readonly maxWidth: bigint;

  constructor(
    space: UserIdSpace,
    private readonly options: SweepWalkOptions,
  ) {
    const first = BigInt(space.min);
    this.last = BigInt(space.max);
    this.cursor = first - 1n;
    const span = this.last - first + 1n;
    const width = (span * BigInt(options.batchSize)) / BigInt(Math.max(1, space.rows));
    this.width = bigMin(span, bigMax(1n, width));
    this.minWidth = bigMax(1n, this.width / 16n);
    this.maxWidth = bigMin(span, this.width * 8n);
  }

  get finished(): boolean {
    return this.cursor >= this.last;
  }

  /** The size of the next key range (for tests and logs). */
  get rangeWidth(): bigint {
    return this.width;
  }

  async next(trx: Executor): Promise<number | null> {
    if (this.finished) return null;
    const upTo = bigMin(this.last, this.cursor + this.width);
    const deleted = await sweepExpiredRange(trx, {
      after: String(this.cursor),
      upTo: String(upTo),
      olderThanSeconds: this.options.olderThanSeconds,
    });
    this.cursor = upTo;
    return deleted;
  }

  observe(batchMs: number): void {
    const factor = Math.min(2, Math.max(0.5, TARGET_BATCH_MS / Math.max(1, batchMs)));
    const resized = (this.width * BigInt(Math.round(factor * 1024))) / 1024n;
    this.width = bigMin(this.maxWidth, bigMax(this.minWidth, resized));
  }
}

/** The walk for this database: key ranges when `pulse` is distributed by Citus, else a cursor. */
export async function openSweepWalk(db: Executor, options: SweepWalkOptions): Promise<SweepWalk> {
  if (!(await isDistributed(db, 'pulse'))) return new CursorWalk(options);
  const space = await measureUserIdSpace(db);
  if (space === null) return new CursorWalk(options);
  return new KeyRangeWalk(space, options);
}
