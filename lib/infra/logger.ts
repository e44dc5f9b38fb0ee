import { createRequire } from 'node:module';
import { pino, type DestinationStream, type Logger } from 'pino';
import type PinoPretty from 'pino-pretty';

export type { Logger };

export interface ErrorFields {
  type?: string;
  message: string;
  code?: string;
  stack?: string;
  cause?: ErrorFields;
}

/**
 * What a log line says about an error: its message and code (and, for an error without a code, a
 * programming error, its stack), the same for its cause. Never the error's other properties: a pg
 * error from the pool carries its client, and the client the backend's cancel key.
 */
export function errorFields(error: unknown, depth = 0, withStack = true): ErrorFields {
  if (typeof error !== 'object' || error === null) {
    return { message: typeof error === 'string' ? error : (JSON.stringify(error) ?? 'undefined') };
  }
  const { type, name, message, code, stack, cause } = error as Record<string, unknown>;
  const fields: ErrorFields = { message: typeof message === 'string' ? message : 'unknown error' };
  const kind = typeof type === 'string' ? type : name;
  if (typeof kind === 'string') fields.type = kind;
  if (typeof code === 'string' || typeof code === 'number') fields.code = String(code);
  else if (withStack && typeof stack === 'string') fields.stack = stack;
  if (cause !== undefined && cause !== null && depth < 3) {
    fields.cause = errorFields(cause, depth + 1, withStack);
  }
  return fields;
}

/** The serializers every logger (and the request loggers made from it) uses: `err` as errorFields. */
export const logSerializers = { err: (error: unknown) => errorFields(error) };

/** LOG_FORMAT: `json` for machines, `pretty` for a person, `auto` decides by the terminal. */
export type LogFormat = 'auto' | 'json' | 'pretty';

export function createLogger(name: string, level: string, destination?: DestinationStream): Logger {
  // Request lines carry id, method and url only (api/app.ts): headers, and so tokens, are never logged.
  const options = { name, level, serializers: logSerializers };
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

/**
 * A request line (api/request-log.ts) as a person reads it, `POST /status/update 200 3 ms`; any
 * other line's message as it is.
 */
export function readableMessage(log: Record<string, unknown>, messageKey: string): string {
  const given = log[messageKey];
  const message = typeof given === 'string' ? given : JSON.stringify(given ?? '');
  const req = log.req as { method?: unknown; url?: unknown } | undefined;
  const res = log.res as { statusCode?: number } | undefined;
  const ms = log.responseTime;
  if (
    typeof req?.url !== 'string' ||
    typeof res?.statusCode !== 'number' ||
    typeof ms !== 'number'
  ) {
    return message;
  }
  const path = req.url.split('?')[0];
  const took = ms < 10_000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
  const note = message === 'request completed' ? '' : ` (${message})`;
  return `${String(req.method)} ${path} ${res.statusCode} ${took}${note}`;
}

/**
 * The logger of an entry point: JSON lines, or readable ones for a person at a terminal. Below
 * LOG_LEVEL=debug a readable line is one terminal line, without the request details (id, full URL).
 */
export function createProcessLogger(name: string, level: string, format: LogFormat): Logger {
  const pretty =
    resolveLogFormat(format, process.stdout.isTTY === true) === 'pretty'
      ? loadPinoPretty()
      : undefined;
  if (!pretty) return createLogger(name, level);
  const details = level === 'debug' || level === 'trace';
  return createLogger(
    name,
    level,
    // Synchronous, so the last lines before process.exit() are never lost.
    pretty({
      sync: true,
      translateTime: 'SYS:HH:MM:ss',
      ignore: details ? 'pid,hostname' : 'pid,hostname,req,res,responseTime',
      // Below debug a line's fields stay on its line: a terminal line per event.
      singleLine: !details,
      messageFormat: readableMessage,
      destination: 1,
    }),
  );
}
