/**
 * The change log on Citus, read node by node.
 *
 * The log is read by snapshot (lib/store/presence-log.ts): a row's `tx` against the reader's
 * pg_current_snapshot(). Transaction ids and snapshots are per node, and a multi-shard
 * transaction becomes visible on each worker at its own COMMIT PREPARED, so no single node's
 * snapshot can tell which rows of another node are committed. Each node is therefore read by its
 * own snapshots, for the rows it holds and whose `tx` it took (`tx_node`, set on the shard by
 * migration 0014), and the cursor is one snapshot per node.
 *
 * Each node's read is one REPEATABLE READ transaction: the shards the node holds are looked up
 * and read under the same snapshot, so a shard moved in (or left behind by a move, until Citus
 * drops it) is never read from a snapshot that already counted its rows as read. A node that
 * cannot be read keeps its part of the cursor: its rows come with a later read, and the other
 * nodes' changes are delivered meanwhile.
 *
 * Nodes are reached at the address Citus has for them (pg_dist_node), with the credentials,
 * database and options of DATABASE_URL, over a small pool each.
 */
import { sql } from 'kysely';
import type { CitusNode } from '../citus/citus-node.ts';
import { openDatabase, type DatabaseHandle } from '../infra/db.ts';
import type { Logger } from '../infra/logger.ts';
import {
  changeLogOf,
  readEventsSince,
  readFeedSince,
  type ChangeLogReader,
  type EventRead,
  type FeedRead,
  type LogScope,
  type LogTables,
  type MarkedOnline,
} from './presence-log.ts';
import type { Executor } from './pulse-store.ts';

export interface NodeChangeLogOptions {
  /** DATABASE_URL: each node's address replaces its host and port. */
  connectionString: string;
  logger: Logger;
  applicationName: string;
  statementTimeoutMs?: number;
  /** How often the list of nodes is read again (a node added); 30 s by default. */
  nodeListRefreshMs?: number;
}

interface CitusNodeAddress {
  group: number;
  host: string;
  port: number;
}

/** Per node group, that node's snapshot. */
type NodeCursor = Record<string, string>;

/**
 * The change log as a process reads it: through its own pool on plain PostgreSQL, node by node
 * on Citus (the polling feed, STREAM_CHANGE_SOURCE=poll, stays the explicit fallback).
 */
export function openChangeLog(
  database: DatabaseHandle,
  node: CitusNode,
  options: { connectionString: string; logger: Logger; statementTimeoutMs?: number },
): ChangeLogReader {
  if (node === 'plain') return changeLogOf(database.db);
  return new NodeChangeLog(database.db, { ...options, applicationName: 'pulse-change-log' });
}

/** What a reader and the views it hands out (forGroup) share: connections and the node list. */
interface SharedNodes {
  pools: Map<number, DatabaseHandle>;
  nodes: CitusNodeAddress[];
  nodesReadAt: number;
  closed: boolean;
}

export class NodeChangeLog implements ChangeLogReader {
  constructor(
    /** Any Citus node, for the node list. */
    private readonly db: Executor,
    private readonly options: NodeChangeLogOptions,
    /** Only this node group's rows (a view from forGroup); every node's when undefined. */
    private readonly only?: number,
    private readonly shared: SharedNodes = {
      pools: new Map(),
      nodes: [],
      nodesReadAt: -Infinity,
      closed: false,
    },
  ) {}

  /**
   * The log of one node group: what that group's offline detector reads (one detector per group
   * on Citus, lib/presence/group-detectors.ts). Shares this reader's connections; closing it
   * closes nothing.
   */
  forGroup(group: number): ChangeLogReader & { scanMarkedOnline(): Promise<MarkedOnline[]> } {
    const view = new NodeChangeLog(this.db, this.options, group, this.shared);
    return {
      currentCursor: () => view.currentCursor(),
      readEvents: (cursor) => view.readEvents(cursor),
      readFeed: (cursor) => view.readFeed(cursor),
      scanMarkedOnline: () => view.scanMarkedOnline(),
      close: () => Promise.resolve(),
    };
  }

  /**
   * The node groups holding shards of the log, each with its shard ids (joined: a change means
   * shards moved, and that group's detector must rescan).
   */
  async groupsHoldingLog(): Promise<Map<number, string>> {
    const { rows } = await sql<{ group: number; shards: string }>`
      SELECT p.groupid AS group, string_agg(p.shardid::text, ',' ORDER BY p.shardid) AS shards
      FROM pg_dist_placement p JOIN pg_dist_shard s ON s.shardid = p.shardid
      WHERE s.logicalrelid = 'pulse_events'::regclass
      GROUP BY p.groupid ORDER BY p.groupid`.execute(this.db);
    return new Map(rows.map((row) => [row.group, row.shards]));
  }

