/**
 * The PostgreSQL server the tests use: DATABASE_URL when set, otherwise an embedded PostgreSQL
 * booted once per run. Every run works in fresh databases copied from a migrated template.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { startThrowawayPostgres, type EmbeddedServer } from '../../dev/embedded-postgres.ts';

export { freePort } from '../../dev/embedded-postgres.ts';
import { openDatabase } from '../../lib/infra/db.ts';
import { createLogger } from '../../lib/infra/logger.ts';
import { migrateToLatest } from '../../lib/store/migrator.ts';

export const SERVER_URL_VAR = 'PULSE_TEST_SERVER_URL';
export const TEMPLATE_DB_VAR = 'PULSE_TEST_TEMPLATE_DB';

export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

export function uniqueName(prefix: string): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
}

/** One statement on its own connection (another session than the pool under test). */
export async function queryOnce<R extends pg.QueryResultRow = pg.QueryResultRow>(
  url: string,
  text: string,
  values?: unknown[],
): Promise<pg.QueryResult<R>> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query<R>(text, values);
  } finally {
    await client.end();
  }
}

export async function adminQuery(serverUrl: string, text: string): Promise<void> {
  await queryOnce(serverUrl, text);
}

let embedded: EmbeddedServer | undefined;

export async function startTestServer(): Promise<{ serverUrl: string; templateDb: string }> {
  let serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    embedded = await startThrowawayPostgres([
      '-c',
      'fsync=off',
      '-c',
      'full_page_writes=off',
      '-c',
      'max_connections=300',
    ]);
    serverUrl = embedded.url;
  }
  const templateDb = uniqueName('pulse_test_template');
  await adminQuery(serverUrl, `CREATE DATABASE ${templateDb}`);
  const template = openDatabase({
    connectionString: withDatabase(serverUrl, templateDb),
    poolMax: 1,
    applicationName: 'pulse-test',
    logger: createLogger('test', 'silent'),
  });
  try {
    await migrateToLatest(template.db);
  } finally {
    await template.close();
  }
  return { serverUrl, templateDb };
}

export async function stopTestServer(serverUrl: string, templateDb: string): Promise<void> {
  if (embedded) {
    await embedded.stop();
    return;
  }
  await adminQuery(serverUrl, `DROP DATABASE IF EXISTS ${templateDb} WITH (FORCE)`);
}
