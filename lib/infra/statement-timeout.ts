/**
 * Whether the server really enforces the statement timeout a process asks for.
 *
 * Pulse asks for it as a connection startup parameter (lib/infra/db.ts). PgBouncer refuses unknown
 * startup parameters, and the usual remedy (`ignore_startup_parameters = statement_timeout`)
 * drops it silently: server connections then run with the role's or database's setting, often
 * none. The remedy that keeps the limit is to set it where PgBouncer's server connections pick
 * it up, on the role or the database (`ALTER ROLE pulse SET statement_timeout = '15s'`): every
 * backend starts with it, in any pool mode. This check makes a missing limit visible at start.
 */
import { sql, type Kysely } from 'kysely';
import type { Logger } from './logger.ts';

/** The server's statement_timeout on a connection of `db`, in ms (0: none). */
export async function serverStatementTimeoutMs<DB>(db: Kysely<DB>): Promise<number> {
  const { rows } = await sql<{ ms: string }>`
    SELECT setting AS ms FROM pg_settings WHERE name = 'statement_timeout'`.execute(db);
  return Number(rows[0]?.ms ?? 0);
}

/**
 * Warns when the server would let a statement run longer than `expectedMs` (e.g. behind
 * PgBouncer with the startup parameter ignored). Never throws: a database that is down at start
 * is the readiness probe's business. Returns the timeout found, or undefined when unknown.
 */
export async function checkStatementTimeout<DB>(
  db: Kysely<DB>,
  expectedMs: number,
  logger: Logger,
): Promise<number | undefined> {
  let actualMs: number;
  try {
    actualMs = await serverStatementTimeoutMs(db);
  } catch (error) {
    logger.debug(
      { error: error instanceof Error ? error.message : String(error) },
      'statement timeout not checked: the database did not answer',
    );
    return undefined;
  }
  if (actualMs === 0 || actualMs > expectedMs) {
    logger.warn(
      { statementTimeoutMs: actualMs, expectedMs },
      `the database does not cancel statements after ${expectedMs / 1000} s: behind PgBouncer, ` +
        `set it on the role (ALTER ROLE <user> SET statement_timeout = '${expectedMs / 1000}s'), see docs/operations.md`,
    );
  }
  return actualMs;
}
