import type { Request } from 'express';
import { z } from 'zod';
import { HttpError } from './errors.ts';
import { DEVICE_KINDS, type DeviceKind } from '../../lib/store/pulse-store.ts';

const userId = z
  .number({
    error: (issue) =>
      issue.input === undefined ? 'user_id is required' : 'user_id must be a number',
  })
  .int('user_id must be an integer')
  .min(1, 'user_id must be at least 1')
  .max(Number.MAX_SAFE_INTEGER, `user_id must be at most ${Number.MAX_SAFE_INTEGER}`);

/** An opaque id the client keeps per device (issue 22). */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;
const DEVICE_ID_RULE = 'device_id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -';
const DEVICE_KIND_RULE = `device_kind must be one of ${DEVICE_KINDS.join(', ')}`;

const deviceId = z.string({ error: DEVICE_ID_RULE }).regex(DEVICE_ID_PATTERN, DEVICE_ID_RULE);
const deviceKind = z.enum(DEVICE_KINDS, { error: DEVICE_KIND_RULE });

/**
 * A user reference, optionally naming the device it comes from. Unknown fields are ignored, on
 * purpose and everywhere: clients may send extra data such as `timestamp`, which never influences
 * `last_hb` (the database clock does).
 */
const userRef = z.object(
  { user_id: userId, device_id: deviceId.optional(), device_kind: deviceKind.optional() },
  { error: 'each item must be an object with user_id' },
);

const userRefList = z.array(userRef, {
  error: 'the body must be a JSON array of {"user_id": ...}',
});

function fail(error: z.ZodError): never {
  const issue = error.issues[0];
  const field = issue?.path.at(-1);
  throw new HttpError(
    field === 'user_id'
      ? 'invalid_user_id'
      : field === 'device_id' || field === 'device_kind'
        ? 'invalid_device'
        : 'invalid_body',
    // The message names its field already; only an item of an array needs saying which.
    issue
      ? `${typeof issue.path[0] === 'number' ? `item ${issue.path[0]}: ` : ''}${issue.message}`
      : 'invalid body',
  );
}

/**
 * 415 unless the body was sent as application/json. Runs after the JSON parser, which parses only
 * application/json: a parsed body has passed this check already (no second content type parse).
 */
export function requireJson(req: Request): void {
  if (req.body !== undefined) return;
  if (!req.is('application/json')) {
    throw new HttpError('unsupported_media_type', 'send the body as application/json');
  }
}

function checkCount(count: number, max: number): void {
  if (count > max) {
    throw new HttpError('too_many_ids', `at most ${max} user ids per request (got ${count})`);
  }
}

/** The devices a heartbeat or offline names, parallel to its user ids. */
export interface NamedDevices {
  ids: Array<string | null>;
  kinds: Array<DeviceKind | null>;
}

export interface HeartbeatBody {
  userIds: number[];
  many: boolean;
  /** Absent when no item names a device or a kind (the requests of before devices). */
  devices: NamedDevices | undefined;
}

/**
 * `{"user_id": n, "device_id"?: s, "device_kind"?: k}` (one user) or an array of those (a gateway
 * reporting many).
 */
export function parseHeartbeatBody(body: unknown, maxIds: number): HeartbeatBody {
  if (Array.isArray(body)) checkCount(body.length, maxIds);
  const result = (Array.isArray(body) ? userRefList : userRef).safeParse(body);
  if (!result.success) fail(result.error);
  const refs = Array.isArray(result.data) ? result.data : [result.data];
  let devices: NamedDevices | undefined;
  refs.forEach((ref, index) => {
    if (ref.device_id === undefined && ref.device_kind === undefined) return;
    devices ??= { ids: refs.map(() => null), kinds: refs.map(() => null) };
    devices.ids[index] = ref.device_id ?? null;
    devices.kinds[index] = ref.device_kind ?? null;
  });
  return { userIds: refs.map((ref) => ref.user_id), many: Array.isArray(body), devices };
}

/** `[{"user_id": n}, ...]`, in request order, duplicates kept. */
export function parseBatchBody(body: unknown, maxIds: number): number[] {
  if (Array.isArray(body)) checkCount(body.length, maxIds);
  const result = userRefList.safeParse(body);
  if (!result.success) fail(result.error);
  return result.data.map((r) => r.user_id);
}

