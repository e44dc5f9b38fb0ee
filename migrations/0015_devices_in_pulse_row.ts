import { sql, type Kysely } from 'kysely';

/*
 * A user on several devices keeps their devices in their own `pulse` row (a `devices` array)
 * instead of a row each in pulse_devices: a beat from one of them is then one row write, as a
 * beat of a user on one device is (two rows cost twice: docs/benchmarks.md, bench:devices).
 * `device_key` becomes the device of the newest beat in every row, and `pulse_devices` a view
 * listing every device of every user, so a DBA's queries of it keep working. The client's device
 * id text is no longer stored: Pulse only ever compares the 32-bit key, as it always did for
 * users on one device.
 *
 * The heartbeat decides a user's devices with pulse_devices_after_beat(), a function of the row
 * and the beat only (IMMUTABLE): Citus allows no subquery and no STABLE function in an INSERT's
 * ON CONFLICT DO UPDATE SET, and the same statement serves both.
 *
 * Users on several devices when it runs (device_key NULL, a pulse_devices row per device) are not
 * moved: presence lasts a beat interval, and moving them is an UPDATE of each such row under the
 * ACCESS EXCLUSIVE lock below (3.1 s at 10,000,000 rows with one user in 100 on two devices,
 * measured). Until their next beat they read as on one device (the kind of their newest beat),
 * and a device's offline leaves them as they are (their device is not known); the next beat sets
 * device_key, and their other device joins again at its own next beat. Their online state never
 * depends on devices (last_hb).
 *
 * Locks: ADD COLUMN with no default is a catalog change (no rewrite, no scan), and nothing here
 * reads or writes `pulse`'s rows, so the ACCESS EXCLUSIVE lock lasts milliseconds whatever the
 * table's size. lock_timeout keeps a request queued behind a long reader from stalling heartbeats.
 * Measured with `npm run bench:migration-locks` (docs/lifecycle.md).
 */
