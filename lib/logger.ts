import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

export function createLogger(name: string, level: string, destination?: DestinationStream): Logger {
  // Request lines carry id, method and url only (api/app.ts): headers, and so tokens, are never logged.
  const options = { name, level };
  return destination ? pino(options, destination) : pino(options);
}
