/**
 * Secrets never reach an output: a connection string is shown with its password replaced by ***,
 * whether or not it parses as a URL (a wrong port, an unencoded "/" or "@" in the password), and
 * with any password given as a parameter (`?password=...`, `password=...`) masked too.
 */
const passwordParameter = /\b(password|sslpassword|passwd)=[^&\s]*/gi;
const authority = /^([a-z][a-z\d+.-]*:\/\/)(.*)@/i;

export function redactConnectionString(value: string): string {
  let redacted: string;
  try {
    const url = new URL(value);
    if (url.password) url.password = '***';
    redacted = url.toString();
  } catch {
    // Not a URL: everything between "scheme://" and the last "@" is user info; keep the user only.
    redacted = value.replace(authority, (_match, scheme: string, userInfo: string) => {
      const colon = userInfo.indexOf(':');
      return `${scheme}${colon === -1 ? userInfo : `${userInfo.slice(0, colon)}:***`}@`;
    });
  }
  return redacted.replace(passwordParameter, '$1=***');
}