/** A path segment holding a user id in plain decimal, 1 to 2^53 - 1. */
export function parseUserIdParam(raw: string): number {
  const value = /^[1-9]\d{0,15}$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(value)) {
    throw new HttpError(
      'invalid_user_id',
      `user id must be a decimal integer from 1 to ${Number.MAX_SAFE_INTEGER}`,
    );
  }
  return value;
}

/**
 * The stream's `watch` query parameter: user ids separated by commas ("1,2,3"), in the order given
 * (duplicates answered as given, like /status/batch). Absent or empty: nothing watched. Repeated
 * (watch=1&watch=2) is read as one list.
 */
export function parseWatchParam(raw: unknown, maxIds: number): number[] {
  if (raw === undefined) return [];
  const parts = Array.isArray(raw) ? raw : [raw];
  if (!parts.every((part): part is string => typeof part === 'string')) {
    throw new HttpError('invalid_user_id', 'watch must be user ids separated by commas');
  }
  const text = parts.filter((part) => part !== '').join(',');
  if (text === '') return [];
  const items = text.split(',');
  checkCount(items.length, maxIds);
  return items.map((item) => parseUserIdParam(item.trim()));
}

/**
 * The stream's `hold` query parameter: `true` asks the stream to hold presence, `false` or absent
 * only watches. Watching is not presence: a token alone never holds anyone (issue 22).
 */
export function parseHoldParam(raw: unknown): boolean {
  if (raw === undefined || raw === 'false') return false;
  if (raw === 'true') return true;
  throw new HttpError('invalid_request', 'hold must be true or false, given once');
}

/** The stream's `device_id` and `device_kind` query parameters (each at most once). */
export function parseDeviceParams(query: Record<string, unknown>): {
  deviceId: string | undefined;
  kind: DeviceKind | undefined;
} {
  const { device_id: id, device_kind: kind } = query;
  if (id !== undefined && (typeof id !== 'string' || !DEVICE_ID_PATTERN.test(id))) {
    throw new HttpError('invalid_device', `${DEVICE_ID_RULE}, given once`);
  }
  if (kind !== undefined && !(DEVICE_KINDS as readonly unknown[]).includes(kind)) {
    throw new HttpError('invalid_device', `${DEVICE_KIND_RULE}, given once`);
  }
  return { deviceId: id, kind: kind as DeviceKind | undefined };
}

/** The stream's `user_id` query parameter: whose presence a stream with hold=true holds. */
export function parseOptionalUserIdParam(raw: unknown): number | undefined {
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string') {
    throw new HttpError('invalid_user_id', 'user_id must be given once');
  }
  return parseUserIdParam(raw);
}

const privacyBody = z
  .object(
    {
      user_id: userId.optional(),
      invisible: z.boolean({ error: 'invisible must be true or false' }).optional(),
      hide_last_seen: z.boolean({ error: 'hide_last_seen must be true or false' }).optional(),
    },
    { error: 'the body must be a JSON object' },
  )
  .refine((b) => b.invisible !== undefined || b.hide_last_seen !== undefined, {
    message: 'set invisible, hide_last_seen or both',
  });

/** `{"invisible"?: bool, "hide_last_seen"?: bool, "user_id"?: n}`, at least one setting. */
export function parsePrivacyBody(body: unknown): {
  userId: number | undefined;
  invisible: boolean | undefined;
  hideLastSeen: boolean | undefined;
} {
  const result = privacyBody.safeParse(body);
  if (!result.success) fail(result.error);
  return {
    userId: result.data.user_id,
    invisible: result.data.invisible,
    hideLastSeen: result.data.hide_last_seen,
  };
}

/** The longest grace an offline may ask for (`?grace_ms=`): a page reload takes well under it. */
export const MAX_OFFLINE_GRACE_MS = 10_000;

/** `grace_ms` of POST /status/offline: absent is 0 (at once), else 0 to MAX_OFFLINE_GRACE_MS. */
export function parseGraceParam(raw: unknown): number {
  if (raw === undefined) return 0;
  const value = typeof raw === 'string' && /^\d{1,5}$/.test(raw) ? Number(raw) : NaN;
  if (!(value <= MAX_OFFLINE_GRACE_MS)) {
    throw new HttpError(
      'invalid_request',
      `grace_ms must be an integer from 0 to ${MAX_OFFLINE_GRACE_MS}`,
    );
  }
  return value;
}
