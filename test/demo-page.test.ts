import { expect } from 'chai';
import { startTestApp, type TestApp } from './support/app.ts';
import { ensureClientBuilt } from './support/client-build.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';
import { API_SECURITY_HEADERS, DOCUMENT_ONLY_HEADERS } from './support/security-headers.ts';

describe('demo page and client library routes', () => {
  let database: TestDatabase;
  let app: TestApp;
  before(async () => {
    ensureClientBuilt();
    database = await createTestDatabase();
    app = await startTestApp(database);
  });
  after(async () => {
    await app.close();
    await database.drop();
  });

  it('serves the page at /demo/ with a policy that allows only its own origin', async () => {
    const redirect = await fetch(`${app.baseUrl}/demo`, { redirect: 'manual' });
    expect(redirect.status).to.equal(301);
    expect(redirect.headers.get('location')).to.equal('/demo/');
    const page = await app.get('/demo/');
    expect(page.status).to.equal(200);
    expect(page.headers.get('content-type')).to.match(/^text\/html/);
    const csp = page.headers.get('content-security-policy') ?? '';
    expect(csp).to.include("script-src 'self'").and.include("connect-src 'self'");
    expect(csp).not.to.include('unsafe');
    // helmet's full set: the API's security headers and those meant for documents.
    for (const name of [...API_SECURITY_HEADERS, ...DOCUMENT_ONLY_HEADERS]) {
      expect(page.headers.get(name), name).not.to.equal(null);
    }
    const html = await page.text();
    expect(html).to.include('<script type="module" src="demo.js">');
  });

  it('serves the built library at /client/, which the page imports', async () => {
    const script = await (await app.get('/demo/demo.js')).text();
    expect(script).to.match(/from '\/client\/index\.js'/);
    const library = await app.get('/client/index.js');
    expect(library.status).to.equal(200);
    expect(library.headers.get('content-type')).to.match(/javascript/);
    expect(await library.text()).to.include('PulseClient');
    expect((await app.get('/client/nothing.js')).status).to.equal(404);
  });

  it('answers GET / with the way to the demo page and the contract: a page for browsers, JSON otherwise', async () => {
    const page = await app.get('/', { accept: 'text/html,application/xhtml+xml,*/*;q=0.8' });
    expect(page.status).to.equal(200);
    expect(page.headers.get('content-type')).to.match(/^text\/html/);
    expect(page.headers.get('content-security-policy')).to.include("default-src 'none'");
    const html = await page.text();
    expect(html).to.include('href="/demo/"').and.include('href="/openapi.json"');
    const json = await app.get('/', { accept: 'application/json' });
    expect(json.status).to.equal(200);
    expect(await json.json()).to.deep.equal({
      service: 'pulse',
      demo: '/demo/',
      contract: '/openapi.json',
    });
    expect(await (await app.get('/')).json()).to.have.property('demo', '/demo/');
  });

  it('is not served with DEMO_PAGE=false', async () => {
    const off = await startTestApp(database, { DEMO_PAGE: 'false' });
    try {
      expect(await (await off.get('/')).json()).to.deep.equal({
        service: 'pulse',
        contract: '/openapi.json',
      });
      expect((await off.get('/demo/')).status).to.equal(404);
      expect((await off.get('/client/index.js')).status).to.equal(404);
    } finally {
      await off.close();
    }
  });
});
