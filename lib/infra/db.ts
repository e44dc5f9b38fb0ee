import { Kysely, PostgresDialect, type PostgresPool, type PostgresPoolClient } from 'kysely';
import pg from 'pg';
import { databaseNodeUrls, nodeName } from './database-url.ts';
import { errorFields, type Logger } from './logger.ts';
import { OutageLog } from './outage-log.ts';
import { PreparingClient, type NamedStatements } from './prepared-statements.ts';
import type { Database } from '../store/schema.ts';

/** What the connections gauge reads of a pool (lib/infra/metrics.ts): pg.Pool has it. */
export interface PoolCounts {
  readonly totalCount: number;
  readonly idleCount: number;
  readonly waitingCount: number;
}

/** One node's own pool and Kysely instance: statements that must run on that node. */
export interface DatabaseNode {
  /** `host:port`, as DATABASE_URL names it. */
  name: string;
  db: Kysely<Database>;
  /**
   * With several Citus nodes listed: a second pool on the node whose sessions have
   * `citus.enable_local_execution` off, for reads that return rows (see openDatabaseNodes).
   */
  readDb?: Kysely<Database>;
}

export interface DatabaseHandle {
  /** Statements for any node: the one node, or each connection from the next node in turn. */
  db: Kysely<Database>;
  /** The (first) node's pg pool. */
  pool: pg.Pool;
  /** Every node's connections together, for the metrics gauge. */
  connections: PoolCounts;
  /** Each node DATABASE_URL names, in its order; one for a single-host URL (this handle's db). */
  nodes: readonly DatabaseNode[];
  /**
   * How long the last query waited for a pool connection, in ms, while queries are waiting for
   * one (0 when none waits): the pool's queue wait, for admission control.
   */
  poolWaitMs(): number;
  /** Ends every connection; safe to call more than once. */
  close(): Promise<void>;
}

export interface DatabaseOptions {
  connectionString: string;
  poolMax: number;
  applicationName: string;
  logger: Logger;
  /**
   * Longest a statement may run, enforced by the server and, for a silently dead connection, by
   * the client. Undefined: no limit (the migrate step, whose table rewrites may take long).
   */
  statementTimeoutMs?: number;
  /** While the database is down, how often the log says so (lib/infra/outage-log.ts); 10 s by default. */
  outageSummaryIntervalMs?: number;
  /**
   * Run the registered hot statements as named statements (lib/infra/prepared-statements.ts);
   * true by default. False behind PgBouncer before 1.21 in transaction mode.
   */
  preparedStatements?: boolean;
}

/** Heartbeats, status reads and sweep batches take milliseconds: anything near this is stuck. */
export const DEFAULT_STATEMENT_TIMEOUT_MS = 15_000;

/** The one pg pool (and Kysely instance on it) of a process, on the server `connectionString` names. */
export function openDatabase(options: DatabaseOptions): DatabaseHandle {
  const node = openNode(options);
  return node.handle;
}

interface OpenedNode {
  handle: DatabaseHandle;
  /** The pool Kysely reads connections from: it reports failures to the node's outage log. */
  connect(): Promise<PostgresPoolClient>;
}

