import { spawnSync } from 'node:child_process';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { expect } from 'chai';
import express from 'express';
import { listen, type RunningServer } from '../http/server.ts';

const serverModule = new URL('../http/server.ts', import.meta.url).href;

describe('requests born with the prototypes Express gives them (http/express-prototypes.ts)', () => {
  let server: RunningServer | undefined;
  afterEach(async () => {
    await server?.stop();
    server = undefined;
  });

  it('creates each request and response with the app prototypes, so Express has nothing to change', async () => {
    const app = express();
    app.get('/', (req, res) => {
      res.json({ host: req.get('host') !== undefined });
    });
    server = await listen(app, 0, '127.0.0.1');
    const seen: Array<[unknown, unknown]> = [];
    // Runs before Express: the prototypes the objects were born with.
    server.server.prependListener('request', (req: IncomingMessage, res: ServerResponse) =>
      seen.push([Object.getPrototypeOf(req), Object.getPrototypeOf(res)]),
    );

    const answer = await fetch(`http://127.0.0.1:${server.port}/`);
    expect(await answer.json()).to.deep.equal({ host: true });
    expect(seen).to.have.length(1);
    expect(seen[0]![0]).to.equal(app.request);
    expect(seen[0]![1]).to.equal(app.response);
  });

  it('keeps what was defined on app.request and app.response before listening, and reuses its classes', async () => {
    const app = express();
    (app.request as unknown as { greeting: string }).greeting = 'hello';
    (app.response as unknown as { answer(this: ServerResponse): void }).answer = function () {
      this.end('answered');
    };
    app.get('/', (req, res) => {
      res.setHeader('X-Greeting', (req as unknown as { greeting: string }).greeting);
      (res as unknown as { answer(): void }).answer();
    });
    const first = await listen(app, 0, '127.0.0.1');
    const requestPrototype: unknown = app.request;
    await first.stop();
    server = await listen(app, 0, '127.0.0.1');
    expect(app.request, 'a second listen on the same app').to.equal(requestPrototype);

    const answer = await fetch(`http://127.0.0.1:${server.port}/`);
    expect(answer.headers.get('x-greeting')).to.equal('hello');
    expect(await answer.text()).to.equal('answered');
  });

  it('gives concurrent requests and responses one shared hidden class each (V8, through Express)', function () {
    this.timeout(20_000);
    // Two requests are held in the route until both arrived, then V8 compares their shapes.
    const script = `
      import express from 'express';
      import { listen } from ${JSON.stringify(serverModule)};
      const app = express();
      app.use(express.json());
      const held = [];
      app.post('/', (req, res) => {
        held.push([req, res]);
        if (held.length < 2) return;
        const [[req1, res1], [req2, res2]] = held;
        const same = { requests: %HaveSameMap(req1, req2), responses: %HaveSameMap(res1, res2) };
        for (const [, r] of held) r.json(same);
      });
      const server = await listen(app, 0, '127.0.0.1');
      const post = () => fetch('http://127.0.0.1:' + server.port + '/', {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"user_id":1}',
      }).then((r) => r.json());
      const [answer] = await Promise.all([post(), post()]);
      console.log(JSON.stringify(answer));
      await server.stop();
    `;
    const run = spawnSync(
      process.execPath,
      ['--allow-natives-syntax', '--import', 'tsx', '--input-type=module', '-e', script],
      { encoding: 'utf8', timeout: 15_000 },
    );
    expect(run.stderr).to.equal('');
    expect(JSON.parse(run.stdout)).to.deep.equal({ requests: true, responses: true });
  });
});
