/**
 * The Grafana dashboard and the alert rules against a real Prometheus (Debian's `prometheus`
 * package, installed by .ci/run): the API and the sweeper run as processes, Prometheus scrapes
 * their /metrics every second, and every series the dashboard draws must exist there; every
 * dashboard query and rule must be accepted by Prometheus itself; promtool checks and unit-tests
 * the rules.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { waitFor } from './support/entry-points.ts';
import { freePort } from '../dev/embedded-postgres.ts';
import { serverUrl } from './support/database.ts';
import {
  adminQuery,
  queryOnce,
  TEMPLATE_DB_VAR,
  uniqueName,
  withDatabase,
} from './support/server.ts';
import { startReceiver, type TestReceiver } from './support/webhook-receiver.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const dashboardFile = path.join(root, 'ops/grafana/pulse-dashboard.json');
const rulesFile = path.join(root, 'ops/prometheus/pulse-alerts.yml');
const rulesTestFile = path.join(root, 'ops/prometheus/pulse-alerts.test.yml');

interface Panel {
  title: string;
  targets?: Array<{ expr: string }>;
  panels?: Panel[];
}

/** Every PromQL expression of the dashboard, with the panel it belongs to. */
export function dashboardQueries(dashboard: {
  panels: Panel[];
}): Array<{ panel: string; expr: string }> {
  const flat = (panels: Panel[]): Panel[] => panels.flatMap((p) => [p, ...flat(p.panels ?? [])]);
  return flat(dashboard.panels).flatMap((p) =>
    (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })),
  );
}

/** Metric names in a PromQL expression (functions, label matchers, groupings, ranges left out). */
export function metricNames(expr: string): string[] {
  const cleaned = expr
    .replace(/"[^"]*"/g, '""')
    .replace(/\{[^}]*\}/g, '{}')
    .replace(/\[[^\]]*\]/g, '[]')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  const names = [...cleaned.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)]
    .filter((m) => m[2] === undefined)
    .map((m) => m[1]!)
    .filter((name) => !['and', 'or', 'unless', 'bool', 'offset'].includes(name));
  return [...new Set(names)];
}

