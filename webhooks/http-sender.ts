/**
 * Sends webhook requests over HTTP(S) with node:http: a deadline for the whole request, a limit
 * on the response body read, redirects never followed (a 3xx is a failed attempt), and the
 * address rule (lib/webhooks/target-rule.ts) applied to the address actually connected to.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import { parseRetryAfter } from '../lib/webhooks/backoff.ts';
import type { DeliveryResult, Send } from '../lib/webhooks/delivery.ts';
import { isPrivateAddress, refuseTargetUrl } from '../lib/webhooks/target-rule.ts';

export interface HttpSenderOptions {
  /** The whole request, from connecting to the response headers. */
  timeoutMs: number;
  /** At most this much of a response body is read; the connection is closed beyond it. */
  responseMaxBytes: number;
  allowPrivateTargets: boolean;
}

class RefusedTarget extends Error {}
class Timeout extends Error {}

/** A resolver that refuses names resolving to a non-public address (all of them are checked). */
function guardedLookup(allowPrivate: boolean): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (error, list) => {
      if (error) return callback(error, '', 0);
      const refused = list.find((a) => !allowPrivate && isPrivateAddress(a.address));
      if (refused) {
        return callback(
          new RefusedTarget(`${hostname} resolves to ${refused.address}, not a public address`),
          '',
          0,
        );
      }
      // Node asks for every address (all: true) when it tries them in turn (autoSelectFamily).
      if (options.all) return (callback as never as AllCallback)(null, list);
      const first = list[0]!;
      callback(null, first.address, first.family);
    });
  };
}
type AllCallback = (error: Error | null, addresses: LookupAddress[]) => void;

export interface HttpSender {
  send: Send;
  /** Closes idle keep-alive connections. */
  close(): void;
}

export function createHttpSender(options: HttpSenderOptions): HttpSender {
  const lookup = guardedLookup(options.allowPrivateTargets);
  // Keep-alive: one endpoint gets one request at a time, so a connection is reused batch after batch.
  const agents = {
    'http:': new http.Agent({ keepAlive: true }),
    'https:': new https.Agent({ keepAlive: true }),
  };

  const send: Send = (request, signal) =>
    new Promise<DeliveryResult>((resolve) => {
      const refused = refuseTargetUrl(request.url, options.allowPrivateTargets);
      if (refused !== undefined) return resolve({ outcome: 'refused_target', error: refused });
      const url = new URL(request.url);
      const protocol = url.protocol as 'http:' | 'https:';
      const client = protocol === 'https:' ? https : http;
      let settled = false;
      const settle = (result: DeliveryResult) => {
        if (settled) return;
        settled = true;
        resolve(result);
      };
      const req = client.request(url, {
        method: 'POST',
        agent: agents[protocol],
        lookup,
        signal,
        headers: {
          ...request.headers,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(request.body),
          'user-agent': 'Pulse-Webhooks/1',
        },
      });
      const deadline = setTimeout(() => req.destroy(new Timeout()), options.timeoutMs);
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          settle({ outcome: 'delivered', status });
        } else {
          const retryAfterMs = parseRetryAfter(res.headers['retry-after']);
          settle({
            outcome: 'http_error',
            status,
            ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
          });
        }
        // The body is not needed; it is read (up to the limit) so the connection can be reused.
        let read = 0;
        res.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > options.responseMaxBytes) res.destroy();
        });
        res.on('error', () => undefined);
        res.on('close', () => clearTimeout(deadline));
      });
      req.on('error', (error) => {
        clearTimeout(deadline);
        if (error instanceof Timeout) settle({ outcome: 'timeout' });
        else if (error instanceof RefusedTarget)
          settle({ outcome: 'refused_target', error: error.message });
        else {
          const code = (error as { code?: string }).code;
          settle({ outcome: 'network_error', error: code ?? error.message });
        }
      });
      req.end(request.body);
    });

  return {
    send,
    close() {
      agents['http:'].destroy();
      agents['https:'].destroy();
    },
  };
}
