import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { resolveLogFormat } from '../lib/infra/logger.ts';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));
const logOneLine = (format: string) =>
  `${JSON.stringify(process.execPath)} --import tsx -e "import('./lib/infra/logger.ts').then((m) => m.createProcessLogger('pulse-api', 'info', '${format}').info({ userId: 7 }, 'pulse api listening'))"`;

/** Runs `command` with stdout on a pipe, or on a real terminal through script(1). */
function run(command: string, terminal: boolean): string {
  const result = terminal
    ? spawnSync('script', ['-qec', command, '/dev/null'], { cwd: repoRoot, encoding: 'utf8' })
    : spawnSync('sh', ['-c', command], { cwd: repoRoot, encoding: 'utf8' });
  expect(result.status, result.stderr).to.equal(0);
  return result.stdout;
}

describe('log format', function () {
  this.timeout(30_000);

  it('auto means pretty at a terminal and JSON anywhere else; json and pretty are forced', () => {
    expect(resolveLogFormat('auto', true)).to.equal('pretty');
    expect(resolveLogFormat('auto', false)).to.equal('json');
    expect(resolveLogFormat('json', true)).to.equal('json');
    expect(resolveLogFormat('pretty', false)).to.equal('pretty');
  });

  it('an entry point prints readable lines at a terminal', () => {
    const output = run(logOneLine('auto'), true);
    expect(output).to.match(/INFO.*pulse api listening/);
    expect(output).to.match(/userId.*7/);
    expect(output.trim().split('\n'), 'its fields on the same line').to.have.length(1);
    expect(output).not.to.include('{"level"');
  });

  it('an entry point prints one JSON object a line when its output is not a terminal', () => {
    const line = JSON.parse(run(logOneLine('auto'), false).trim()) as Record<string, unknown>;
    expect(line).to.include({
      level: 30,
      name: 'pulse-api',
      msg: 'pulse api listening',
      userId: 7,
    });
  });
});