function openNode(options: DatabaseOptions): OpenedNode {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.poolMax,
    application_name: options.applicationName,
    // A request must fail fast (503) rather than hang when the database is unreachable.
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    // Notice a peer that vanished without closing the connection (network cut, host failure).
    keepAlive: true,
    ...(options.statementTimeoutMs === undefined
      ? {}
      : {
          statement_timeout: options.statementTimeoutMs,
          query_timeout: options.statementTimeoutMs + 1_000,
        }),
  });
  // Database failures are logged by the outage log (first cause, periodic count, recovery), not
  // one line each: an outage would otherwise flood the log.
  const outage = new OutageLog(
    options.logger,
    options.outageSummaryIntervalMs === undefined
      ? {}
      : { summaryIntervalMs: options.outageSummaryIntervalMs },
  );
  // An idle client losing its connection (database restart, network blip) emits here; without a
  // listener that would crash the process. The error holds its client (and so the cancel key):
  // only its message and code are logged.
  pool.on('error', (error) => outage.failed(error));
  // A client checked out of the pool has no such listener: when its connection drops mid-query
  // (the sweeper's batches, a database restart) pg rejects the query AND emits 'error' on the
  // client, which would crash the process. The query's caller handles the failure; the pool
  // discards the broken client on release.
  pool.on('connect', (client) => {
    client.on('error', (error) => {
      options.logger.debug({ err: errorFields(error) }, 'database connection lost');
    });
  });
  // Every connection attempt and every statement reports here, so the outage log knows when the
  // database is down and when it is back.
  let lastPoolWaitMs = 0;
  const named: NamedStatements = {
    on: options.preparedStatements ?? true,
    turnedOff: (error) =>
      options.logger.warn(
        { err: errorFields(error) },
        'the database lost a named statement (PgBouncer before 1.21 in transaction mode?): running them unnamed from now on; set DATABASE_PREPARED_STATEMENTS=off',
      ),
  };
  const reportingPool = {
    connect: (): Promise<PostgresPoolClient> => {
      const asked = performance.now();
      return pool.connect().then(
        (client) => {
          lastPoolWaitMs = performance.now() - asked;
          return named.on ? new PreparingClient(client, named) : client;
        },
        (error: unknown) => {
          if (isDatabaseUnavailable(error)) outage.failed(error);
          throw error;
        },
      );
    },
    end: () => pool.end(),
  } satisfies PostgresPool;
  const db = new Kysely<Database>({
    dialect: new PostgresDialect({ pool: reportingPool }),
    log(event) {
      if (event.level === 'query') outage.succeeded();
      else if (isDatabaseUnavailable(event.error)) outage.failed(event.error);
    },
  });
  let closing: Promise<void> | undefined;
  const handle: DatabaseHandle = {
    db,
    pool,
    connections: pool,
    nodes: [],
    poolWaitMs: () => (pool.waitingCount === 0 ? 0 : lastPoolWaitMs),
    close: () =>
      (closing ??= db.destroy().finally(() => {
        outage.close();
      })),
  };
  let name: string;
  try {
    name = nodeName(options.connectionString);
  } catch {
    name = 'database';
  }
  handle.nodes = [{ name, db }];
  return { handle, connect: () => reportingPool.connect() };
}

/** `url` with `option` (`-c name=value`) added to its `options` parameter (sent at connect). */
function withServerOption(url: string, option: string): string {
  const parsed = new URL(url);
  const options = parsed.searchParams.get('options');
  parsed.searchParams.set('options', options ? `${options} ${option}` : option);
  return parsed.toString();
}

/** After a node refused a connection, others are tried first for this long. */
const NODE_RETRY_MS = 1_000;

/**
 * The API's database: a pool per node when DATABASE_URL lists several Citus nodes
 * (lib/infra/database-url.ts), `poolMax` connections each; exactly openDatabase for one.
 *
 * `db` takes each connection from the next node in turn, skipping for a second a node that just
 * refused one (its statement goes to the next node: nothing was sent yet). A transaction keeps
 * its one connection, so it stays on one node. Statements that belong to one shard go to the
 * node holding it through `nodes` (lib/citus/shard-routing.ts).
 *
 * Each node has a second pool (`readDb`, `poolMax` too) for routed reads: Citus runs a statement
 * for a shard of its own node in the session itself ("local execution"), which is what makes
 * heartbeats cheap there, but returns rows from it at about half the speed of the same statement
 * through its executor's connection (a status read of 250 ids: twice the time and worker CPU,
 * measured; docs/citus.md). Sessions of the read pool turn local execution off.
 */
