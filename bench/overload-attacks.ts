/**
 * Hostile clients beside legitimate heartbeats (docs/overload.md, docs/security.md): each attack
 * runs on a fresh API process, and the same process first serves the legitimate load alone (the
 * reference), then with the attack running. Reported: the legitimate heartbeats' p50/p99 and
 * refusals in both, and their ratio.
 *
 * - slow sockets: connections announcing a 61,440-byte body and sending one byte a second,
 *   reconnecting as soon as they are closed;
 * - stream opens: loops opening GET /status/stream with 1,000 watched ids, reading the snapshot
 *   and closing, as fast as they can;
 * - batch reads of 1,000 ids sent the same way: the yardstick for stream opens, which admission
 *   control treats as such a read.
 */
import { connect } from 'node:net';
import autocannon from 'autocannon';
import type { ApiProcess, BenchDatabase, BenchRequest } from './support.ts';
import { anyOf, prepare, randomUserId, startApi } from './support.ts';

export interface Attack {
  name: string;
  /** Starts the attack on `url`; the returned function stops it and resolves with what it did. */
  start(url: string): () => Promise<string>;
}

export interface LegitResult {
  p50: number;
  p99: number;
  answered: number;
  refused: number;
}

export interface AttackRow {
  attack: Attack;
  unattacked: LegitResult;
  attacked: LegitResult;
  did: string;
}

/** Legitimate single heartbeats: 16 connections, 1,000 requests/s in all. */
const LEGIT_CONNECTIONS = 16;
const LEGIT_RATE = 1000;

async function legitLoad(
  api: ApiProcess,
  requests: BenchRequest[],
  seconds: number,
): Promise<LegitResult> {
  const result = await autocannon({
    url: api.url,
    connections: LEGIT_CONNECTIONS,
    overallRate: LEGIT_RATE,
    duration: seconds,
    timeout: 10,
    requests: anyOf(requests),
  });
  return {
    p50: result.latency.p50,
    p99: result.latency.p99,
    answered: result.requests.total,
    refused: result.non2xx + result.errors + result.timeouts,
  };
}

/** `count` connections announcing a 61,440-byte body and sending a byte a second. */
export function slowSockets(count: number): Attack {
  return {
    name: `${count} slow sockets (61,440 bytes announced, 1 byte/s)`,
    start(url) {
      const { hostname, port } = new URL(url);
      let stopped = false;
      let opened = 0;
      let closedByServer = 0;
      const open = () => {
        if (stopped) return;
        opened += 1;
        const socket = connect({ host: hostname, port: Number(port) });
        socket.on('error', () => undefined);
        socket.on('connect', () => {
          socket.write(
            'POST /status/update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
              'Content-Length: 61440\r\n\r\n{',
          );
        });
        const drip = setInterval(() => socket.write(' '), 1000);
        socket.on('close', () => {
          clearInterval(drip);
          if (!stopped) {
            closedByServer += 1;
            setImmediate(open);
          }
        });
        sockets.add(socket);
      };
      const sockets = new Set<ReturnType<typeof connect>>();
      for (let i = 0; i < count; i += 1) open();
      return () => {
        stopped = true;
        for (const socket of sockets) socket.destroy();
        return Promise.resolve(
          `${opened} connections opened, ${closedByServer} closed by the server`,
        );
      };
    },
  };
}

/** `loops` clients opening streams of 1,000 watched ids, reading the snapshot, closing. */
export function streamOpens(loops: number, rows: number): Attack {
  return {
    name: `stream opens, ${loops} loops, 1,000 ids each`,
    start(url) {
      let stopped = false;
      let opened = 0;
      let refused = 0;
      const started = performance.now();
      const loop = async () => {
        while (!stopped) {
          const ids = Array.from({ length: 1000 }, () => randomUserId(rows)).join(',');
          const abort = new AbortController();
          try {
            const response = await fetch(`${url}/status/stream?watch=${ids}`, {
              signal: abort.signal,
            });
            if (response.status !== 200) {
              refused += 1;
              await response.arrayBuffer();
              // A client honouring Retry-After would wait; this one comes back at once.
              continue;
            }
            const reader = (response.body as ReadableStream<Uint8Array>).getReader();
            let text = '';
            while (!text.includes('event: snapshot')) {
              const chunk = (await reader.read()) as { done: boolean; value?: Uint8Array };
              if (chunk.done) break;
              text += Buffer.from(chunk.value ?? []).toString();
            }
            opened += 1;
          } catch {
            // aborted or reset: open the next one
          } finally {
            abort.abort();
          }
        }
      };
      const running = Array.from({ length: loops }, loop);
      return async () => {
        stopped = true;
        await Promise.all(running);
        const seconds = (performance.now() - started) / 1000;
        return `${(opened / seconds).toFixed(0)} opens/s, ${(refused / seconds).toFixed(0)} refused/s`;
      };
    },
  };
}

