/**
 * The one way tests start Pulse's entry points (api, sweeper, migrate, npm start) as real
 * processes, and the one way they wait: for a condition, never for a fixed time.
 *
 *   const { api, baseUrl } = await startApi({ DATABASE_URL: database.url });
 *   await waitFor('the row to be swept', async () => (await database.userIds()).length === 0);
 *   expect(await api.stop()).to.deep.equal({ code: 0, signal: null });
 *
 *   const run = await runEntryPoint('migrate', { env: { DATABASE_URL: url }, args: ['status'] });
 *   expect(run.code).to.equal(0);
 *
 * A child gets PATH plus the env it is given, nothing else from this process (a developer's
 * DATABASE_URL or AUTH_* never leaks in). Every child started during a test that is still running
 * when the test ends is killed, with its descendants, by the root hook in global-setup.ts; one
 * started in a `before` hook lives until the end of the run. PULSE_TEST_VERBOSE=1 prints every
 * child's output as it comes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { freePort } from './server.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

/** Each entry point, as production starts it (through tsx here). */
export const ENTRY_POINTS = {
  api: 'api/main.ts',
  sweeper: 'sweeper/main.ts',
  webhooks: 'webhooks/main.ts',
  migrate: 'scripts/migrate.ts',
  start: 'dev/start.ts',
} as const;
export type EntryPointName = keyof typeof ENTRY_POINTS;
/** Node's own flags for each, as package.json's scripts and the Dockerfile pass them. */
const NODE_OPTIONS: Partial<Record<EntryPointName, string[]>> = { api: ['--expose-gc'] };

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface WaitOptions {
  /** Give up after this long (default 10 s; the test's own timeout still applies). */
  timeoutMs?: number;
  /** Pause between checks (default 25 ms). */
  intervalMs?: number;
  /** Fail at once, with its output, if this process exits before the condition holds. */
  whileRunning?: EntryPointProcess;
}

type Truthy<T> = Exclude<T, false | 0 | '' | null | undefined>;

/**
 * Checks `condition` until it returns a truthy value, and returns that value. Fails after
 * `timeoutMs` naming `what` (and the last error the check threw, if any).
 */
