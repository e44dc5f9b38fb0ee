/**
 * Which addresses a webhook may be sent to (docs/webhooks.md, "Which addresses may be targets").
 *
 * By default: https only, and only to public addresses. Loopback, private (RFC 1918, unique
 * local), link-local (including cloud metadata at 169.254.169.254), carrier-grade NAT, multicast,
 * unspecified and reserved ranges are refused, so an endpoint URL cannot make Pulse call into its
 * own network. WEBHOOKS_ALLOW_PRIVATE_TARGETS=true allows http and every address (a receiver on
 * the same network, tests). The check runs on the address actually connected to (the resolver's
 * answer, not the URL's name), so a name that resolves to a private address is refused too.
 */
import { BlockList, isIP } from 'node:net';

const blocked = new BlockList();
for (const [network, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  blocked.addSubnet(network, prefix, 'ipv4');
}
for (const [network, prefix] of [
  ['::', 128],
  ['::1', 128],
  ['64:ff9b::', 96],
  ['100::', 64],
  ['2001:db8::', 32],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const) {
  blocked.addSubnet(network, prefix, 'ipv6');
}

/** True for an address that is not on the public internet (see the ranges above). */
export function isPrivateAddress(address: string): boolean {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return blocked.check(mapped[1]!, 'ipv4');
  const family = isIP(address);
  if (family === 0) return true;
  return blocked.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

/**
 * Why `url` may not be a target under the rule, or undefined when it may. Checks the scheme and,
 * for an address written in the URL, the address; names are checked when they resolve.
 */
export function refuseTargetUrl(url: string, allowPrivate: boolean): string | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return 'not a URL';
  }
  if (parsed.username || parsed.password) return 'credentials in the URL are not accepted';
  if (parsed.protocol === 'http:' && !allowPrivate)
    return 'http:// needs WEBHOOKS_ALLOW_PRIVATE_TARGETS=true (https only by default)';
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:')
    return `scheme ${parsed.protocol} is not http(s)`;
  const host = parsed.hostname.replace(/^\[|\]$/g, '');
  if (!allowPrivate && isIP(host) !== 0 && isPrivateAddress(host))
    return `${host} is not a public address (WEBHOOKS_ALLOW_PRIVATE_TARGETS=false)`;
  return undefined;
}