/** The yardstick for stream opens: `loops` clients sending 1,000-id batch reads back to back. */
export function batchReads(loops: number, rows: number): Attack {
  return {
    name: `batch reads, ${loops} loops, 1,000 ids each`,
    start(url) {
      let stopped = false;
      let answered = 0;
      let refused = 0;
      const started = performance.now();
      const loop = async () => {
        while (!stopped) {
          const body = JSON.stringify(
            Array.from({ length: 1000 }, () => ({ user_id: randomUserId(rows) })),
          );
          try {
            const response = await fetch(`${url}/status/batch`, {
              method: 'POST',
              headers: { 'content-type': 'application/json' },
              body,
            });
            await response.arrayBuffer();
            if (response.status === 200) answered += 1;
            else refused += 1;
          } catch {
            // reset: send the next one
          }
        }
      };
      const running = Array.from({ length: loops }, loop);
      return async () => {
        stopped = true;
        await Promise.all(running);
        const seconds = (performance.now() - started) / 1000;
        return `${(answered / seconds).toFixed(0)} reads/s, ${(refused / seconds).toFixed(0)} refused/s`;
      };
    },
  };
}

export function attackScenarios(rows: number): Attack[] {
  return [slowSockets(8), slowSockets(80), streamOpens(8, rows), batchReads(8, rows)];
}

export async function runAttacks(
  db: BenchDatabase,
  rows: number,
  attacks: Attack[],
  durationSeconds: number,
): Promise<AttackRow[]> {
  const requests = prepare(20_000, () => ({
    method: 'POST',
    path: '/status/update',
    body: `{"user_id":${randomUserId(rows)}}`,
  }));
  const out: AttackRow[] = [];
  for (const attack of attacks) {
    console.error(`bench: attack, ${attack.name}`);
    const api = await startApi(db.url, {});
    try {
      await legitLoad(api, requests, 3); // warm-up
      const unattacked = await legitLoad(api, requests, durationSeconds);
      const stop = attack.start(api.url);
      let did: string;
      let attacked: LegitResult;
      try {
        // Let the attack take hold before measuring.
        await new Promise((resolve) => setTimeout(resolve, 2_000));
        attacked = await legitLoad(api, requests, durationSeconds);
      } finally {
        did = await stop();
      }
      out.push({ attack, unattacked, attacked, did });
    } finally {
      await api.stop();
    }
  }
  return out;
}

const fmt = (n: number, digits = 0) =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

export function attackTable(rows: AttackRow[]): string {
  const lines = [
    '| attack | legit p50 ms unattacked / attacked | legit p99 ms unattacked / attacked | p99 attacked / unattacked | legit refused or failed unattacked / attacked | attack |',
    '|---|---|---|---|---|---|',
  ];
  for (const { attack, unattacked: u, attacked: a, did } of rows) {
    lines.push(
      `| ${attack.name} | ${fmt(u.p50)} / ${fmt(a.p50)} | ${fmt(u.p99)} / ${fmt(a.p99)} | ${fmt(a.p99 / Math.max(1, u.p99), 2)}x | ${u.refused} of ${u.answered} / ${a.refused} of ${a.answered} | ${did} |`,
    );
  }
  return `${lines.join('\n')}\n\nlegitimate load: single heartbeats, ${LEGIT_CONNECTIONS} connections, ${LEGIT_RATE} requests/s in all, on the same API process before and during the attack\ntarget: legit p99 under attack < 100 ms, none refused`;
}
