/**
 * Where webhooks may be sent (server-side request forgery): http and https URLs whose host is a
 * public address. Checked when an endpoint is registered (the URL's host, every address its name
 * resolves to) and again by every delivery, in the socket's own name lookup: the addresses are
 * resolved, every one checked, and the connection made to the checked one, so a name that
 * resolves to something else a moment later (DNS rebinding) cannot redirect it.
 */
import dns from 'node:dns';
import net from 'node:net';

/** IPv4 ranges that are not the public internet (IANA special-purpose registry). */
const privateV4 = new net.BlockList();
for (const [network, prefix] of [
  ['0.0.0.0', 8], // "this network"
  ['10.0.0.0', 8], // private
  ['100.64.0.0', 10], // shared address space (carrier-grade NAT)
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local (cloud metadata services live here)
  ['172.16.0.0', 12], // private
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // documentation
  ['192.88.99.0', 24], // 6to4 relay anycast
  ['192.168.0.0', 16], // private
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24], // documentation
  ['203.0.113.0', 24], // documentation
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
] as const) {
  privateV4.addSubnet(network, prefix, 'ipv4');
}

/** IPv6: only global unicast (2000::/3) is public, less the special ranges inside it. */
const globalV6 = new net.BlockList();
globalV6.addSubnet('2000::', 3, 'ipv6');
const privateV6 = new net.BlockList();
for (const [network, prefix] of [
  ['2001::', 23], // IETF protocol assignments (Teredo, benchmarking, ORCHID...)
  ['2001:db8::', 32], // documentation
  ['2002::', 16], // 6to4 (embeds an IPv4 address)
  ['3fff::', 20], // documentation
] as const) {
  privateV6.addSubnet(network, prefix, 'ipv6');
}

/** The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) IPv6 address. */
function embeddedV4(address: string): string | undefined {
  const match = /^(?:::ffff:|64:ff9b::)(?:0:)?([0-9.]+)$/i.exec(address);
  return match?.[1] && net.isIPv4(match[1]) ? match[1] : undefined;
}

/** Whether an IP address is on the public internet (not loopback, private, link-local, reserved...). */
export function isPublicAddress(address: string): boolean {
  const bare = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
  if (net.isIPv4(bare)) return !privateV4.check(bare, 'ipv4');
  if (!net.isIPv6(bare)) return false;
  const v4 = embeddedV4(bare);
  if (v4 !== undefined) return !privateV4.check(v4, 'ipv4');
  return globalV6.check(bare, 'ipv6') && !privateV6.check(bare, 'ipv6');
}

/** A target refused: not http(s), or not a public address. The message names what is wrong. */
export class RefusedTargetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RefusedTargetError';
  }
}

export interface TargetPolicy {
  /** WEBHOOK_ALLOW_PRIVATE=1: any address (for receivers on a private network, and the tests). */
  allowPrivate: boolean;
  /** Longest a name lookup may take. */
  lookupTimeoutMs: number;
}

/** Every address a host name resolves to (an IP literal is itself). */
async function resolveAll(hostname: string, timeoutMs: number): Promise<dns.LookupAddress[]> {
  const bare = hostname.replace(/^\[|\]$/g, '');
  if (net.isIP(bare)) return [{ address: bare, family: net.isIPv6(bare) ? 6 : 4 }];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new RefusedTargetError(`resolving ${hostname} took longer than ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([dns.promises.lookup(bare, { all: true, verbatim: true }), timeout]);
  } catch (err) {
    if (err instanceof RefusedTargetError) throw err;
    throw new RefusedTargetError(`${hostname} does not resolve (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  } finally {
    clearTimeout(timer);
  }
}

/** The addresses of `hostname`, every one checked; refused if any is not public (unless allowed). */
export async function checkedAddresses(hostname: string, policy: TargetPolicy): Promise<dns.LookupAddress[]> {
  const addresses = await resolveAll(hostname, policy.lookupTimeoutMs);
  if (addresses.length === 0) throw new RefusedTargetError(`${hostname} has no address`);
  if (!policy.allowPrivate) {
    const refused = addresses.find((a) => !isPublicAddress(a.address));
    if (refused) throw new RefusedTargetError(`${hostname} resolves to ${refused.address}, which is not a public address`);
  }
  return addresses;
}

/** Checks a URL as registration does: http(s), no fragment, a host with only public addresses. */
export async function checkTargetUrl(raw: string, policy: TargetPolicy): Promise<URL> {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new RefusedTargetError('is not an absolute URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new RefusedTargetError('must be an http or https URL');
  if (url.hash !== '' || raw.includes('#')) throw new RefusedTargetError('must not have a #fragment');
  if (url.hostname === '') throw new RefusedTargetError('has no host');
  await checkedAddresses(url.hostname, policy);
  return url;
}

/**
 * A `lookup` for http.request: resolves, checks every address, and hands the socket the first one,
 * so the connection goes to an address that was checked. A refusal fails the request.
 */
export function checkedLookup(policy: TargetPolicy): net.LookupFunction {
  return (hostname, options, callback) => {
    checkedAddresses(hostname, policy).then(
      (addresses) => {
        const wanted = typeof options === 'object' && options.family ? addresses.filter((a) => a.family === options.family) : addresses;
        const chosen = wanted.length ? wanted : addresses;
        if (typeof options === 'object' && options.all) (callback as unknown as (err: null, all: dns.LookupAddress[]) => void)(null, chosen);
        else callback(null, chosen[0]!.address, chosen[0]!.family);
      },
      (err: Error) => callback(err as NodeJS.ErrnoException, '', 0),
    );
  };
}
