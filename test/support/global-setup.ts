import { killStrayProcesses, markTestStart } from './entry-points.ts';
import { SERVER_URL_VAR, startTestServer, stopTestServer, TEMPLATE_DB_VAR } from './server.ts';

let serverUrl = '';
let templateDb = '';

export async function mochaGlobalSetup(): Promise<void> {
  ({ serverUrl, templateDb } = await startTestServer());
  process.env[SERVER_URL_VAR] = serverUrl;
  process.env[TEMPLATE_DB_VAR] = templateDb;
  const where = process.env.DATABASE_URL ? 'the server in DATABASE_URL' : 'an embedded PostgreSQL';
  console.log(`  tests run against ${where}, template database ${templateDb}`);
}

export async function mochaGlobalTeardown(): Promise<void> {
  await stopTestServer(serverUrl, templateDb);
}

let firstOfTest = 0;

/** No test leaves a process behind, even when it fails half-way (see entry-points.ts). */
export const mochaHooks = {
  beforeEach(): void {
    firstOfTest = markTestStart();
  },
  async afterEach(): Promise<void> {
    await killStrayProcesses(firstOfTest);
  },
  async afterAll(): Promise<void> {
    const stray = await killStrayProcesses();
    if (stray.length)
      console.warn(`  killed processes still running at the end: ${stray.join(', ')}`);
  },
};
