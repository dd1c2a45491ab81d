//! The address guard: which IP addresses an image download may connect to.
//!
//! By default only globally routable addresses are allowed, so a client cannot point the
//! service at loopback, the private networks, link-local (including cloud metadata at
//! 169.254.169.254), CGNAT, multicast and the other special ranges. Names are checked by a DNS
//! resolver that drops refused addresses, so the address checked is the address connected to
//! (no rebinding between check and connect); IP literals — in any spelling the URL parser
//! accepts, such as `2130706433` or `127.1` — are checked before the request and on every
//! redirect. A refusal names the host, never the addresses it resolved to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a destination was refused. Travels inside reqwest's error chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Blocked(pub String);

/// A host name that does not resolve. Travels inside reqwest's error chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unresolved(pub String);

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
    // Also the rest of ::/8 (IPv4-translated ::ffff:0:a.b.c.d and other reserved forms).
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) || (s[0] & 0xff00) == 0 {
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

/// Exceptions to the global-only rule for an intranet deployment: host names (exact, or
/// `*.corp.example` for any subdomain) and networks (`10.1.2.0/24`, or one address). Parsed
/// from a comma-separated list (`RP_ALLOW_HOSTS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    names: Vec<String>,
    suffixes: Vec<String>,
    nets: Vec<IpNet>,
}

impl AllowList {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut list = AllowList::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Ok(net) = entry.parse::<IpNet>() {
                list.nets.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if let Some(suffix) = entry.strip_prefix("*.") {
                list.suffixes
                    .push(format!(".{}", suffix.to_ascii_lowercase()));
            } else if entry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                list.names.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "`{entry}` is neither a host name, an address nor a CIDR"
                ));
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.suffixes.is_empty() && self.nets.is_empty()
    }

    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(s.as_str()))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// Which destinations a download may connect to.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Everything allowed (tests, trusted deployments).
    pub allow_private: bool,
    pub allow: AllowList,
}

impl Policy {
    /// Whether `ip`, reached through the name `host` (if any), may be connected to.
    pub fn permits(&self, host: Option<&str>, ip: IpAddr) -> bool {
        self.allow_private
            || is_global(ip)
            || self.allow.allows_ip(ip)
            || host.is_some_and(|h| self.allow.allows_name(h))
    }

    /// Checks a URL's host when it is an IP literal (names are checked by [`GuardedResolver`]).
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), Blocked> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        if self.permits(None, ip) {
            Ok(())
        } else {
            Err(Blocked(format!("address {ip} is not a public address")))
        }
    }
}

/// A resolver that keeps only the addresses the policy permits and fails when none is left.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Arc<Policy>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(Unresolved(format!("{host}: {e}"))))?
                .collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.permits(Some(&host), a.ip()))
                .collect();
            if allowed.is_empty() {
                // Never say what the name resolved to: the results endpoint would let any
                // client map the service's internal names to addresses.
                return Err(Box::new(Blocked(format!(
                    "host {host} resolves to a non-public address"
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
            "::ffff:0:7f00:1",
        ] {
            assert!(!global(ip), "{ip}");
        }
    }

    #[test]
    fn numeric_spellings_of_loopback_are_caught() {
        let policy = Policy::default();
        for url in [
            "http://2130706433/x.jpg",
            "http://0x7f000001/x.jpg",
            "http://127.1/x.jpg",
            "http://0177.0.0.1/x.jpg",
            "http://[::ffff:7f00:1]/",
        ] {
            let url = reqwest::Url::parse(url).unwrap();
            assert!(policy.check_literal(&url).is_err(), "{url}");
        }
        let public = reqwest::Url::parse("http://example.com/a.jpg").unwrap();
        assert!(policy.check_literal(&public).is_ok());
    }

    #[test]
    fn the_allow_list_opens_chosen_hosts_and_networks_only() {
        let allow =
            AllowList::parse("intranet.local, *.corp.example, 10.1.2.0/24, 192.168.7.7").unwrap();
        let policy = Policy {
            allow_private: false,
            allow,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(policy.permits(Some("intranet.local"), ip("10.9.9.9")));
        assert!(policy.permits(Some("img.corp.example"), ip("172.16.0.5")));
        assert!(policy.permits(None, ip("10.1.2.200")));
        assert!(policy.permits(None, ip("192.168.7.7")));
        assert!(!policy.permits(None, ip("10.1.3.1")));
        assert!(!policy.permits(Some("other.local"), ip("192.168.7.8")));
        assert!(!policy.permits(Some("corp.example.evil"), ip("10.0.0.1")));
        assert!(AllowList::parse("bad host!").is_err());
        assert!(AllowList::parse("").unwrap().is_empty());
    }
}
