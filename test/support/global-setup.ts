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
