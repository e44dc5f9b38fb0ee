import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { startTestApp } from './support/app.ts';
import { createTestDatabase } from './support/database.ts';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));

describe('the served OpenAPI document', function () {
  this.timeout(60_000);

  it("passes Redocly CLI's recommended rules with no error and no warning", async () => {
    const database = await createTestDatabase();
    const app = await startTestApp(database);
    const folder = mkdtempSync(path.join(tmpdir(), 'pulse-openapi-'));
    try {
      const served = await (await app.get('/openapi.json')).text();
      const file = path.join(folder, 'openapi.json');
      writeFileSync(file, served);
      const lint = spawnSync(
        path.join(repoRoot, 'node_modules/.bin/redocly'),
        ['lint', file, '--config', path.join(repoRoot, 'redocly.yaml'), '--format=stylish'],
        {
          cwd: repoRoot,
          encoding: 'utf8',
          env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true' },
        },
      );
      const report = `${lint.stdout}\n${lint.stderr}`;
      expect(lint.status, report).to.equal(0);
      expect(report).not.to.match(/\b(error|warning)\b\s+[a-z0-9-]+\s/);
    } finally {
      rmSync(folder, { recursive: true, force: true });
      await app.close();
      await database.drop();
    }
  });
});