  /** Users marked online on this view's node (its own shards of `pulse`), with their last_hb. */
  private async scanMarkedOnline(): Promise<MarkedOnline[]> {
    const [node] = await this.nodeList();
    if (node === undefined) return [];
    return this.pool(node)
      .db.transaction()
      .setIsolationLevel('repeatable read')
      .setAccessMode('read only')
      .execute(async (trx) => {
        const scope = await localScope(trx);
        if (scope.tables.length === 0) return [];
        const { rows } = await sql<{ user_id: string; last_hb: Date }>`${sql.join(
          scope.tables.map(
            (t) =>
              sql`SELECT user_id, last_hb FROM ${sql.table(t.pulse)} WHERE online_since IS NOT NULL`,
          ),
          sql` UNION ALL `,
        )}`.execute(trx);
        return rows.map((row) => ({ userId: Number(row.user_id), lastHb: row.last_hb.getTime() }));
      });
  }

  /** Every node's snapshot: rejects if a node cannot be reached (nothing may be missed). */
  async currentCursor(): Promise<string> {
    const nodes = await this.nodeList();
    const snapshots = await Promise.all(
      nodes.map(async (node) => {
        const { rows } = await sql<{ snapshot: string }>`
          SELECT pg_current_snapshot()::text AS snapshot`.execute(this.pool(node).db);
        return [String(node.group), rows[0]!.snapshot] as const;
      }),
    );
    return JSON.stringify(Object.fromEntries(snapshots));
  }

  async readEvents(cursor: string): Promise<EventRead> {
    const read = await this.readNodes(cursor, (db, snapshot, scope) =>
      readEventsSince(db, snapshot, scope),
    );
    const events = read.parts.flatMap((part) => part.events);
    return { snapshot: read.cursor, events, ...failuresOf(read.failures) };
  }

  async readFeed(cursor: string): Promise<FeedRead> {
    const read = await this.readNodes(cursor, (db, snapshot, scope) =>
      readFeedSince(db, snapshot, scope),
    );
    // Transitions first, then audience changes, as on one node (each user lives on one node).
    const changes = read.parts.flatMap((part) => part.changes.filter((c) => !c.audienceOnly));
    for (const part of read.parts) changes.push(...part.changes.filter((c) => c.audienceOnly));
    return { snapshot: read.cursor, changes, ...failuresOf(read.failures) };
  }

  async close(): Promise<void> {
    this.shared.closed = true;
    await Promise.all([...this.shared.pools.values()].map((pool) => pool.close()));
    this.shared.pools.clear();
  }

  /**
   * Reads every node from its part of `cursor`. A node the cursor does not know yet (added
   * since) starts from its current snapshot.
   */
  private async readNodes<T extends { snapshot: string }>(
    cursor: string,
    read: (db: Executor, snapshot: string, scope: LogScope) => Promise<T>,
  ): Promise<{ cursor: string; parts: T[]; failures: unknown[] }> {
    const previous = parseCursor(cursor);
    const nodes = await this.nodeList();
    const next: NodeCursor = { ...previous };
    const parts: T[] = [];
    const failures: unknown[] = [];
    await Promise.all(
      nodes.map(async (node) => {
        const key = String(node.group);
        try {
          const since = previous[key];
          const part = await this.pool(node)
            .db.transaction()
            .setIsolationLevel('repeatable read')
            .setAccessMode('read only')
            .execute(async (trx) => {
              const scope = await localScope(trx);
              if (since === undefined || scope.tables.length === 0) {
                return { snapshot: await snapshotOf(trx), part: undefined };
              }
              const result = await read(trx, since, scope);
              return { snapshot: result.snapshot, part: result };
            });
          next[key] = part.snapshot;
          if (part.part) parts.push(part.part);
        } catch (error) {
          failures.push(error);
        }
      }),
    );
    return { cursor: JSON.stringify(next), parts, failures };
  }

  /** The nodes this reader reads (every active primary, or this view's one). */
  private async nodeList(): Promise<CitusNodeAddress[]> {
    const refreshMs = this.options.nodeListRefreshMs ?? 30_000;
    const shared = this.shared;
    if (performance.now() - shared.nodesReadAt >= refreshMs) {
      const { rows } = await sql<{ group: number; host: string; port: number }>`
        SELECT groupid AS group, nodename AS host, nodeport AS port
        FROM pg_dist_node WHERE isactive AND noderole = 'primary'
        ORDER BY groupid`.execute(this.db);
      shared.nodes = rows;
      shared.nodesReadAt = performance.now();
    }
    return this.only === undefined
      ? shared.nodes
      : shared.nodes.filter((node) => node.group === this.only);
  }