export function openDatabaseNodes(options: DatabaseOptions): DatabaseHandle {
  const urls = databaseNodeUrls(options.connectionString);
  if (urls.length === 1) return openDatabase({ ...options, connectionString: urls[0]! });
  const opened = urls.map((url) =>
    openNode({
      ...options,
      connectionString: url,
      logger: options.logger.child({ node: nodeName(url) }),
    }),
  );
  const readers = urls.map((url) =>
    openNode({
      ...options,
      connectionString: withServerOption(url, '-c citus.enable_local_execution=off'),
      logger: options.logger.child({ node: nodeName(url), pool: 'read' }),
    }),
  );
  const failedAt = opened.map(() => -Infinity);
  let next = 0;
  const rotation: PostgresPool = {
    async connect() {
      const first = next;
      next = (next + 1) % opened.length;
      const now = performance.now();
      const order = opened.map((_, i) => (first + i) % opened.length);
      // Nodes that refused a connection lately come last: tried only when every other one fails.
      const fresh = order.filter((i) => now - failedAt[i]! >= NODE_RETRY_MS);
      const stale = order.filter((i) => now - failedAt[i]! < NODE_RETRY_MS);
      let lastError: unknown;
      for (const i of [...fresh, ...stale]) {
        try {
          return await opened[i]!.connect();
        } catch (error) {
          if (!isDatabaseUnavailable(error)) throw error;
          failedAt[i] = performance.now();
          lastError = error;
        }
      }
      throw lastError;
    },
    // Each node's pool ends with its own handle.
    end: () => Promise.resolve(),
  };
  const outage = new OutageLog(
    options.logger,
    options.outageSummaryIntervalMs === undefined
      ? {}
      : { summaryIntervalMs: options.outageSummaryIntervalMs },
  );
  const db = new Kysely<Database>({
    dialect: new PostgresDialect({ pool: rotation }),
    log(event) {
      if (event.level === 'query') outage.succeeded();
      else if (isDatabaseUnavailable(event.error)) outage.failed(event.error);
    },
  });
  const pools = [...opened, ...readers].map((node) => node.handle.pool);
  const sum = (count: (pool: pg.Pool) => number) => pools.reduce((n, p) => n + count(p), 0);
  let closing: Promise<void> | undefined;
  return {
    db,
    pool: pools[0]!,
    connections: {
      get totalCount() {
        return sum((p) => p.totalCount);
      },
      get idleCount() {
        return sum((p) => p.idleCount);
      },
      get waitingCount() {
        return sum((p) => p.waitingCount);
      },
    },
    nodes: opened.map((node, i) => ({ ...node.handle.nodes[0]!, readDb: readers[i]!.handle.db })),
    poolWaitMs: () => Math.max(...[...opened, ...readers].map((node) => node.handle.poolWaitMs())),
    close: () =>
      (closing ??= db
        .destroy()
        .then(() => Promise.all([...opened, ...readers].map((node) => node.handle.close())))
        .then(() => undefined)
        .finally(() => outage.close())),
  };
}

const connectionErrorCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'EHOSTUNREACH',
]);

/**
 * Citus reports most failures to reach a worker as SQLSTATE 08006, but a connection lost inside a
 * transaction as XX000 (internal error) with one of these messages: a worker down, not a bug.
 */
const citusNodeUnreachable =
  /failure on connection marked as essential|could not connect to any active placements/;

/**
 * True when an error means "the database cannot be reached or is not accepting work right now"
 * (as opposed to a bug in a statement), so callers answer 503 and retry later. Follows `cause`.
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (connectionErrorCodes.has(code)) return true;
    // SQLSTATE classes 08 (connection exception), 53 (insufficient resources),
    // 57P (operator intervention: shutdown, cannot connect now), 57014 (statement timeout).
    if (/^(08|53|57P|57014)/.test(code)) return true;
  }
  const lostConnection =
    /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|connection is closed|Query read timeout/i;
  return (
    lostConnection.test(error.message) ||
    citusNodeUnreachable.test(error.message) ||
    isDatabaseUnavailable(error.cause)
  );
}
