//! Who the client is, as far as the service can trust it: the TCP peer, unless that peer is a
//! proxy the operator named (`--trusted-proxies`), in which case the address that proxy
//! reports in `X-Forwarded-For`. A header from anyone else is ignored: a client cannot pick
//! the address its sign-in attempts are counted against.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed (addresses and CIDRs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// A comma-separated list of addresses and CIDRs (`10.0.0.5, 10.1.0.0/16`); empty: none.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{entry}` is neither an address nor a CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`: walking `X-Forwarded-For` from the right (each proxy appends
    /// the address it saw), the first address that is not a trusted proxy; `peer` itself when
    /// it is not trusted, or sent no usable header.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|a| a.trim().parse::<IpAddr>())
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        let mut client = peer;
        for hop in forwarded.into_iter().rev() {
            client = hop;
            if !self.trusts(hop) {
                break;
            }
        }
        client
    }
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.5`, as a dual-stack listener reports it)
/// is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_trusted_proxy_says_who_the_client_is() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.0.2.7").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Straight from a client: its header is its own invention.
        assert_eq!(
            proxies.client(ip("203.0.113.9"), &headers(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        // Through the proxy: the address it saw.
        assert_eq!(
            proxies.client(ip("10.0.0.5"), &headers(&["1.2.3.4, 198.51.100.2"])),
            ip("198.51.100.2")
        );
        // Through two trusted proxies: the first untrusted hop from the right.
        assert_eq!(
            proxies.client(ip("10.0.0.5"), &headers(&["198.51.100.2", "192.0.2.7"])),
            ip("198.51.100.2")
        );
        // A proxy that sends nothing usable: the proxy is the client.
        assert_eq!(
            proxies.client(ip("10.0.0.5"), &headers(&["not an address"])),
            ip("10.0.0.5")
        );
        assert_eq!(
            proxies.client(ip("::ffff:10.0.0.5"), &headers(&["198.51.100.2"])),
            ip("198.51.100.2")
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }
}
