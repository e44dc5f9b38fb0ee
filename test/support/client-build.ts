/**
 * The built client library (client/dist), which the demo page and the browser tests load. npm test
 * builds it first (pretest); a test file run on its own rebuilds it here when it is missing or
 * older than its sources.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const clientDir = fileURLToPath(new URL('../../client', import.meta.url));

function newestSource(): number {
  const src = path.join(clientDir, 'src');
  return Math.max(...readdirSync(src).map((name) => statSync(path.join(src, name)).mtimeMs));
}

export function ensureClientBuilt(): void {
  const built = path.join(clientDir, 'dist', 'index.js');
  if (existsSync(built) && statSync(built).mtimeMs >= newestSource()) return;
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  const result = spawnSync(process.execPath, [tsc, '-p', clientDir], { encoding: 'utf8' });
  if (result.status !== 0) {
    throw new Error(`building the client failed:\n${result.stdout}${result.stderr}`);
  }
}
