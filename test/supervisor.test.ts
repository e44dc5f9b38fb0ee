import { spawn } from 'node:child_process';
import { expect } from 'chai';
import { Supervisor } from '../dev/supervisor.ts';

/** A child that prints "<name> stopped" on SIGTERM and exits with `code`. */
function fakeProcess(name: string, code = 0) {
  const script = `process.on('SIGTERM', () => { console.log('${name} stopped'); process.exit(${code}); }); console.log('ready'); setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const ready = new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  return { child, ready };
}

describe('npm start supervisor (dev/supervisor.ts)', () => {
  it('stops the services first and the database last, once they are gone', async () => {
    const order: string[] = [];
    const supervisor = new Supervisor(() => undefined);
    const api = fakeProcess('api');
    const sweeper = fakeProcess('sweeper');
    const database = fakeProcess('database');
    await Promise.all([api.ready, sweeper.ready, database.ready]);
    for (const [name, { child }] of Object.entries({ api, sweeper, database })) {
      child.stdout.on('data', () => order.push(name));
      child.once('exit', () => order.push(`${name} exited`));
    }
    supervisor.addService('api', api.child);
    supervisor.addService('sweeper', sweeper.child);
    supervisor.setDatabase('database', database.child);
    expect(await supervisor.stop(0)).to.equal(0);
    const databaseStopped = order.indexOf('database');
    expect(databaseStopped).to.be.greaterThan(order.indexOf('api exited'));
    expect(databaseStopped).to.be.greaterThan(order.indexOf('sweeper exited'));
    expect(await supervisor.stopped).to.equal(0);
  });

  it('exits 1, with one line saying why, when the database does not stop cleanly', async () => {
    const lines: string[] = [];
    const supervisor = new Supervisor((line) => lines.push(line));
    const database = fakeProcess('database', 3);
    await database.ready;
    supervisor.setDatabase('the database', database.child);
    expect(await supervisor.stop(0)).to.equal(1);
    expect(lines).to.deep.equal(['the database did not stop cleanly (exit code 3)']);
  });

  it('a child that cannot be spawned stops the others and the stack exits 1', async () => {
    const lines: string[] = [];
    const supervisor = new Supervisor((line) => lines.push(line));
    const database = fakeProcess('database');
    await database.ready;
    supervisor.setDatabase('the database', database.child);
    supervisor.addService('the API', spawn('/nonexistent/pulse-binary', [], { stdio: 'ignore' }));
    expect(await supervisor.stopped).to.equal(1);
    expect(lines[0]).to.match(/^the API: spawn \/nonexistent\/pulse-binary ENOENT/);
    expect(database.child.exitCode).to.equal(0);
  });

  it('a child that exits by itself stops the others and the stack exits 1', async () => {
    const lines: string[] = [];
    const supervisor = new Supervisor((line) => lines.push(line));
    const api = fakeProcess('api');
    const database = fakeProcess('database');
    await Promise.all([api.ready, database.ready]);
    supervisor.addService('the API', api.child);
    supervisor.setDatabase('the database', database.child);
    api.child.kill('SIGKILL');
    expect(await supervisor.stopped).to.equal(1);
    expect(lines).to.deep.equal([
      'the API exited unexpectedly (signal SIGKILL); stopping everything',
    ]);
    expect(database.child.exitCode).to.equal(0);
  });
});
