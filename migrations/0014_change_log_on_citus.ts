import { sql, type Kysely } from 'kysely';
import { hasCitus } from '../lib/citus/citus-layout.ts';

/*
 * On Citus, the change log is read node by node (docs/citus.md, "The change log"): each node's
 * rows by that node's own snapshots. For that, a row's `tx` must be the id of the transaction on
 * the node that holds the row. A column default is evaluated by the node that plans the statement
 * (the coordinator, or the worker an API is connected to), so a trigger, which Citus runs on the
 * shard, takes it there instead, with the node's group (`tx_node`): a reader takes only its own
 * node's rows, so rows written before this migration, or copied in by a shard move, whose `tx`
 * belongs to another node, are never compared with this node's snapshots.
 * On plain PostgreSQL this migration changes nothing: the default is right there.
 */
const LOGS = ['pulse_events', 'pulse_visibility_changes'];

export async function up(db: Kysely<any>): Promise<void> {
  if (!(await hasCitus(db))) return;
  await sql`CREATE FUNCTION pulse_take_local_tx() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      NEW.tx := pg_current_xact_id();
      NEW.tx_node := (SELECT groupid FROM pg_dist_local_group);
      RETURN NEW;
    END $$`.execute(db);
  // The trigger only sets columns of its own row: safe on a distributed table.
  await sql`SET LOCAL citus.enable_unsafe_triggers = on`.execute(db);
  for (const table of LOGS) {
    await sql`ALTER TABLE ${sql.id(table)} ADD COLUMN tx_node integer`.execute(db);
    await sql`CREATE TRIGGER ${sql.id(`${table}_local_tx`)} BEFORE INSERT ON ${sql.id(table)}
      FOR EACH ROW EXECUTE FUNCTION pulse_take_local_tx()`.execute(db);
    await sql`COMMENT ON COLUMN ${sql.id(table, 'tx_node')} IS ${sql.lit(
      "Citus only: the node group (pg_dist_local_group) whose transaction tx is. Readers on a node take only its own rows (tx_node = the local group), by that node's snapshots.",
    )}`.execute(db);
    await sql`COMMENT ON COLUMN ${sql.id(table, 'tx')} IS ${sql.lit(
      'The writing transaction on the node holding the row (set by the trigger pulse_take_local_tx): a reader connected to that node takes rows with tx_node = its group and pg_visible_in_snapshot(tx, pg_current_snapshot()) AND NOT pg_visible_in_snapshot(tx, previous).',
    )}`.execute(db);
  }
  await sql`COMMENT ON FUNCTION pulse_take_local_tx() IS ${sql.lit(
    'Citus only: sets tx and tx_node of a change log row on the node that stores it.',
  )}`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  if (!(await hasCitus(db))) return;
  await sql`SET LOCAL citus.enable_unsafe_triggers = on`.execute(db);
  for (const table of LOGS) {
    await sql`DROP TRIGGER ${sql.id(`${table}_local_tx`)} ON ${sql.id(table)}`.execute(db);
    await sql`ALTER TABLE ${sql.id(table)} DROP COLUMN tx_node`.execute(db);
  }
  await sql`DROP FUNCTION pulse_take_local_tx()`.execute(db);
}
