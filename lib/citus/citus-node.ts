/**
 * Which kind of node a process is connected to. On Citus every node serves Pulse's statements
 * (metadata is synced to the workers), but a few things only one kind of node can do: DDL on
 * distributed tables (the change log's partitions) needs the coordinator.
 */
import { sql, type Kysely } from 'kysely';
import { errorFields, type Logger } from '../infra/logger.ts';
import { hasCitus } from './citus-layout.ts';

export type CitusNode = 'plain' | 'coordinator' | 'worker';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- reads catalogs only
export async function whichCitusNode(db: Kysely<any>): Promise<CitusNode> {
  if (!(await hasCitus(db))) return 'plain';
  const { rows } = await sql<{ coordinator: boolean }>`
    SELECT citus_is_coordinator() AS coordinator`.execute(db);
  return rows[0]?.coordinator === true ? 'coordinator' : 'worker';
}

/**
 * whichCitusNode at start-up, logged. A database that cannot be read yet counts as plain
 * PostgreSQL, with a warning: the process starts, and on Citus it would pick the change log.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- reads catalogs only
export async function checkCitusNode(db: Kysely<any>, logger: Logger): Promise<CitusNode> {
  try {
    const node = await whichCitusNode(db);
    if (node !== 'plain') logger.info({ code: 'citus_node', node }, `connected to a Citus ${node}`);
    return node;
  } catch (error) {
    logger.warn(
      { code: 'citus_node_unknown', err: errorFields(error, 0, false) },
      'could not tell whether the database is Citus; starting as on plain PostgreSQL',
    );
    return 'plain';
  }
}
