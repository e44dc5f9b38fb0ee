import { expect } from 'chai';
import { sql } from 'kysely';
import { createTestDatabase, type TestDatabase } from './support/database.ts';

/** What `\d+` shows a DBA: the comment of every Pulse table, view and column. */
describe('the schema explains itself', () => {
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
  });
  after(async () => {
    await database.drop();
  });

  // The change log's daily partitions are described by their parent (pulse_events).
  it('every Pulse table, view and column has a comment', async () => {
    const { rows } = await sql<{ relation: string; column: string | null; comment: string | null }>`
      SELECT c.relname AS relation, NULL AS column, obj_description(c.oid, 'pg_class') AS comment
      FROM pg_class c
      WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'v', 'p')
        AND c.relname LIKE 'pulse%' AND NOT c.relispartition
      UNION ALL
      SELECT c.relname, a.attname, col_description(c.oid, a.attnum)
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'v', 'p')
        AND c.relname LIKE 'pulse%' AND NOT c.relispartition`.execute(database.db);
    const relations = new Set(rows.map((r) => r.relation));
    expect([...relations].sort()).to.deep.equal([
      'pulse',
      'pulse_devices',
      'pulse_events',
      'pulse_job_leases',
      'pulse_last_seen',
      'pulse_online',
      'pulse_privacy',
      'pulse_settings',
      'pulse_sweeper_lease',
      'pulse_visibility_changes',
      'pulse_webhook_batches',
      'pulse_webhook_parked',
      'pulse_webhooks',
    ]);
    const missing = rows
      .filter((r) => !r.comment?.trim())
      .map((r) => (r.column ? `${r.relation}.${r.column}` : r.relation));
    expect(missing, 'objects without a comment').to.deep.equal([]);
  });

  it('the comments state the online rule where a DBA looks for it', async () => {
    const { rows } = await sql<{ pulse: string; threshold: string }>`
      SELECT obj_description('pulse'::regclass, 'pg_class') AS pulse,
             col_description('pulse_settings'::regclass, 2) AS threshold`.execute(database.db);
    expect(rows[0]?.pulse).to.match(
      /online when last_hb > now\(\) - pulse_settings\.online_threshold_seconds/,
    );
    expect(rows[0]?.threshold).to.match(/^The online rule/);
  });
});