describe('dashboard and alerts on a real Prometheus', function () {
  this.timeout(60_000);
  const children: ChildProcess[] = [];
  let scratch: string;
  let database: string;
  let prometheusUrl: string;
  let receiver: TestReceiver;

  const spawnChild = (command: string, args: string[], env: Record<string, string> = {}) => {
    const child = spawn(command, args, {
      env: { PATH: process.env.PATH, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
    children.push(child);
    return { child, stderr: () => stderr };
  };

  const query = async (expr: string) => {
    const response = await fetch(`${prometheusUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
    return (await response.json()) as {
      status: string;
      error?: string;
      data?: { result: Array<{ metric: Record<string, string>; value: [number, string] }> };
    };
  };

  before(async () => {
    scratch = mkdtempSync(path.join(tmpdir(), 'pulse-prometheus-'));
    database = uniqueName('pulse_prom');
    await adminQuery(
      serverUrl(),
      `CREATE DATABASE ${database} TEMPLATE ${process.env[TEMPLATE_DB_VAR]}`,
    );
    const env = {
      DATABASE_URL: withDatabase(serverUrl(), database),
      LOG_LEVEL: 'silent',
      SWEEP_SCHEDULE: '* * * * * *',
    };
    const [apiPort, sweeperPort, webhooksPort, prometheusPort] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    // A webhook endpoint with a real receiver, so the deliverer's series exist.
    const secret = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;
    receiver = await startReceiver(secret);
    await queryOnce(
      env.DATABASE_URL,
      `INSERT INTO pulse_webhooks (name, url, secret) VALUES ('backend', $1, $2)`,
      [receiver.url, secret],
    );
    spawnChild(process.execPath, ['--import', 'tsx', 'api/main.ts'], {
      ...env,
      PORT: String(apiPort),
    });
    spawnChild(process.execPath, ['--import', 'tsx', 'sweeper/main.ts'], {
      ...env,
      METRICS_PORT: String(sweeperPort),
    });
    spawnChild(process.execPath, ['--import', 'tsx', 'webhooks/main.ts'], {
      ...env,
      METRICS_PORT: String(webhooksPort),
      WEBHOOKS_ALLOW_PRIVATE_TARGETS: 'true',
      WEBHOOKS_BACKLOG_INTERVAL_MS: '200',
    });
    writeFileSync(
      path.join(scratch, 'prometheus.yml'),
      JSON.stringify({
        global: { scrape_interval: '1s', evaluation_interval: '1s' },
        rule_files: [rulesFile],
        scrape_configs: [
          { job_name: 'pulse-api', static_configs: [{ targets: [`127.0.0.1:${apiPort}`] }] },
          {
            job_name: 'pulse-sweeper',
            static_configs: [{ targets: [`127.0.0.1:${sweeperPort}`] }],
          },
          {
            job_name: 'pulse-webhooks',
            static_configs: [{ targets: [`127.0.0.1:${webhooksPort}`] }],
          },
        ],
      }),
    );
    const prometheus = spawnChild('prometheus', [
      `--config.file=${path.join(scratch, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(scratch, 'data')}`,
      `--web.listen-address=127.0.0.1:${prometheusPort}`,
    ]);
    prometheusUrl = `http://127.0.0.1:${prometheusPort}`;

    const api = `http://127.0.0.1:${apiPort}`;
    await waitFor('the API', async () => ((await fetch(`${api}/readyz`)).ok ? true : undefined), {
      timeoutMs: 30_000,
      intervalMs: 200,
    });
    await waitFor(
      'the sweeper',
      async () => ((await fetch(`http://127.0.0.1:${sweeperPort}/readyz`)).ok ? true : undefined),
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    await waitFor(
      `Prometheus (${prometheus.stderr()})`,
      async () => ((await fetch(`${prometheusUrl}/-/ready`)).ok ? true : undefined),
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    // Traffic of every kind the dashboard draws: heartbeats, reads, a client error.
    const post = (route: string, body: string) =>
      fetch(`${api}${route}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
    for (const response of [
      await post('/status/update', '{"user_id":1}'),
      await post('/status/update', '[{"user_id":2},{"user_id":3}]'),
      await post('/status/batch', '[{"user_id":1}]'),
      await fetch(`${api}/status/1`),
      await post('/status/update', '{"user_id":"not a number"}'),
    ]) {
      await response.arrayBuffer();
    }
    // Every target scraped after the traffic, a sweep has reported, webhooks were delivered.
    await waitFor(
      'every target up',
      async () => {
        const up = await query('sum(up{job=~"pulse-api|pulse-sweeper|pulse-webhooks"})');
        return up.data?.result[0]?.value[1] === '3' ? true : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    await waitFor(
      'a sweep in Prometheus',
      async () => {
        const sweeps = await query('pulse_sweeps_total{outcome="done"} > 0');
        return sweeps.data?.result.length ? true : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 200 },
    );
    await waitFor(
      'a webhook delivery in Prometheus',
      async () => {
        const delivered = await query('pulse_webhook_events_delivered_total > 0');
        return delivered.data?.result.length ? true : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 200 },
    );
  });

  after(async () => {
    await receiver?.close();
    for (const child of children) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await once(child, 'exit');
      }
    }
    await adminQuery(serverUrl(), `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    rmSync(scratch, { recursive: true, force: true });
  });

  it('finds every series the dashboard draws in Prometheus, scraped from the API, the sweeper and the deliverer', async () => {
    const dashboard = JSON.parse(readFileSync(dashboardFile, 'utf8')) as { panels: Panel[] };
    const names = new Set(dashboardQueries(dashboard).flatMap(({ expr }) => metricNames(expr)));
    expect(names.size).to.be.greaterThan(15);
    // The histograms appear once the traffic above has been scraped: wait for them a little.
    let missing: string[] = [];
    await waitFor(
      'every dashboard series',
      async () => {
        const response = await fetch(`${prometheusUrl}/api/v1/label/__name__/values`);
        const present = new Set(((await response.json()) as { data: string[] }).data);
        missing = [...names].filter((name) => !present.has(name));
        return missing.length === 0 ? true : undefined;
      },
      { timeoutMs: 15_000, intervalMs: 200 },
    ).catch(() => undefined);
    expect(missing, 'series on the dashboard that Prometheus does not have').to.deep.equal([]);
  });

  it('runs every dashboard query in Prometheus without an error', async () => {
    const dashboard = JSON.parse(readFileSync(dashboardFile, 'utf8')) as { panels: Panel[] };
    for (const { panel, expr } of dashboardQueries(dashboard)) {
      // Grafana's interval variable, as Grafana would substitute it.
      const result = await query(expr.replaceAll('$__rate_interval', '1m'));
      expect(result.status, `${panel}: ${expr}: ${result.error ?? ''}`).to.equal('success');
    }
    const heartbeats = await query('sum(pulse_heartbeats_accepted_total)');
    expect(heartbeats.data?.result[0]?.value[1]).to.equal('3');
  });

  it('loads the alert rules into Prometheus, and they evaluate without errors', async () => {
    const rules = await waitFor(
      'evaluated rules',
      async () => {
        const response = await fetch(`${prometheusUrl}/api/v1/rules`);
        const body = (await response.json()) as {
          data: {
            groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }>;
          };
        };
        const all = body.data.groups.flatMap((g) => g.rules);
        return all.length > 0 && all.every((r) => r.health !== 'unknown') ? all : undefined;
      },
      { timeoutMs: 15_000, intervalMs: 200 },
    );
    expect(rules.map((r) => r.name)).to.include.members([
      'PulseNoSuccessfulSweep',
      'PulseHeartbeat503Rate',
      'PulseErrorRate',
      'PulseStreamsNearLimit',
      'PulseWebhookBacklogOld',
      'PulseWebhookParked',
    ]);
    for (const rule of rules)
      expect(rule.health, `${rule.name}: ${rule.lastError ?? ''}`).to.equal('ok');
  });

  it('passes promtool check rules and the rules unit tests', () => {
    const check = execFileSync('promtool', ['check', 'rules', rulesFile], { encoding: 'utf8' });
    expect(check).to.match(/SUCCESS: 10 rules found/);
    const unit = execFileSync('promtool', ['test', 'rules', rulesTestFile], { encoding: 'utf8' });
    expect(unit).to.include('SUCCESS');
  });
});
