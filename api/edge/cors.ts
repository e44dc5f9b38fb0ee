/**
 * CORS for browser clients on other origins (CORS_ORIGINS). Only the listed origins, compared
 * exactly, are answered with Access-Control-Allow-Origin (never "*"), and credentials are never
 * allowed: Pulse authenticates with a bearer token in a header, not with cookies, so a page needs
 * no credentialed request. Preflights are answered here, before authentication, and cached by the
 * browser for ten minutes. Retry-After is exposed: the client reads it to back off after a 503.
 */
import cors from 'cors';
import type { RequestHandler } from 'express';

export function createCors(origins: readonly string[]): RequestHandler | undefined {
  if (origins.length === 0) return undefined;
  return cors({
    origin: [...origins],
    methods: ['GET', 'POST'],
    allowedHeaders: ['authorization', 'content-type', 'x-request-id'],
    exposedHeaders: [
      'retry-after',
      'www-authenticate',
      'x-request-id',
      'pulse-online-threshold-seconds',
    ],
    credentials: false,
    maxAge: 600,
  });
}
