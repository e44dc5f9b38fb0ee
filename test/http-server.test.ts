import { once } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { expect } from 'chai';
import express from 'express';
import { listen } from '../http/server.ts';

describe('the HTTP server (http/server.ts)', () => {
  it('tells a keep-alive client to close once stopping has begun, not before, even when answered at once', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let slowStarted!: () => void;
    const started = new Promise<void>((resolve) => (slowStarted = resolve));
    const app = express();
    app.get('/slow', async (_req, res) => {
      slowStarted();
      await held;
      res.send('slow');
    });
    app.get('/fast', (_req, res) => {
      res.send('fast');
    });
    const server = await listen(app, 0, '127.0.0.1');
    const socket = connect({ host: '127.0.0.1', port: server.port });
    await once(socket, 'connect');
    let received = '';
    socket.on('data', (chunk: Buffer) => (received += chunk.toString()));
    const get = (path: string) => socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
    try {
      get('/slow');
      await started;
      const stopped = server.stop();
      // Arrives on the busy keep-alive connection while the server stops.
      const fastArrived = new Promise<void>((resolve) =>
        server.server.on('request', (req: IncomingMessage) => {
          if (req.url === '/fast') resolve();
        }),
      );
      get('/fast');
      await fastArrived;
      const ended = once(socket, 'end');
      release();
      await Promise.all([stopped, ended]);
      const [slow, fast] = received.split('HTTP/1.1 ').slice(1);
      expect(slow)
        .to.match(/^200 /)
        .and.match(/\r\nConnection: keep-alive\r\n/i);
      expect(fast)
        .to.match(/^200 /)
        .and.match(/\r\nConnection: close\r\n/i);
    } finally {
      socket.destroy();
    }
  });
});
