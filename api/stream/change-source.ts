/**
 * Where live streams and the offline detector find changes, by the database Pulse runs on.
 *
 * The change log is read by snapshot: a row's `tx` (pg_current_xact_id()) is compared with
 * pg_current_snapshot(). Both are per node. On Citus, `tx` is taken on the node that plans the
 * statement (the coordinator or a worker serving the API) for routed writes, but on each worker
 * for multi-shard ones (the sweep), so one table mixes transaction ids of several nodes; and a
 * multi-shard transaction's rows become visible on the workers (COMMIT PREPARED) after the node
 * that took `tx` counts it as committed, so a reader can step past a row it cannot see yet
 * (docs/citus.md, "The change log"). So on Citus streams poll the watched ids, and the offline
 * detector, which follows the log, does not run; the log is still written by every transition.
 */
import { ConfigError } from '../../lib/infra/config.ts';
import type { CitusNode } from '../../lib/citus/citus-node.ts';

export type ChangeSource = 'log' | 'poll';

export interface ChangeSources {
  stream: ChangeSource;
  /** Whether the offline detector (which tails the log) may run. */
  offlineDetector: boolean;
}

/** STREAM_CHANGE_SOURCE unset: the log on plain PostgreSQL, polling on Citus; `log` on Citus is refused. */
export function chooseChangeSources(
  configured: ChangeSource | undefined,
  offlineDetector: boolean,
  node: CitusNode,
): ChangeSources {
  if (node === 'plain') return { stream: configured ?? 'log', offlineDetector };
  if (configured === 'log') {
    throw new ConfigError([
      'STREAM_CHANGE_SOURCE=log does not work on Citus: the change log is read by transaction snapshot, and snapshots and transaction ids are per node (docs/citus.md, "The change log"). Unset it or set STREAM_CHANGE_SOURCE=poll',
    ]);
  }
  return { stream: 'poll', offlineDetector: false };
}
