/**
 * The process supervisor of `npm start`: watches the stack's child processes and stops them in
 * order, the services (API, sweeper) first and the database last, so nothing loses its database
 * while it still runs. Every child runs in its own process group: a terminal's Ctrl-C reaches
 * only `npm start`, which then stops the children one step at a time.
 */
import type { ChildProcess } from 'node:child_process';

interface Child {
  name: string;
  process: ChildProcess;
  stop(): void;
  /** Settles when the process is gone (or never started); never rejects. */
  gone: Promise<{ code: number | null; signal: string | null }>;
}

export class Supervisor {
  private readonly services: Child[] = [];
  private database: Child | undefined;
  private stopping: Promise<number> | undefined;
  private resolveStopped: (code: number) => void = () => undefined;
  /** Settles with the stack's exit code once a stop, for whatever reason, has finished. */
  readonly stopped = new Promise<number>((resolve) => (this.resolveStopped = resolve));

  /** @param say prints one short line for the person at the terminal */
  constructor(private readonly say: (line: string) => void) {}

  /** An API or sweeper process: stopped with SIGTERM, before the database. */
  addService(name: string, child: ChildProcess): void {
    this.services.push(this.watch(name, child, () => child.kill('SIGTERM')));
  }

  /** The database process: stopped last, with `stop` (default SIGTERM). */
  setDatabase(name: string, child: ChildProcess, stop = () => void child.kill('SIGTERM')): void {
    this.database = this.watch(name, child, stop);
  }

  /**
   * Stops the services, waits for them, then stops the database and waits for it. Resolves with
   * the exit code for the whole stack: `exitCode`, or 1 when the database did not stop cleanly.
   * Idempotent: later calls get the first call's result.
   */
  stop(exitCode: number): Promise<number> {
    this.stopping ??= this.stopInOrder(exitCode).then((code) => {
      this.resolveStopped(code);
      return code;
    });
    return this.stopping;
  }

  private async stopInOrder(exitCode: number): Promise<number> {
    await Promise.all(this.services.map((child) => this.stopChild(child)));
    if (!this.database) return exitCode;
    // A database that already exited was reported by watch(): only a failed stop is news here.
    const wasRunning = isRunning(this.database.process);
    const { code, signal } = await this.stopChild(this.database);
    if (!wasRunning) return exitCode;
    if (code === 0 || (code === null && signal === null)) return exitCode;
    this.say(`${this.database.name} did not stop cleanly (${describeExit(code, signal)})`);
    return 1;
  }

  private stopChild(child: Child): Child['gone'] {
    if (isRunning(child.process)) child.stop();
    return child.gone;
  }

  private watch(name: string, child: ChildProcess, stop: () => void): Child {
    const gone = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      // spawn failed (e.g. ENOENT): no 'exit' follows.
      child.once('error', () => {
        if (child.pid === undefined) resolve({ code: null, signal: null });
      });
    });
    // Without an 'error' listener a failed spawn (or a failed kill) would crash npm start.
    child.on('error', (error) => {
      this.say(`${name}: ${error.message}`);
      void this.stop(1);
    });
    child.once('exit', (code, signal) => {
      if (this.stopping) return;
      this.say(`${name} exited unexpectedly (${describeExit(code, signal)}); stopping everything`);
      void this.stop(1);
    });
    return { name, process: child, stop, gone };
  }
}

function isRunning(child: ChildProcess): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

function describeExit(code: number | null, signal: string | null): string {
  return signal ? `signal ${signal}` : `exit code ${code}`;
}
