//! The address guard: which IP addresses an image download may connect to.
//!
//! By default only globally routable addresses are allowed, so a client cannot point the
//! service at loopback, the private networks, link-local (including cloud metadata at
//! 169.254.169.254), CGNAT, multicast and the other special ranges. Names are checked by a DNS
//! resolver that drops refused addresses, so the address checked is the address connected to
//! (no rebinding between check and connect); IP literals — in any spelling the URL parser
//! accepts, such as `2130706433` or `127.1` — are checked before the request and on every
//! redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a destination was refused. Travels inside reqwest's error chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Blocked(pub String);

/// True when `ip` is an address on the public internet.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network", unspecified
        || a == 10                             // private
        || a == 127                            // loopback
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 169 && b == 254)              // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay anycast
        || (a == 192 && b == 168)              // private
        || (a == 198 && (b == 18 || b == 19))  // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d): refused outright, a
    // well-behaved image host never needs them and they are a classic way around v4 checks.
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return false;
    }
    let first = s[0];
    !((first & 0xfe00) == 0xfc00                // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80          // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0          // site-local (deprecated)
        || (first & 0xff00) == 0xff00          // multicast
        || (first == 0x2001 && s[1] == 0x0db8) // documentation
        || (first == 0x2001 && s[1] < 0x0200)  // IETF special purpose (incl. Teredo)
        || first == 0x2002                     // 6to4: embeds an IPv4 address
        || (first == 0x0064 && s[1] == 0xff9b) // NAT64: embeds an IPv4 address
        || (first == 0x0100 && s[1..4] == [0; 3])) // discard-only
}

/// Checks a URL's host when it is an IP literal (names are checked by [`GuardedResolver`]).
pub fn check_literal(url: &reqwest::Url) -> Result<(), Blocked> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if is_global(ip) {
        Ok(())
    } else {
        Err(Blocked(format!("address {ip} is not a public address")))
    }
}

/// A resolver that keeps only global addresses and fails when none is left.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| is_global(a.ip()))
                .collect();
            if allowed.is_empty() {
                let shown = found
                    .first()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                return Err(Box::new(Blocked(format!(
                    "host {host} resolves to {shown}, which is not a public address"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(s: &str) -> bool {
        is_global(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "142.250.1.1",
            "2606:4700:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert!(global(ip), "{ip}");
        }
    }

    #[test]
    fn special_ranges_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "2001:db8::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
        ] {
            assert!(!global(ip), "{ip}");
        }
    }

    #[test]
    fn numeric_spellings_of_loopback_are_caught() {
        for url in [
            "http://2130706433/x.jpg",
            "http://0x7f000001/x.jpg",
            "http://127.1/x.jpg",
            "http://[::ffff:7f00:1]/",
        ] {
            let url = reqwest::Url::parse(url).unwrap();
            assert!(check_literal(&url).is_err(), "{url}");
        }
        assert!(check_literal(&reqwest::Url::parse("http://example.com/a.jpg").unwrap()).is_ok());
    }
}
