import { ConfigError } from './config.ts';

function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const cause = error.cause === undefined ? '' : `\n  caused by: ${describeError(error.cause)}`;
  return `${error.message}${cause}`;
}

/**
 * Runs a process's main function. A failure is printed as a readable message (its causes too)
 * and the process exits 1.
 */
export function runMain(main: () => Promise<void>): void {
  main().catch((error: unknown) => {
    console.error(error instanceof ConfigError ? error.message : `error: ${describeError(error)}`);
    process.exit(1);
  });
}
