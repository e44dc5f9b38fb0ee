import { expect } from 'chai';

export interface ErrorBody {
  error: { code: string; message: string };
}

/** Asserts a JSON error answer with this status and code, and no stack trace or SQL in it. */
export async function expectError(
  response: Response,
  status: number,
  code: string,
): Promise<ErrorBody> {
  expect(response.status, `status for ${code}`).to.equal(status);
  expect(response.headers.get('content-type')).to.match(/^application\/json/);
  const body = (await response.json()) as ErrorBody;
  expect(body.error.code).to.equal(code);
  expect(body.error.message)
    .to.be.a('string')
    .and.not.match(/ at .*\.[jt]s:\d+|SELECT|INSERT|pulse\b/i);
  return body;
}
