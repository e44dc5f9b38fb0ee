/**
 * Every statement on the webhook tables (migration 0009, docs/webhooks.md).
 *
 * The log is cut into batches with the same snapshot rule as every reader of `pulse_events`
 * (readEventsSince): the endpoint's `cursor` is the snapshot of its last read, and the batches cut
 * from one read are inserted in the transaction that moves the cursor, with a compare-and-set on
 * the old cursor. A batch is written before its first request and deleted only once it was
 * delivered, so a crash at any point re-sends the same batch with the same webhook-id; two
 * deliverers that both believe they hold an endpoint's lease can never cut the same events twice.
 */
import { sql } from 'kysely';
import type { Executor } from './pulse-store.ts';

/**
 * The reasons of pulse_events' transitions a webhook may carry (every one today; listed so a
 * reason added to the log later is not sent before the receivers' contract names it).
 */
export const TRANSITION_REASONS = ['heartbeat', 'held', 'offline', 'threshold', 'sweep'] as const;
export type TransitionReason = (typeof TRANSITION_REASONS)[number];

export interface WebhookEndpoint {
  id: number;
  name: string;
  url: string;
  /** whsec_...: handed to the signer only, never logged. */
  secret: string;
  transitions: Array<'online' | 'offline'>;
  /** null: every transition reason. */
  reasons: TransitionReason[] | null;
  enabled: boolean;
  cursor: string;
}

/** One event as a webhook carries it (data.events[] of the body). */
export interface WebhookEvent {
  /** pulse_events.seq (bigint as a string): per user, the order of the transitions. */
  seq: string;
  user_id: number;
  online: boolean;
  reason: string;
  /** When the transition was logged (ISO 8601). */
  at: string;
  last_seen: string | null;
}

export interface PendingBatch {
  id: string;
  endpointId: number;
  events: WebhookEvent[];
  createdAt: Date;
  attempts: number;
  /** Milliseconds until the next attempt is due (0: now). */
  dueInMs: number;
}

/** The webhook-id of a batch: stable across attempts, restarts and replays. */
export function batchId(endpointId: number, events: readonly WebhookEvent[]): string {
  return `pulse_${endpointId}_${events[0]!.seq}_${events[events.length - 1]!.seq}`;
}

/** Enabled endpoints, by id. */
export async function listEnabledEndpoints(
  db: Executor,
): Promise<Array<{ id: number; name: string }>> {
  return db
    .selectFrom('pulse_webhooks')
    .select(['id', 'name'])
    .where('enabled', '=', true)
    .orderBy('id')
    .execute();
}

/** The endpoint as it is now (the operator may change it with SQL at any time). */
export async function loadEndpoint(db: Executor, id: number): Promise<WebhookEndpoint | undefined> {
  const row = await db
    .selectFrom('pulse_webhooks')
    .select(['id', 'name', 'url', 'secret', 'transitions', 'reasons', 'enabled', 'cursor'])
    .where('id', '=', id)
    .executeTakeFirst();
  if (!row) return undefined;
  return {
    ...row,
    transitions: row.transitions as WebhookEndpoint['transitions'],
    reasons: row.reasons as WebhookEndpoint['reasons'],
  };
}

/**
 * Deletes the batches in `delivered` (the receiver took them) and returns the endpoint's next
 * pending batches, oldest first, up to `limit`: one round trip for a group of deliveries.
 */
export async function takePending(
  db: Executor,
  endpointId: number,
  delivered: readonly string[],
  limit: number,
): Promise<PendingBatch[]> {
  // The SELECT runs on the statement's snapshot, which still sees the deleted rows: skip them.
  const { rows } = await sql<{
    id: string;
    events: WebhookEvent[];
    created_at: Date;
    attempts: number;
    due_in_ms: number;
  }>`
    WITH done AS (DELETE FROM pulse_webhook_batches WHERE id = ANY(${delivered}::text[]))
    SELECT id, events, created_at, attempts,
           greatest(0, extract(epoch FROM next_attempt_at - now()) * 1000)::float8 AS due_in_ms
    FROM pulse_webhook_batches
    WHERE endpoint_id = ${endpointId} AND id <> ALL(${delivered}::text[])
    ORDER BY position
    LIMIT ${limit}`.execute(db);
  return rows.map((row) => ({
    id: row.id,
    endpointId,
    events: row.events,
    createdAt: row.created_at,
    attempts: row.attempts,
    dueInMs: row.due_in_ms,
  }));
}

/**
 * Inserts `batches` (in order) and moves the endpoint's cursor from `from` to `to`, in one
 * transaction. Returns false, changing nothing, when the cursor is no longer `from` (another
 * deliverer cut these events, or an operator moved the cursor).
 */
