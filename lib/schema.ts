import type { ColumnType } from 'kysely';

/** Row shape of `pulse`: one row per user who has sent a heartbeat and not yet been swept. */
export interface PulseTable {
  /** bigint: pg returns it as a string, Pulse writes JS numbers (at most 2^53 - 1). */
  user_id: ColumnType<string, number, never>;
  last_hb: ColumnType<Date, Date | undefined, Date>;
}

/** The sweepers' lease: at most one row (id = 1), see lib/sweep-lease.ts. */
export interface SweeperLeaseTable {
  id: number;
  holder: string | null;
  renewed_at: ColumnType<Date, Date | undefined, Date>;
  expires_at: Date;
}

export interface Database {
  pulse: PulseTable;
  pulse_sweeper_lease: SweeperLeaseTable;
}
