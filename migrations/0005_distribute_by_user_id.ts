import type { Kysely } from 'kysely';
import {
  distributeUserKeyedTables,
  undistributeUserKeyedTables,
} from '../lib/citus/citus-layout.ts';

/*
 * On a Citus coordinator (the `citus` extension is installed in this database), `pulse` and every
 * companion table keyed by user_id are distributed by user_id and co-located with `pulse`; the
 * sweeper's lease stays a local table. On plain PostgreSQL this migration changes nothing.
 * The list of tables lives in lib/citus/citus-layout.ts (USER_KEYED_TABLES); see docs/citus.md.
 */
export async function up(db: Kysely<any>): Promise<void> {
  await distributeUserKeyedTables(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await undistributeUserKeyedTables(db);
}