  private pool(node: CitusNodeAddress): DatabaseHandle {
    if (this.shared.closed) throw new Error('the change log reader is closed');
    let handle = this.shared.pools.get(node.group);
    if (handle === undefined) {
      handle = openDatabase({
        connectionString: nodeUrl(this.options.connectionString, node),
        poolMax: 2,
        applicationName: this.options.applicationName,
        logger: this.options.logger,
        ...(this.options.statementTimeoutMs === undefined
          ? {}
          : { statementTimeoutMs: this.options.statementTimeoutMs }),
      });
      this.shared.pools.set(node.group, handle);
    }
    return handle;
  }
}

function failuresOf(failures: unknown[]): { failures?: unknown[] } {
  return failures.length === 0 ? {} : { failures };
}

function parseCursor(cursor: string): NodeCursor {
  const parsed: unknown = JSON.parse(cursor);
  if (typeof parsed !== 'object' || parsed === null)
    throw new Error(`not a node cursor: ${cursor}`);
  return parsed as NodeCursor;
}

/** DATABASE_URL with a node's host and port. */
export function nodeUrl(connectionString: string, node: { host: string; port: number }): string {
  const url = new URL(connectionString);
  url.hostname = node.host.includes(':') ? `[${node.host}]` : node.host;
  url.port = String(node.port);
  return url.toString();
}

async function snapshotOf(db: Executor): Promise<string> {
  const { rows } = await sql<{ snapshot: string }>`
    SELECT pg_current_snapshot()::text AS snapshot`.execute(db);
  return rows[0]!.snapshot;
}

/** Citus's shard of `table` for the hash range starting at the `events` shard's (by alias). */
const colocated = (alias: string, table: string) => sql`
  (SELECT to_regclass(shard_name(${table}::regclass, ${sql.ref(`${alias}.shardid`)}))::text
   FROM pg_dist_shard ${sql.table(alias)}
   WHERE ${sql.ref(`${alias}.logicalrelid`)} = ${table}::regclass
     AND ${sql.ref(`${alias}.shardminvalue`)} = e.shardminvalue)`;

/**
 * The co-located shards of the log's tables this node holds (placed here, or left by a move
 * until Citus drops them), as names for a statement, and the node's group: on a node that holds
 * none, no tables. The names come from the catalog (regclass text, quoted as needed).
 */
async function localScope(db: Executor): Promise<LogScope> {
  const { rows: group } = await sql<{ node: number }>`
    SELECT groupid AS node FROM pg_dist_local_group`.execute(db);
  const { rows } = await sql<Record<keyof LogTables, string | null>>`
    SELECT to_regclass(shard_name('pulse_events'::regclass, e.shardid))::text AS events,
           ${colocated('v', 'pulse_visibility_changes')} AS visibility,
           ${colocated('p', 'pulse')} AS pulse,
           ${colocated('l', 'pulse_last_seen')} AS "lastSeen",
           ${colocated('r', 'pulse_privacy')} AS privacy,
           (SELECT to_regclass(shard_name('pulse_settings'::regclass, s.shardid))::text
            FROM pg_dist_shard s WHERE s.logicalrelid = 'pulse_settings'::regclass) AS settings
    FROM pg_dist_shard e
    WHERE e.logicalrelid = 'pulse_events'::regclass
      AND to_regclass(shard_name('pulse_events'::regclass, e.shardid)) IS NOT NULL
    ORDER BY e.shardminvalue::int`.execute(db);
  const tables: LogTables[] = [];
  for (const shards of rows) {
    const { events, visibility, pulse, lastSeen, privacy, settings } = shards;
    // A shard left half-dropped by a move has nothing to read.
    if (!events || !visibility || !pulse || !lastSeen || !privacy || !settings) continue;
    const names = [events, visibility, pulse, lastSeen, privacy, settings];
    // They go into the statement's text.
    if (!names.every((name) => /^[a-z0-9_.]+$/.test(name))) {
      throw new Error(`unexpected shard names: ${names.join(', ')}`);
    }
    tables.push({ events, visibility, pulse, lastSeen, privacy, settings });
  }
  return { tables, node: group[0]!.node };
}
