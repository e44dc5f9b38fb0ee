/**
 * Named (prepared) statements for the few statements run on every flush. PostgreSQL parses and
 * plans an unnamed statement each time it runs; for the heartbeat upsert with its change-log CTE
 * that was most of what the log added to a heartbeat's database CPU (bench:scale's log price).
 * A named one is parsed once per connection, and PostgreSQL's plan cache keeps its plan.
 *
 * A statement is registered by its text; a pool opened with `preparedStatements` runs registered
 * texts by name. Off (DATABASE_PREPARED_STATEMENTS=off) behind PgBouncer before 1.21 in
 * transaction mode, which cannot follow a name from one server connection to the next
 * (docs/operations.md).
 */
import { createHash } from 'node:crypto';
import type { PostgresCursor, PostgresPoolClient, PostgresQueryResult } from 'kysely';
import type pg from 'pg';

const names = new Map<string, string>();

/**
 * Registers `text` to run by name on pools with prepared statements on; returns it unchanged.
 * A statement the server says it does not know by its name is run again unnamed (see
 * PreparingClient). Inside a transaction that retry fails too (the transaction is aborted): the
 * transaction fails once, and the pool names nothing more.
 */
export function preparedStatement(text: string): string {
  if (!names.has(text)) {
    // The name is a digest of the text: the same text always gets the same name, another never.
    names.set(text, `pulse_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`);
  }
  return text;
}

/** Whether a pool still runs registered texts by name; shared by its clients. */
export interface NamedStatements {
  on: boolean;
  /** Called once, when a failure turns naming off. */
  turnedOff(error: unknown): void;
}

/**
 * SQLSTATEs of a name the server does not hold (26000) or already holds with another statement
 * (42P05): what a connection pooler that hands each transaction another server connection causes.
 */
const LOST_NAME = new Set(['26000', '42P05']);

/**
 * A pool client that runs registered texts by name, everything else as it is given. When the
 * server loses track of a name (PgBouncer before 1.21 in transaction mode), the statement runs
 * again unnamed and the pool stops naming: a misconfiguration costs the planning, never a beat.
 */
export class PreparingClient implements PostgresPoolClient {
  constructor(
    private readonly client: pg.PoolClient,
    private readonly named: NamedStatements,
  ) {}

  query<R>(sql: string, parameters: ReadonlyArray<unknown>): Promise<PostgresQueryResult<R>>;
  query<R>(cursor: PostgresCursor<R>): PostgresCursor<R>;
  query<R>(
    statement: string | PostgresCursor<R>,
    parameters?: ReadonlyArray<unknown>,
  ): Promise<PostgresQueryResult<R>> | PostgresCursor<R> {
    if (typeof statement !== 'string') {
      return this.client.query(
        statement as unknown as pg.Submittable,
      ) as unknown as PostgresCursor<R>;
    }
    const name = this.named.on ? names.get(statement) : undefined;
    const values = [...(parameters ?? [])];
    if (name === undefined) {
      return this.client.query(statement, values) as unknown as Promise<PostgresQueryResult<R>>;
    }
    return this.client.query({ name, text: statement, values }).catch((error: unknown) => {
      if (!LOST_NAME.has((error as { code?: string }).code ?? '')) throw error;
      if (this.named.on) {
        this.named.on = false;
        this.named.turnedOff(error);
      }
      return this.client.query(statement, values);
    }) as unknown as Promise<PostgresQueryResult<R>>;
  }

  release(destroy?: boolean): void {
    this.client.release(destroy);
  }
}