export async function up(db: Kysely<any>): Promise<void> {
  await sql`SET LOCAL lock_timeout = '5s'`.execute(db);
  await sql`CREATE TYPE pulse_device AS (
    device_key integer, device_kind pulse_device_kind, last_hb timestamptz
  )`.execute(db);
  await sql`ALTER TABLE pulse ADD COLUMN devices pulse_device[]`.execute(db);
  // Newest first, at most 16 (a client inventing device ids cannot grow a row without bound).
  // The beat goes in its place by time: two beats whose statements commit out of order (the
  // later now() first) stay in order.
  await sql`CREATE FUNCTION pulse_devices_after_beat(
      devices pulse_device[], own pulse_device, beat pulse_device, online_threshold interval
    ) RETURNS pulse_device[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
    DECLARE
      -- Types by %TYPE, never by name: on a Citus worker the body runs with the worker
      -- connection's search_path, where the schema's own type names may not resolve.
      list devices%TYPE := coalesce(devices, ARRAY[own]);
      after devices%TYPE := '{}';
      placed boolean := false;
    BEGIN
      FOR i IN 1 .. cardinality(list) LOOP
        IF (list[i]).device_key <> beat.device_key
           AND beat.last_hb - (list[i]).last_hb < online_threshold THEN
          IF NOT placed AND (list[i]).last_hb <= beat.last_hb THEN
            after := after || beat;
            placed := true;
          END IF;
          after := after || list[i];
        END IF;
      END LOOP;
      IF NOT placed THEN
        after := after || beat;
      END IF;
      RETURN CASE WHEN cardinality(after) > 1 THEN after[1:16] END;
    END $$`.execute(db);
  // What readers take of a user on several devices: a function, since Citus refuses a
  // correlated subquery over a function's rows (unnest) in a distributed query.
  await sql`CREATE FUNCTION pulse_fresh_device_kinds(devices pulse_device[], fresh_after timestamptz)
    RETURNS text[] LANGUAGE sql STABLE PARALLEL SAFE AS $$
      SELECT ARRAY(SELECT d.device_kind::text FROM unnest(devices) AS d
                   WHERE d.last_hb > fresh_after)
    $$`.execute(db);
  await sql`DROP TABLE pulse_devices`.execute(db);
  await sql`CREATE VIEW pulse_devices AS
    SELECT p.user_id, d.device_key, d.device_kind, d.last_hb
    FROM pulse p
    CROSS JOIN LATERAL unnest(coalesce(
      p.devices, ARRAY[ROW(p.device_key, p.device_kind, p.last_hb)::pulse_device])) AS d`.execute(
    db,
  );
  const comments: Array<[string, string]> = [
    [
      'TYPE pulse_device',
      'One device of a user on several (an element of pulse.devices): its key, kind and last heartbeat.',
    ],
    [
      'COLUMN pulse.device_key',
      "The device of the newest heartbeat (of last_hb): a 32-bit hash (FNV-1a, as a signed integer) of the client's device id, 0 for requests naming no device. With devices NULL, the user's one device.",
    ],
    [
      'COLUMN pulse.devices',
      'NULL while the user is on one device. While on several at once: each device (device_key, device_kind, last_hb), newest first, at most 16. A device is fresh while its last_hb > now() - pulse_settings.online_threshold_seconds; the user is online while any is. Each beat drops the stale ones (pulse_devices_after_beat), taking a user left with one fresh device back to NULL. Readable as rows in the view pulse_devices.',
    ],
    [
      'FUNCTION pulse_devices_after_beat(pulse_device[], pulse_device, pulse_device, interval)',
      "A heartbeat's new pulse.devices: the beating device and the row's other devices (devices, or the row's own device when NULL) still fresh by online_threshold at the beat's time, newest first, at most 16; NULL when no other is fresh (the user is on one device).",
    ],
    [
      'FUNCTION pulse_fresh_device_kinds(pulse_device[], timestamptz)',
      'The kind of each device of a pulse.devices array that beat after fresh_after (NULL for a device that gave none): how the API counts and names the fresh devices of a user on several.',
    ],
    [
      'VIEW pulse_devices',
      "Every device of every user in pulse, one row each: the row's own device (device_key, 0 when the client named none) for a user on one, each element of pulse.devices for a user on several. A device is fresh while last_hb > now() - pulse_settings.online_threshold_seconds.",
    ],
    ['COLUMN pulse_devices.user_id', 'The user (pulse.user_id).'],
    [
      'COLUMN pulse_devices.device_key',
      "The 32-bit hash (FNV-1a, signed) of the client's device id, 0 for requests naming no device.",
    ],
    ['COLUMN pulse_devices.device_kind', 'Kind of the device as the client said, or NULL.'],
    [
      'COLUMN pulse_devices.last_hb',
      "Time of this device's last heartbeat, by the database clock.",
    ],
  ];
  await describe(db, comments);
  await sql`SET LOCAL lock_timeout TO DEFAULT`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await sql`SET LOCAL lock_timeout = '5s'`.execute(db);
  await sql`DROP VIEW pulse_devices`.execute(db);
  // As migration 0012 made it, empty: users on several devices keep device_key (their newest
  // beat's device), which 0012 reads as their one device until another device beats.
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
  await sql`ALTER TABLE pulse DROP COLUMN devices`.execute(db);
  // 0012's words again, for the table and the column 0012 described.
  const comments: Array<[string, string]> = [
    [
      'COLUMN pulse.device_key',
      "The device of the newest heartbeat: a 32-bit hash (FNV-1a, as a signed integer) of the client's device id, 0 for a request naming no device, NULL while the user is on several devices at once (then see pulse_devices). last_hb is always the newest beat of any device.",
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
  await describe(db, comments);
  await sql`DROP FUNCTION pulse_fresh_device_kinds(pulse_device[], timestamptz)`.execute(db);
  await sql`DROP FUNCTION pulse_devices_after_beat(pulse_device[], pulse_device, pulse_device, interval)`.execute(
    db,
  );
  await sql`DROP TYPE pulse_device`.execute(db);
  await sql`SET LOCAL lock_timeout TO DEFAULT`.execute(db);
}

/** `COMMENT ON` each target (`TABLE x`, `COLUMN x.y`, ...) with its text. */
async function describe(db: Kysely<any>, comments: ReadonlyArray<[string, string]>): Promise<void> {
  for (const [target, text] of comments) {
    await sql`COMMENT ON ${sql.raw(target)} IS ${sql.lit(text)}`.execute(db);
  }
}
