import { sql, type Kysely } from 'kysely';

/*
 * One user, many devices (issue 22). `pulse` stays one row per user: it gains the device of the
 * newest beat as a 4-byte key (a 32-bit hash of the client's device id, 0 for requests naming none,
 * NULL while the user is on several devices) and its kind (an enum: 4 bytes, read as text). The
 * device ids themselves, and every device of a user on two or more at once, live in the
 * co-located pulse_devices, written only while a user has several fresh devices.
 *
 * Locks: ADD COLUMN with a constant default or none is a catalog change (no rewrite, no scan), but
 * it takes ACCESS EXCLUSIVE on `pulse` until the transaction commits; lock_timeout keeps a request
 * queued behind a long reader from stalling heartbeats. Nothing here reads or rewrites `pulse`.
 * Measured with `npm run bench:migration-locks` (docs/lifecycle.md).
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`SET LOCAL lock_timeout = '5s'`.execute(db);
  await sql`CREATE TYPE pulse_device_kind AS ENUM ('desktop', 'mobile', 'other', 'web')`.execute(
    db,
  );
  await sql`ALTER TABLE pulse ADD COLUMN device_key integer DEFAULT 0,
    ADD COLUMN device_kind pulse_device_kind`.execute(db);
  await sql`CREATE TABLE pulse_devices (
    user_id bigint NOT NULL,
    device_key integer NOT NULL,
    last_hb timestamptz NOT NULL,
    device_kind pulse_device_kind,
    device_id text,
    PRIMARY KEY (user_id, device_key)
  ) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)`.execute(
    db,
  );
  const comments: Array<[string, string]> = [
    [
      'TYPE pulse_device_kind',
      'What kind of client a device is (as the client says): desktop, mobile, other, web.',
    ],
    [
      'COLUMN pulse.device_key',
      "The device of the newest heartbeat: a 32-bit hash (FNV-1a, as a signed integer) of the client's device id, 0 for a request naming no device, NULL while the user is on several devices at once (then see pulse_devices). last_hb is always the newest beat of any device.",
    ],
    [
      'COLUMN pulse.device_kind',
      'Kind of the device of the newest heartbeat (web, mobile, desktop, other), NULL when not given.',
    ],
    [
      'TABLE pulse_devices',
      "Devices of users on two or more devices at once: one row per (user, device), written only while the user's pulse row says several devices (pulse.device_key IS NULL). A device is fresh when last_hb > now() - pulse_settings.online_threshold_seconds; the user is online while any is. Rows go when a device goes offline explicitly (a user left with one device is back to one pulse row), and by the sweeper once stale (which also takes users left with one device back to one row). Co-located with pulse (distributed by user_id on Citus).",
    ],
    ['COLUMN pulse_devices.user_id', 'The user (pulse.user_id).'],
    [
      'COLUMN pulse_devices.device_key',
      'The 32-bit hash (FNV-1a, signed) of device_id, 0 for requests naming no device: the key pulse.device_key compares with.',
    ],
    [
      'COLUMN pulse_devices.last_hb',
      "Time of this device's last heartbeat, by the database clock.",
    ],
    ['COLUMN pulse_devices.device_kind', 'Kind of the device as the client said, or NULL.'],
    [
      'COLUMN pulse_devices.device_id',
      "The client's own device id (1-64 chars of [A-Za-z0-9._:-]); NULL for requests naming no device, and until the device beats again when it was the user's only device before.",
    ],
  ];
  for (const [target, text] of comments) {
    await sql`COMMENT ON ${sql.raw(target)} IS ${sql.lit(text)}`.execute(db);
  }
  // The migrations after this one run in the same transaction.
  await sql`SET LOCAL lock_timeout TO DEFAULT`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`SET LOCAL lock_timeout = '5s'`.execute(db);
  await sql`DROP TABLE pulse_devices`.execute(db);
  await sql`ALTER TABLE pulse DROP COLUMN device_key, DROP COLUMN device_kind`.execute(db);
  await sql`DROP TYPE pulse_device_kind`.execute(db);
  await sql`SET LOCAL lock_timeout TO DEFAULT`.execute(db);
}