export async function waitFor<T>(
  what: string,
  condition: () => T | Promise<T>,
  { timeoutMs = 10_000, intervalMs = 25, whileRunning }: WaitOptions = {},
): Promise<Truthy<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value as Truthy<T>;
      lastError = undefined;
    } catch (error) {
      lastError = error;
    }
    const why =
      whileRunning?.exitStatus !== undefined
        ? `${whileRunning.name} exited (${JSON.stringify(whileRunning.exitStatus)})`
        : Date.now() > deadline
          ? `timed out after ${timeoutMs} ms`
          : undefined;
    if (why !== undefined) {
      const cause = lastError instanceof Error ? `; last check failed: ${lastError.message}` : '';
      const output = whileRunning
        ? `\n--- output of ${whileRunning.name}:\n${tail(whileRunning.output())}`
        : '';
      throw new Error(`waiting for ${what}: ${why}${cause}${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

const tail = (text: string, lines = 40) => text.split('\n').slice(-lines).join('\n');

export interface EntryPointProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<ExitStatus>;
  /** How it exited; undefined while it runs. */
  readonly exitStatus: ExitStatus | undefined;
  stdout(): string;
  stderr(): string;
  /** stdout and stderr, interleaved as they arrived. */
  output(): string;
  /** The JSON lines of stdout (pino's log lines), parsed; other lines are skipped. */
  logLines(): Array<Record<string, unknown>>;
  /** Waits until the output matches; fails early if the process exits first. */
  waitForOutput(pattern: RegExp | string, options?: WaitOptions): Promise<void>;
  /** Waits until GET `url` answers 2xx; fails early if the process exits first. */
  waitForHttp(url: string, options?: WaitOptions): Promise<void>;
  /** Sends a signal (no-op once it exited). */
  signal(signal: NodeJS.Signals): void;
  /** Sends a signal to its whole process group, as a terminal's Ctrl-C does (needs ownProcessGroup). */
  signalGroup(signal: NodeJS.Signals): void;
  /** Sends `signal` (SIGTERM by default) and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<ExitStatus>;
}

export interface StartOptions {
  /** The child's environment besides PATH. */
  env?: Record<string, string | undefined>;
  args?: string[];
  /** Runs it in a process group of its own, as a terminal runs a foreground command. */
  ownProcessGroup?: boolean;
  /** Node's flags, instead of the entry point's usual ones (NODE_OPTIONS above). */
  nodeOptions?: string[];
}

let sequence = 0;
const started: Array<{ sequence: number; process: EntryPointProcess }> = [];

/** Starts an entry point as its own process; see waitForOutput/waitForHttp to wait for it. */
export function startEntryPoint(
  name: EntryPointName,
  { env = {}, args = [], ownProcessGroup = false, nodeOptions }: StartOptions = {},
): EntryPointProcess {
  const childEnv: NodeJS.ProcessEnv = { PATH: process.env.PATH };
  for (const [key, value] of Object.entries(env)) if (value !== undefined) childEnv[key] = value;
  const flags = nodeOptions ?? NODE_OPTIONS[name] ?? [];
  const child = spawn(
    process.execPath,
    [...flags, '--import', 'tsx', ENTRY_POINTS[name], ...args],
    {
      cwd: repoRoot,
      env: childEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: ownProcessGroup,
    },
  );
  let stdout = '';
  let stderr = '';
  let output = '';
  const verbose = Boolean(process.env.PULSE_TEST_VERBOSE);
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
    output += chunk.toString();
    if (verbose) process.stdout.write(`[${name}] ${chunk.toString()}`);
  });
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    output += chunk.toString();
    if (verbose) process.stderr.write(`[${name}] ${chunk.toString()}`);
  });
  let exitStatus: ExitStatus | undefined;
  // 'close', not 'exit': by then every byte it wrote has been read.
  const exited = new Promise<ExitStatus>((resolve) => {
    child.on('close', (code, signal) => {
      exitStatus = { code, signal };
      resolve(exitStatus);
    });
    // Could not be spawned at all: reported as an exit, so nothing waits forever.
    child.on('error', (error) => {
      output += `\nspawn failed: ${error.message}`;
      exitStatus ??= { code: null, signal: null };
      resolve(exitStatus);
    });
  });

  const entry: EntryPointProcess = {
    name,
    child,
    pid: child.pid ?? -1,
    exited,
    get exitStatus() {
      return exitStatus;
    },
    stdout: () => stdout,
    stderr: () => stderr,
    output: () => output,
    logLines: () =>
      stdout
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as Record<string, unknown>),
    async waitForOutput(pattern, options = {}) {
      await waitFor(
        `${name} to print ${String(pattern)}`,
        () => (typeof pattern === 'string' ? output.includes(pattern) : pattern.test(output)),
        { whileRunning: entry, ...options },
      );
    },
    async waitForHttp(url, options = {}) {
      await waitFor(
        `${name} to answer GET ${url}`,
        async () => (await fetch(url).catch(() => undefined))?.ok,
        { whileRunning: entry, ...options },
      );
    },
    signal(signal) {
      if (exitStatus === undefined) child.kill(signal);
    },
    signalGroup(signal) {
      if (!ownProcessGroup) throw new Error(`${name} was not started in its own process group`);
      if (exitStatus === undefined) process.kill(-entry.pid, signal);
    },
    async stop(signal = 'SIGTERM') {
      entry.signal(signal);
      return exited;
    },
  };
  started.push({ sequence: (sequence += 1), process: entry });
  return entry;
}

export interface FinishedRun extends ExitStatus {
  stdout: string;
  stderr: string;
  output: string;
}

/** Runs an entry point to its end (migrate, sweeper --once, a refused start). */
export async function runEntryPoint(
  name: EntryPointName,
  options: StartOptions & { timeoutMs?: number } = {},
): Promise<FinishedRun> {
  const run = startEntryPoint(name, options);
  const timeoutMs = options.timeoutMs ?? 30_000;
  const timer = setTimeout(() => killTree(run.pid), timeoutMs);
  try {
    const status = await run.exited;
    return { ...status, stdout: run.stdout(), stderr: run.stderr(), output: run.output() };
  } finally {
    clearTimeout(timer);
  }
}

/** The API on a free port, answering /healthz. */
export async function startApi(
  env: Record<string, string | undefined>,
  options: Omit<StartOptions, 'env'> = {},
): Promise<{ api: EntryPointProcess; baseUrl: string }> {
  const port = await freePort();
  const api = startEntryPoint('api', {
    ...options,
    env: { HOST: '127.0.0.1', ...env, PORT: String(port) },
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  await api.waitForHttp(`${baseUrl}/healthz`, { timeoutMs: 45_000 });
  return { api, baseUrl };
}

/** The sweeper with its ops server on a free port, answering /healthz. */
export async function startSweeper(
  env: Record<string, string | undefined>,
): Promise<{ sweeper: EntryPointProcess; opsUrl: string }> {
  const port = await freePort();
  const sweeper = startEntryPoint('sweeper', {
    env: { METRICS_HOST: '127.0.0.1', ...env, METRICS_PORT: String(port) },
  });
  const opsUrl = `http://127.0.0.1:${port}`;
  await sweeper.waitForHttp(`${opsUrl}/healthz`, { timeoutMs: 45_000 });
  return { sweeper, opsUrl };
}

/** The webhook deliverer with its ops server on a free port, answering /healthz. */
export async function startWebhooks(
  env: Record<string, string | undefined>,
): Promise<{ webhooks: EntryPointProcess; opsUrl: string }> {
  const port = await freePort();
  const webhooks = startEntryPoint('webhooks', {
    env: { METRICS_HOST: '127.0.0.1', ...env, METRICS_PORT: String(port) },
  });
  const opsUrl = `http://127.0.0.1:${port}`;
  await webhooks.waitForHttp(`${opsUrl}/healthz`, { timeoutMs: 45_000 });
  return { webhooks, opsUrl };
}

/** The process and every descendant (npm start's children live in their own process groups). */
function killTree(pid: number): void {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
    } catch {
      // gone meanwhile
    }
  }
  const all: number[] = [];
  const visit = (p: number) => {
    all.push(p);
    for (const c of children.get(p) ?? []) visit(c);
  };
  visit(pid);
  for (const p of all) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Sequence number of the next process: processes from here on belong to the current test. */
export const markTestStart = (): number => sequence + 1;

/**
 * Kills (with descendants) every process started from `fromSequence` on that is still running,
 * waits for their exit, and returns their names: a safety net so a failed test never leaves a
 * process behind, nor keeps mocha from ending.
 */
export async function killStrayProcesses(fromSequence = 0): Promise<string[]> {
  const stray = started.filter(
    (s) => s.sequence >= fromSequence && s.process.exitStatus === undefined,
  );
  for (const { process: p } of stray) killTree(p.pid);
  await Promise.all(stray.map((s) => s.process.exited));
  started.splice(0, started.length, ...started.filter((s) => s.process.exitStatus === undefined));
  return stray.map((s) => `${s.process.name} (pid ${s.process.pid})`);
}
