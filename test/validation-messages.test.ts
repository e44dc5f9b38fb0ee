import { expect } from 'chai';
import { startTestApp, type TestApp } from './support/app.ts';
import { createTestDatabase, type TestDatabase } from './support/database.ts';

describe('validation messages: each names its field once, and the item of an array', () => {
  let database: TestDatabase;
  let app: TestApp;
  before(async () => {
    database = await createTestDatabase();
    app = await startTestApp(database);
  });
  after(async () => {
    await app.close();
    await database.drop();
  });

  const cases: Array<[string, string, unknown, string, string]> = [
    [
      'a string id',
      '/status/update',
      { user_id: 'x' },
      'invalid_user_id',
      'user_id must be a number',
    ],
    ['no id', '/status/update', {}, 'invalid_user_id', 'user_id is required'],
    [
      'a fraction',
      '/status/update',
      { user_id: 1.5 },
      'invalid_user_id',
      'user_id must be an integer',
    ],
    ['zero', '/status/offline', { user_id: 0 }, 'invalid_user_id', 'user_id must be at least 1'],
    [
      'a bad second item',
      '/status/batch',
      [{ user_id: 1 }, { user_id: -2 }],
      'invalid_user_id',
      'item 1: user_id must be at least 1',
    ],
    [
      'an item that is no object',
      '/status/batch',
      [7],
      'invalid_body',
      'item 0: each item must be an object with user_id',
    ],
  ];
  for (const [label, path, body, code, message] of cases) {
    it(`${label} on ${path}: "${message}"`, async () => {
      const response = await app.post(path, body);
      expect(response.status).to.equal(400);
      expect(await response.json()).to.deep.equal({ error: { code, message } });
    });
  }
});
