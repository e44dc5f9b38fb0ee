/**
 * A Citus coordinator for tests (CITUS_URL): a schema of its own per test, the migrate step, the
 * workers, where ids live, and connections to one node or several.
 */
import { spawn } from 'node:child_process';
import { sql } from 'kysely';
import { openDatabase, openDatabaseNodes, type DatabaseHandle } from '../../lib/infra/db.ts';
import { nodeUrl } from '../../lib/store/node-change-log.ts';
import { silentLogger } from './database.ts';
import { adminQuery, uniqueName } from './server.ts';

export const citusUrl = process.env.CITUS_URL;

export interface CitusSchema extends DatabaseHandle {
  /** A connection URL whose search_path is this schema. */
  url: string;
  schema: string;
  /** citus.shard_count in force for this database (32 unless the operator chose otherwise). */
  shardCount: number;
  query<R>(text: string): Promise<R[]>;
  drop(): Promise<void>;
}

export function inSchema(url: string, schema: string): string {
  const parsed = new URL(url);
  parsed.searchParams.set('options', `-c search_path=${schema}`);
  return parsed.toString();
}

export async function createSchema(): Promise<CitusSchema> {
  const schema = uniqueName('pulse_citus');
  await adminQuery(citusUrl!, `CREATE SCHEMA ${schema}`);
  const url = inSchema(citusUrl!, schema);
  const handle = openDatabase({
    connectionString: url,
    poolMax: 8,
    applicationName: 'pulse-test-citus',
    logger: silentLogger,
  });
  const { rows } = await sql<{
    shards: string;
  }>`SELECT current_setting('citus.shard_count') AS shards`.execute(handle.db);
  return {
    ...handle,
    url,
    schema,
    shardCount: Number(rows[0]!.shards),
    async query<R>(text: string) {
      return (await sql.raw<R>(text).execute(handle.db)).rows;
    },
    async drop() {
      await handle.close();
      await adminQuery(citusUrl!, `DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    },
  };
}

export function migrate(
  databaseUrl: string,
  args: string[] = [],
): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/migrate.ts', ...args], {
      env: { PATH: process.env.PATH, DATABASE_URL: databaseUrl, LOG_LEVEL: 'silent' },
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.on('exit', (code) => resolve({ code, out }));
  });
}

export interface WorkerNode {
  nodeId: number;
  host: string;
  port: number;
}

/** The active primary workers, in node id order. */
export async function workers(db: CitusSchema): Promise<WorkerNode[]> {
  return db.query<WorkerNode>(`
    SELECT nodeid AS "nodeId", nodename AS host, nodeport AS port FROM pg_dist_node
    WHERE groupid > 0 AND noderole = 'primary' AND isactive ORDER BY nodeid`);
}

/** `url` pointed at another node (the same database, user and options). */
export const onNode = nodeUrl;

/** `url` naming several nodes in libpq's multi-host form, as DATABASE_URL may. */
export function onNodes(url: string, nodes: ReadonlyArray<{ host: string; port: number }>): string {
  const parsed = new URL(url);
  const hosts = nodes.map((node) => `${node.host}:${node.port}`).join(',');
  return `${parsed.protocol}//${parsed.username}@${hosts}${parsed.pathname}${parsed.search}`;
}

/** The API's database on several nodes: a pool per node (lib/infra/db.ts). */
export function openOnNodes(
  url: string,
  applicationName: string,
): DatabaseHandle & { url: string } {
  return {
    ...openDatabaseNodes({
      connectionString: url,
      poolMax: 8,
      applicationName,
      logger: silentLogger,
    }),
    url,
  };
}

/** Points Citus's own connections to `worker` at `proxy` (on every node) and waits until synced. */
export async function throughProxy(
  db: CitusSchema,
  worker: WorkerNode,
  proxy: { host: string; port: number },
): Promise<void> {
  await db.query(`SELECT citus_update_node(${worker.nodeId}, '${proxy.host}', ${proxy.port})`);
  await waitForMetadataSync(db);
}

/** Undoes throughProxy. */
export async function direct(db: CitusSchema, worker: WorkerNode): Promise<void> {
  await adminQuery(
    citusUrl!,
    `SELECT citus_update_node(${worker.nodeId}, '${worker.host}', ${worker.port})`,
  );
  // The workers learn the address back from the maintenance daemon: wait for it, as DDL (the
  // schema's DROP) needs every node in sync.
  await waitForMetadataSync(db);
}

export function openOn(url: string, applicationName: string): DatabaseHandle & { url: string } {
  return {
    ...openDatabase({ connectionString: url, poolMax: 8, applicationName, logger: silentLogger }),
    url,
  };
}

/** Ids from `candidates` whose shard has its placement on `worker`. */
export async function idsOnWorker(
  db: CitusSchema,
  candidates: readonly number[],
  worker: WorkerNode,
): Promise<number[]> {
  const rows = await db.query<{ id: string }>(`
    SELECT id::text FROM unnest(ARRAY[${candidates.join(',')}]::bigint[]) id
    JOIN pg_dist_placement pl ON pl.shardid = get_shard_id_for_distribution_column('pulse', id)
    JOIN pg_dist_node n ON n.groupid = pl.groupid
    WHERE n.nodeid = ${worker.nodeId} ORDER BY id`);
  return rows.map((r) => Number(r.id));
}

export async function waitForMetadataSync(db: CitusSchema): Promise<void> {
  for (let i = 0; i < 600; i += 1) {
    const [row] = await db.query<{ synced: boolean }>(
      `SELECT bool_and(metadatasynced) AS synced FROM pg_dist_node WHERE hasmetadata`,
    );
    if (row?.synced) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error('Citus metadata did not sync to the workers within 60 s');
}
