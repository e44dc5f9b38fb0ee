/**
 * GET and PUT /status/privacy: a user's own invisible mode and hidden last seen (pulse_privacy).
 * Whose: the token's `sub`; `user_id` names another user only for a caller who may write for
 * them (a gateway, or AUTH_MODE=none, where it is required). Every status answer and stream event
 * applies these settings (lib/store/pulse-store.ts).
 */
import type { Request, RequestHandler } from 'express';
import {
  readPrivacy,
  writePrivacy,
  type Executor,
  type PrivacySettings,
} from '../../lib/store/pulse-store.ts';
import { assertMayWrite, principalOf } from '../edge/auth.ts';
import { HttpError } from '../edge/errors.ts';
import { parseOptionalUserIdParam, parsePrivacyBody, requireJson } from '../edge/validation.ts';

function ownerOf(req: Request, requested: number | undefined): number {
  const principal = principalOf(req);
  const userId = requested ?? principal.userId;
  if (userId === undefined) {
    throw new HttpError(
      'invalid_user_id',
      'user_id is required: this caller is not a user (no user id in the token sub)',
    );
  }
  assertMayWrite(principal, [userId]);
  return userId;
}

const answer = (userId: number, settings: PrivacySettings) => ({
  user_id: userId,
  invisible: settings.invisible,
  hide_last_seen: settings.hideLastSeen,
});

export function privacyRoutes(
  db: Executor,
  inTime: <T>(res: Parameters<RequestHandler>[1], work: Promise<T>) => Promise<T>,
): { get: RequestHandler; put: RequestHandler } {
  return {
    async get(req, res) {
      const userId = ownerOf(
        req,
        parseOptionalUserIdParam((req.query as Record<string, unknown>).user_id),
      );
      res.json(answer(userId, await inTime(res, readPrivacy(db, userId))));
    },
    async put(req, res) {
      requireJson(req);
      const body = parsePrivacyBody(req.body);
      const userId = ownerOf(req, body.userId);
      const settings = await inTime(
        res,
        writePrivacy(db, userId, { invisible: body.invisible, hideLastSeen: body.hideLastSeen }),
      );
      res.json(answer(userId, settings));
    },
  };
}
