//! Who is asking: the client's address, as the throttles and limits key it. The direct peer,
//! unless it is one of `[server] trusted_proxies`: then `X-Forwarded-For` is read from the right
//! (the hop the nearest proxy added) leftwards, past every trusted proxy, and the first address
//! that is not one is the client. A peer outside the list cannot name anyone with the header.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
pub use nimbus_config::Cidr;

/// Hops read at most: a chain longer than this ends at the last one read.
const MAX_HOPS: usize = 16;

/// The client's address for a request from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        // A hop that is not an address was written by a trusted proxy (every hop to its right
        // was): stop at the last address known.
        let Some(ip) = parse_hop(hop) else { return client };
        client = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`) or brackets, as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

/// The key a source is counted under: an IPv4 address, or the /64 of an IPv6 address (one
/// subscriber usually holds a whole /64, so single addresses would cost an attacker nothing).
pub fn source_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Whether the request's direct peer is one of the trusted proxies (then its `X-Forwarded-For`
/// may be passed on; else a proxy starts the header afresh).
pub fn is_trusted(peer: IpAddr, trusted: &[Cidr]) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|net| net.contains(peer))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_forwarded_for_only_from_trusted_peers() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("fd00::/8").unwrap()];
        let proxy: IpAddr = [10, 0, 0, 5].into();
        let stranger: IpAddr = [203, 0, 113, 9].into();
        let h = headers(&["198.51.100.1"]);
        assert_eq!(client_ip(stranger, &h, &trusted), stranger, "an untrusted peer names nobody");
        assert_eq!(client_ip(stranger, &h, &[]), stranger);
        assert_eq!(client_ip(proxy, &h, &trusted), IpAddr::from([198, 51, 100, 1]));
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy, "no header: the proxy itself");
        // A client-sent prefix is not believed: the rightmost untrusted hop is the client.
        let h = headers(&["1.2.3.4, 198.51.100.1", "10.9.9.9"]);
        assert_eq!(client_ip(proxy, &h, &trusted), IpAddr::from([198, 51, 100, 1]));
        // Every hop trusted: the leftmost.
        assert_eq!(client_ip(proxy, &headers(&["10.1.1.1, 10.2.2.2"]), &trusted), IpAddr::from([10, 1, 1, 1]));
        // Garbage written by a proxy stops the walk at the last address known.
        assert_eq!(client_ip(proxy, &headers(&["198.51.100.1, unknown"]), &trusted), proxy);
        // Ports, brackets, IPv4-mapped peers.
        assert_eq!(client_ip(proxy, &headers(&["198.51.100.1:4711"]), &trusted), IpAddr::from([198, 51, 100, 1]));
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        let h = headers(&["[2001:db8::1]:80"]);
        assert_eq!(client_ip(mapped, &h, &trusted), "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(mapped, &headers(&["[2001:db8::2]"]), &trusted), "2001:db8::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn keys_ipv6_sources_by_their_64() {
        assert_eq!(source_key([192, 0, 2, 1].into()), "192.0.2.1");
        assert_eq!(source_key("2001:db8:1:2:aaaa::1".parse().unwrap()), "2001:db8:1:2::/64");
        assert_eq!(source_key("2001:db8:1:2:bbbb::9".parse().unwrap()), "2001:db8:1:2::/64");
        assert_eq!(source_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1");
    }
}
