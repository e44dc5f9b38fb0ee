import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/** Request headers that carry credentials: never written to a log. */
const REDACTED = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["proxy-authorization"]',
];

export function createLogger(name: string, level: string, destination?: DestinationStream): Logger {
  const options = { name, level, redact: { paths: REDACTED, censor: '[redacted]' } };
  return destination ? pino(options, destination) : pino(options);
}
