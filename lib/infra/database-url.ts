/**
 * DATABASE_URL names one PostgreSQL server, or several nodes of one Citus cluster in libpq's
 * multi-host form: `postgres://user:password@host1:5432,host2:5432/pulse?options`. Every node
 * gets the same user, password, database and parameters. node-postgres connects to one host per
 * URL, so the list is split here into one URL per node (docs/citus.md says what each process
 * does with them).
 */

/** Thrown with one message per wrong part of a DATABASE_URL. */
export class DatabaseUrlError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('; '));
    this.name = 'DatabaseUrlError';
  }
}

const PROTOCOLS = ['postgres:', 'postgresql:'];

/** `scheme://` `[userinfo@]` `hosts` `/path?query#fragment` */
const shape = /^([a-z][a-z\d+.-]*:\/\/)([^/?#]*)(.*)$/is;

/** One node: `host`, `host:port`, `[ipv6]` or `[ipv6]:port`. */
const nodeShape = /^(\[[\da-f:.]+\]|[^:[\]@\s]+)(?::(\d+))?$/i;

/**
 * One single-host URL per node DATABASE_URL names, in the order given (one for an ordinary URL,
 * returned unchanged). Throws DatabaseUrlError naming every wrong node, or the URL as a whole.
 */
export function databaseNodeUrls(value: string): string[] {
  const url = value.trim();
  const parts = shape.exec(url);
  const authority = parts?.[2] ?? '';
  const at = authority.lastIndexOf('@');
  const hosts = authority.slice(at + 1);
  if (!parts || !hosts.includes(',')) {
    if (!isPostgresUrl(url)) {
      throw new DatabaseUrlError(['must be a postgres:// or postgresql:// URL']);
    }
    return [url];
  }
  const [, scheme, , rest] = parts as unknown as [string, string, string, string];
  if (!PROTOCOLS.includes(scheme.slice(0, -2).toLowerCase())) {
    throw new DatabaseUrlError(['must be a postgres:// or postgresql:// URL']);
  }
  const userInfo = at === -1 ? '' : authority.slice(0, at + 1);
  const entries = hosts.split(',');
  const problems: string[] = [];
  const seen = new Set<string>();
  const urls: string[] = [];
  entries.forEach((raw, index) => {
    const entry = raw.trim();
    const which = `node ${index + 1} of ${entries.length}`;
    const node = nodeShape.exec(entry);
    const port = node?.[2] === undefined ? 5432 : Number(node[2]);
    if (!node || port < 1 || port > 65_535) {
      problems.push(
        `${which} (${JSON.stringify(entry)}) must be host or host:port, with a port from 1 to 65535`,
      );
      return;
    }
    const single = `${scheme}${userInfo}${entry}${rest}`;
    if (!isPostgresUrl(single)) {
      problems.push(`${which} (${JSON.stringify(entry)}) does not make a valid URL`);
      return;
    }
    const key = `${node[1]!.toLowerCase()}:${port}`;
    if (seen.has(key)) {
      problems.push(`${which} (${JSON.stringify(entry)}) names ${key} again: list each node once`);
      return;
    }
    seen.add(key);
    urls.push(single);
  });
  if (problems.length > 0) throw new DatabaseUrlError(problems);
  return urls;
}

function isPostgresUrl(value: string): boolean {
  try {
    return PROTOCOLS.includes(new URL(value).protocol);
  } catch {
    return false;
  }
}

/** `host:port` of a single-host URL, as logs and /readyz name the node (port 5432 if unset). */
export function nodeName(url: string): string {
  const parsed = new URL(url);
  return `${parsed.hostname}:${parsed.port || '5432'}`;
}

/**
 * The first node DATABASE_URL names: what the sweeper, the webhook deliverer and `npm run
 * migrate` connect to (only the API spreads its statements over every node).
 */
export const firstNodeUrl = (value: string): string => databaseNodeUrls(value)[0]!;
