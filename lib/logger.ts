import { createRequire } from 'node:module';
import { pino, type DestinationStream, type Logger } from 'pino';
import type PinoPretty from 'pino-pretty';

export type { Logger };

/** LOG_FORMAT: `json` for machines, `pretty` for a person, `auto` decides by the terminal. */
export type LogFormat = 'auto' | 'json' | 'pretty';

export function createLogger(name: string, level: string, destination?: DestinationStream): Logger {
  // Request lines carry id, method and url only (api/app.ts): headers, and so tokens, are never logged.
  const options = { name, level };
  return destination ? pino(options, destination) : pino(options);
}

/** `auto`: readable lines when stdout is a terminal (npm start), JSON otherwise (containers, pipes). */
export function resolveLogFormat(format: LogFormat, isTTY: boolean): 'json' | 'pretty' {
  if (format !== 'auto') return format;
  return isTTY ? 'pretty' : 'json';
}

/** pino-pretty is a devDependency: a production install has none, and then logs stay JSON. */
function loadPinoPretty(): typeof PinoPretty | undefined {
  try {
    return createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
  } catch {
    return undefined;
  }
}

/** The logger of an entry point: JSON lines, or readable ones for a person at a terminal. */
export function createProcessLogger(name: string, level: string, format: LogFormat): Logger {
  const pretty =
    resolveLogFormat(format, process.stdout.isTTY === true) === 'pretty'
      ? loadPinoPretty()
      : undefined;
  if (!pretty) return createLogger(name, level);
  return createLogger(
    name,
    level,
    // Synchronous, so the last lines before process.exit() are never lost.
    pretty({ sync: true, translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname', destination: 1 }),
  );
}
