import type { ColumnType } from 'kysely';

/** Row shape of `pulse`: one row per user who has sent a heartbeat and not yet been swept. */
export interface PulseTable {
  /** bigint: pg returns it as a string, Pulse writes JS numbers (at most 2^53 - 1). */
  user_id: ColumnType<string, number, never>;
  last_hb: ColumnType<Date, Date | undefined, Date>;
  /** Non-null exactly while the change log's last transition of this user is `online`. */
  online_since: ColumnType<Date | null, Date | null | undefined, Date | null>;
  /** deviceKey(device_id) of the newest beat's device; 0: none named (null: a row of 0012's several devices, until its next beat). */
  device_key: ColumnType<number | null, number | null | undefined, number | null>;
  device_kind: ColumnType<DeviceKind | null, DeviceKind | null | undefined, DeviceKind | null>;
  /** While on several devices: each one (pulse_device), newest first; null on one. Read as text by pg. */
  devices: ColumnType<string | null, never, never>;
}

/** What kind of client a device is (pulse_device_kind). */
export type DeviceKind = 'desktop' | 'mobile' | 'other' | 'web';

/** The view of every device of every user in pulse (migration 0015): read only. */
export interface PulseDevicesView {
  user_id: ColumnType<string, never, never>;
  device_key: ColumnType<number, never, never>;
  last_hb: ColumnType<Date, never, never>;
  device_kind: ColumnType<DeviceKind | null, never, never>;
}

/** The sweepers' lease: at most one row (id = 1), see lib/store/sweep-lease.ts. */
export interface SweeperLeaseTable {
  id: number;
  holder: string | null;
  renewed_at: ColumnType<Date, Date | undefined, Date>;
  expires_at: Date;
}

/** The shared presence rules: one row (id = 1), see lib/store/pulse-store.ts and docs/lifecycle.md. */
export interface PulseSettingsTable {
  id: ColumnType<number, never, never>;
  online_threshold_seconds: number;
  last_seen_enabled: boolean;
  last_seen_retention_days: number;
  event_retention_days: number;
  updated_at: ColumnType<Date, never, Date>;
}

/** Last seen of users whose `pulse` row was removed (swept or explicit offline). */
export interface PulseLastSeenTable {
  user_id: ColumnType<string, number, never>;
  last_seen: Date;
}

/** The presence change log (partitioned by day on `at`), see lib/store/presence-log.ts. */
export interface PulseEventsTable {
  seq: ColumnType<string, never, never>;
  user_id: ColumnType<string, number, never>;
  online: boolean;
  reason: 'heartbeat' | 'held' | 'offline' | 'threshold' | 'sweep';
  at: ColumnType<Date, Date | undefined, never>;
  last_seen: Date | null;
  /** xid8, as text. */
  tx: ColumnType<string, never, never>;
}

/** Once-per-database jobs (the offline detector), see lib/store/job-lease.ts. */
export interface JobLeasesTable {
  job: string;
  holder: string | null;
  renewed_at: ColumnType<Date, Date | undefined, Date>;
  expires_at: Date;
}

/** Each user's own presence privacy (migration 0007): invisible mode, hidden last seen. */
export interface PulsePrivacyTable {
  user_id: ColumnType<string, number, never>;
  invisible: boolean;
  hide_last_seen: boolean;
  invisible_since: Date | null;
  updated_at: ColumnType<Date, Date | undefined, Date>;
}

/** Users whose audience changed with no transition (migration 0008), read by live streams. */
export interface PulseVisibilityChangesTable {
  user_id: ColumnType<string, number, never>;
  reason: 'privacy' | 'rule';
  at: ColumnType<Date, Date | undefined, never>;
  tx: ColumnType<string, never, never>;
}

/** Webhook endpoints, managed with SQL by the operator (migration 0009, docs/webhooks.md). */
export interface WebhooksTable {
  id: ColumnType<number, number | undefined, never>;
  name: string;
  url: string;
  secret: string;
  transitions: ColumnType<string[], string[] | undefined, string[]>;
  reasons: ColumnType<string[] | null, string[] | null | undefined, string[] | null>;
  enabled: ColumnType<boolean, boolean | undefined, boolean>;
  /** pg_snapshot as text: the log is cut into batches up to here. */
  cursor: ColumnType<string, string | undefined, string>;
  created_at: ColumnType<Date, Date | undefined, never>;
}

/** A batch cut from the log for one endpoint: pending (or, in pulse_webhook_parked, parked). */
export interface WebhookBatchesTable {
  endpoint_id: number;
  id: string;
  position: ColumnType<string, string | undefined, never>;
  first_seq: ColumnType<string, string, never>;
  last_seq: ColumnType<string, string, never>;
  event_count: number;
  oldest_at: Date;
  events: ColumnType<unknown[], string, never>;
  created_at: ColumnType<Date, Date | undefined, never>;
  attempts: ColumnType<number, number | undefined, number>;
  first_attempt_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
  next_attempt_at: ColumnType<Date, Date | undefined, Date>;
  last_status: ColumnType<number | null, number | null | undefined, number | null>;
  last_error: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface WebhookParkedTable extends WebhookBatchesTable {
  parked_at: ColumnType<Date, Date | undefined, never>;
}

export interface Database {
  pulse: PulseTable;
  pulse_sweeper_lease: SweeperLeaseTable;
  pulse_settings: PulseSettingsTable;
  pulse_last_seen: PulseLastSeenTable;
  pulse_devices: PulseDevicesView;
  pulse_events: PulseEventsTable;
  pulse_job_leases: JobLeasesTable;
  pulse_privacy: PulsePrivacyTable;
  pulse_visibility_changes: PulseVisibilityChangesTable;
  pulse_webhooks: WebhooksTable;
  pulse_webhook_batches: WebhookBatchesTable;
  pulse_webhook_parked: WebhookParkedTable;
}