export async function cutBatches(
  db: Executor,
  endpointId: number,
  from: string,
  to: string,
  batches: ReadonlyArray<readonly WebhookEvent[]>,
): Promise<boolean> {
  return db.transaction().execute(async (trx) => {
    const moved = await trx
      .updateTable('pulse_webhooks')
      .set({ cursor: to })
      .where('id', '=', endpointId)
      .where('cursor', '=', from)
      .executeTakeFirst();
    if (Number(moved.numUpdatedRows) !== 1) return false;
    // One statement per batch, in order: each takes the next position.
    for (const events of batches) {
      await trx
        .insertInto('pulse_webhook_batches')
        .values({
          endpoint_id: endpointId,
          id: batchId(endpointId, events),
          first_seq: events[0]!.seq,
          last_seq: events[events.length - 1]!.seq,
          event_count: events.length,
          oldest_at: new Date(Math.min(...events.map((e) => Date.parse(e.at)))),
          events: JSON.stringify(events),
        })
        .execute();
    }
    return true;
  });
}

export interface FailedAttempt {
  /** Earliest next attempt, from now. */
  delayMs: number;
  status: number | null;
  error: string;
  /** Park instead of retrying once this long has passed since the first attempt. */
  retryForSeconds: number;
}

/**
 * Records a failed attempt and schedules the next one, or parks the batch (moves it to
 * pulse_webhook_parked) when its first attempt is `retryForSeconds` old. Returns what it did.
 */
export async function recordFailure(
  db: Executor,
  id: string,
  attempt: FailedAttempt,
): Promise<'retry' | 'parked' | 'gone'> {
  return db.transaction().execute(async (trx) => {
    const { rows } = await sql<{ expired: boolean }>`
      UPDATE pulse_webhook_batches
      SET attempts = attempts + 1,
          first_attempt_at = coalesce(first_attempt_at, now()),
          next_attempt_at = now() + make_interval(secs => ${attempt.delayMs / 1000}),
          last_status = ${attempt.status},
          last_error = ${attempt.error.slice(0, 500)}
      WHERE id = ${id}
      RETURNING now() - first_attempt_at >= make_interval(secs => ${attempt.retryForSeconds}) AS expired`.execute(
      trx,
    );
    const row = rows[0];
    if (!row) return 'gone';
    if (!row.expired) return 'retry';
    await sql`
      WITH moved AS (DELETE FROM pulse_webhook_batches WHERE id = ${id} RETURNING *)
      INSERT INTO pulse_webhook_parked (endpoint_id, id, position, first_seq, last_seq, event_count,
        oldest_at, events, created_at, attempts, first_attempt_at, next_attempt_at, last_status,
        last_error)
      SELECT endpoint_id, id, position, first_seq, last_seq, event_count, oldest_at, events,
             created_at, attempts, first_attempt_at, next_attempt_at, last_status, last_error
      FROM moved`.execute(trx);
    return 'parked';
  });
}

export interface Backlog {
  /** Transition events not yet delivered: in pending batches, and in the log past the cursor. */
  events: number;
  /** Age of the oldest of them by the database clock, in seconds (0: none). */
  oldestAgeSeconds: number;
  parkedBatches: number;
}

/** Counted up to this many log events per look (the gauge then reads "at least"). */
const BACKLOG_COUNT_CAP = 10_000_000;

/** The endpoint's backlog, by the database clock. One statement; reads the log past the cursor. */
export async function readBacklog(db: Executor, endpoint: WebhookEndpoint): Promise<Backlog> {
  const [, xmax, xipList] = endpoint.cursor.split(':');
  if (xmax === undefined || xipList === undefined)
    throw new Error(`not a snapshot: ${endpoint.cursor}`);
  const xip = xipList === '' ? [] : xipList.split(',');
  const reasons = endpoint.reasons ?? [...TRANSITION_REASONS];
  const online = endpoint.transitions.map((t) => t === 'online');
  const { rows } = await sql<{ events: string; oldest: number | null; parked: number }>`
    WITH log AS (
      SELECT at FROM pulse_events
      WHERE (tx >= ${xmax}::xid8 OR tx = ANY(${xip}::xid8[]))
        AND reason = ANY(${reasons}::text[]) AND online = ANY(${online}::boolean[])
      LIMIT ${BACKLOG_COUNT_CAP}
    ),
    pending AS (
      SELECT coalesce(sum(event_count), 0) AS n, min(oldest_at) AS oldest
      FROM pulse_webhook_batches WHERE endpoint_id = ${endpoint.id}
    )
    SELECT ((SELECT count(*) FROM log) + (SELECT n FROM pending))::text AS events,
           extract(epoch FROM now() - least((SELECT min(at) FROM log), (SELECT oldest FROM pending)))::float8
             AS oldest,
           (SELECT count(*) FROM pulse_webhook_parked WHERE endpoint_id = ${endpoint.id})::int AS parked`.execute(
    db,
  );
  const row = rows[0]!;
  return {
    events: Number(row.events),
    oldestAgeSeconds: Math.max(0, row.oldest ?? 0),
    parkedBatches: row.parked,
  };
}
