/**
 * A real webhook receiver for the tests: a node:http server on 127.0.0.1 that verifies every
 * request's signature with the standardwebhooks package (as docs/webhooks.md tells receivers to)
 * and records what arrived. Its behaviour can be switched at any time: answer 2xx, fail, answer
 * 429 with Retry-After, hang (never answer), or disappear (stop listening, then come back on the
 * same port).
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Webhook } from 'standardwebhooks';

export interface ReceivedEvent {
  seq: string;
  user_id: number;
  online: boolean;
  reason: string;
  at: string;
  last_seen: string | null;
}

export interface Received {
  id: string;
  timestamp: string;
  body: string;
  events: ReceivedEvent[];
  /** Date.now() when the request's body had arrived. */
  at: number;
  /** What the receiver answered (0: nothing, it hung or was gone). */
  status: number;
}

export type Behaviour =
  | { kind: 'ok' }
  | { kind: 'fail'; status: number; body?: string; headers?: Record<string, string> }
  | { kind: 'hang' };

export interface TestReceiver {
  readonly url: string;
  /** Every request that arrived with a valid signature, in arrival order. */
  readonly requests: Received[];
  /** Requests whose signature did not verify (must stay 0). */
  readonly badSignatures: number;
  behave(behaviour: Behaviour): void;
  /** Stops listening and drops every connection: the receiver is gone. */
  disappear(): Promise<void>;
  /** Listens again on the same port. */
  reappear(): Promise<void>;
  /** Accepted requests (2xx) deduplicated by webhook-id, first arrival kept. */
  delivered(): Received[];
  close(): Promise<void>;
}

export async function startReceiver(secret: string, port = 0): Promise<TestReceiver> {
  const webhook = new Webhook(secret);
  const requests: Received[] = [];
  let badSignatures = 0;
  let behaviour: Behaviour = { kind: 'ok' };
  const sockets = new Set<Socket>();
  const hanging = new Set<ServerResponse>();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const headers = {
      'webhook-id': String(req.headers['webhook-id']),
      'webhook-timestamp': String(req.headers['webhook-timestamp']),
      'webhook-signature': String(req.headers['webhook-signature']),
    };
    let payload: { data: { events: ReceivedEvent[] } };
    try {
      payload = webhook.verify(body, headers) as typeof payload;
    } catch {
      badSignatures += 1;
      res.writeHead(400).end();
      return;
    }
    const current = behaviour;
    const received: Received = {
      id: headers['webhook-id'],
      timestamp: headers['webhook-timestamp'],
      body,
      events: payload.data.events,
      at: Date.now(),
      status: 0,
    };
    requests.push(received);
    if (current.kind === 'hang') {
      hanging.add(res);
      return;
    }
    if (current.kind === 'fail') {
      received.status = current.status;
      res.writeHead(current.status, current.headers ?? {}).end(current.body ?? 'no');
      return;
    }
    received.status = 204;
    res.writeHead(204).end();
  };

  const server: Server = createServer((req, res) => {
    void handle(req, res);
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  const boundPort = (server.address() as AddressInfo).port;

  const dropAll = () => {
    for (const res of hanging) res.destroy();
    hanging.clear();
    for (const socket of sockets) socket.destroy();
  };

  return {
    url: `http://127.0.0.1:${boundPort}/hooks`,
    requests,
    get badSignatures() {
      return badSignatures;
    },
    behave(next) {
      behaviour = next;
      if (next.kind !== 'hang') {
        for (const res of hanging) res.destroy();
        hanging.clear();
      }
    },
    async disappear() {
      const closed = new Promise((resolve) => server.close(resolve));
      dropAll();
      await closed;
    },
    async reappear() {
      server.listen(boundPort, '127.0.0.1');
      await once(server, 'listening');
    },
    delivered() {
      const seen = new Set<string>();
      return requests.filter((r) => {
        if (r.status < 200 || r.status >= 300 || seen.has(r.id)) return false;
        seen.add(r.id);
        return true;
      });
    },
    async close() {
      if (!server.listening) return;
      const closed = new Promise((resolve) => server.close(resolve));
      dropAll();
      await closed;
    },
  };
}
