import { pino, type DestinationStream, type Logger } from 'pino';

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

/** The serializers every logger (and pino-http's request loggers) uses: `err` as errorFields. */
export const logSerializers = { err: (error: unknown) => errorFields(error) };

export function createLogger(name: string, level: string, destination?: DestinationStream): Logger {
  // Request lines carry id, method and url only (api/app.ts): headers, and so tokens, are never logged.
  const options = { name, level, serializers: logSerializers };
  return destination ? pino(options, destination) : pino(options);
}
