//! Where a provider client may connect: the network policy of namespaced KeyProviders.
//!
//! A KeyProvider is written by a tenant, so its `baseURL` is not trusted: by default it may not
//! reach loopback, link-local (cloud metadata at 169.254.169.254), private, shared (CGNAT),
//! unspecified, multicast or reserved addresses, and it must use `https://`. The operator's
//! admin lifts either rule with `keysmith run --allow-private-provider-networks` /
//! `--allow-insecure-http`; ClusterKeyProviders (written by admins) are not restricted.
//!
//! The address rule is checked twice: on the base URL when the client is built (an IP literal,
//! including the forms the URL parser normalises such as `http://2130706433/`), and on every
//! address a host name resolves to, at connect time, by [`GuardedResolver`]: a name that
//! resolves to 127.0.0.1 is refused without a connection (and a name that resolves to both a
//! public and a private address is only ever connected to on the public one). Redirects are
//! never followed (see [`super::http`]), so an answer cannot send the client elsewhere.
//!
//! Messages say what rule refused the URL, never which address a name resolved to: a tenant
//! must not be able to map the operator's internal network through status conditions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What a provider client may connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Loopback, link-local, private, shared, unspecified, multicast and reserved addresses.
    pub allow_private: bool,
    /// Plain `http://` base URLs.
    pub allow_http: bool,
}

impl NetworkPolicy {
    /// No restriction (ClusterKeyProviders, `keysmith render`, tests).
    pub const OPEN: NetworkPolicy = NetworkPolicy {
        allow_private: true,
        allow_http: true,
    };
    /// The secure default for namespaced KeyProviders.
    pub const RESTRICTED: NetworkPolicy = NetworkPolicy {
        allow_private: false,
        allow_http: false,
    };
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        NetworkPolicy::OPEN
    }
}

/// The message of a host name whose every address is refused (no address is named).
pub const RESOLVES_TO_PRIVATE: &str = "the baseURL's host resolves to a private, loopback or link-local address, refused by the operator's policy for KeyProviders (an admin may allow it with --allow-private-provider-networks, or use a ClusterKeyProvider)";

/// The error a [`GuardedResolver`] gives; the HTTP layer finds it in a connect error's causes
/// and reports [`super::ProviderError::Refused`] without retrying.
#[derive(Debug)]
pub struct RefusedAddress;

impl std::fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(RESOLVES_TO_PRIVATE)
    }
}

impl std::error::Error for RefusedAddress {}

/// Whether `ip` is an address a restricted client may not connect to: anything that is not a
/// globally routed unicast address (IPv4-mapped, -compatible, NAT64 and 6to4 IPv6 addresses are
/// judged by the IPv4 address they carry).
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // 0.0.0.0/8: "this network", unspecified
        || a == 10                           // 10/8 private
        || a == 127                          // 127/8 loopback
        || (a == 100 && (64..128).contains(&b)) // 100.64/10 shared (CGNAT; some clouds' metadata)
        || (a == 169 && b == 254)            // 169.254/16 link-local (cloud metadata)
        || (a == 172 && (16..32).contains(&b)) // 172.16/12 private
        || (a == 192 && b == 0 && c == 0)    // 192.0.0/24 IETF protocol assignments
        || (a == 192 && b == 168)            // 192.168/16 private
        || (a == 198 && (b == 18 || b == 19)) // 198.18/15 benchmarking
        || a >= 224 // 224/4 multicast, 240/4 reserved, 255.255.255.255 broadcast
}

fn refused_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if s[0..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return refused_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // 64:ff9b::/96 NAT64: the IPv4 address it reaches.
    if s[0..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refused_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // 2002::/16 6to4: the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        return refused_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    (s[0] & 0xffc0) == 0xfe80          // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0   // fec0::/10 site-local (deprecated)
        || (s[0] & 0xfe00) == 0xfc00   // fc00::/7 unique local (fd00:ec2::254 is AWS metadata)
        || (s[0] & 0xff00) == 0xff00   // ff00::/8 multicast
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48 local-use NAT64
        || (s[0] == 0x100 && s[1..4] == [0; 3]) // 100::/64 discard
        || (s[0] == 0x2001 && s[1] == 0xdb8) // 2001:db8::/32 documentation
}

/// Check a parsed base URL against `policy` (the static part: scheme, IP literal hosts). Err is
/// a message for the provider object's condition.
pub fn check_url(url: &url::Url, policy: NetworkPolicy) -> Result<(), String> {
    if !policy.allow_http && url.scheme() != "https" {
        return Err(
            "the baseURL uses plain http://: KeyProviders must use https:// (an admin may allow http with --allow-insecure-http, or use a ClusterKeyProvider)".into(),
        );
    }
    if policy.allow_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        // A name the URL parser kept as a name but an address parser would read as one.
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').parse::<IpAddr>().ok(),
        None => None,
    };
    match ip {
        Some(ip) if is_refused(ip) => Err("the baseURL names a private, loopback or link-local address, refused by the operator's policy for KeyProviders (an admin may allow it with --allow-private-provider-networks, or use a ClusterKeyProvider)".into()),
        _ => Ok(()),
    }
}

/// A DNS resolver that drops refused addresses from every answer, and fails with
/// [`RefusedAddress`] when none is left: the connection is never attempted.
#[derive(Debug, Default)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = filter_addrs(found)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The addresses of `found` a restricted client may connect to; `Err(RefusedAddress)` when
/// there were some and none is allowed.
pub fn filter_addrs(
    found: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    if found.is_empty() {
        return Err("the host name has no address".into());
    }
    let allowed: Vec<SocketAddr> = found.into_iter().filter(|a| !is_refused(a.ip())).collect();
    if allowed.is_empty() {
        return Err(Box::new(RefusedAddress));
    }
    Ok(allowed)
}

/// Whether `e` (or one of its causes) is a [`RefusedAddress`].
pub fn is_refused_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<RefusedAddress>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_are_not() {
        for bad in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(is_refused(ip(bad)), "{bad} must be refused");
        }
        for good in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "192.169.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!is_refused(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn base_urls_are_checked_for_scheme_and_literal_addresses() {
        let check = |u: &str| check_url(&url::Url::parse(u).unwrap(), NetworkPolicy::RESTRICTED);
        assert!(check("https://openrouter.ai/api/v1").is_ok());
        assert!(check("https://8.8.8.8/").is_ok());
        let http = check("http://openrouter.ai/api/v1").unwrap_err();
        assert!(http.contains("http://") && http.contains("--allow-insecure-http"));
        for bad in [
            "https://127.0.0.1:8787/api/v1",
            "https://169.254.169.254/latest",
            // Forms the URL parser normalises to an address.
            "https://2130706433/",
            "https://0x7f.1/",
            "https://127.1/",
            "https://[::1]/",
            "https://[::ffff:7f00:1]/",
            "https://[fe80::1]/",
            "https://10.1.2.3./",
        ] {
            let e = check(bad).unwrap_err();
            assert!(
                e.contains("--allow-private-provider-networks"),
                "{bad}: {e}"
            );
            // The message does not repeat the address.
            assert!(!e.contains("127.") && !e.contains("169.254"), "{e}");
        }
        // Each flag lifts its own rule.
        let lax = |u: &str, p| check_url(&url::Url::parse(u).unwrap(), p);
        let private_ok = NetworkPolicy {
            allow_private: true,
            allow_http: false,
        };
        assert!(lax("https://127.0.0.1/", private_ok).is_ok());
        assert!(lax("http://127.0.0.1/", private_ok).is_err());
        let http_ok = NetworkPolicy {
            allow_private: false,
            allow_http: true,
        };
        assert!(lax("http://example.com/", http_ok).is_ok());
        assert!(lax("http://127.0.0.1/", http_ok).is_err());
        assert!(lax("http://127.0.0.1/", NetworkPolicy::OPEN).is_ok());
    }

    #[test]
    fn resolved_answers_keep_only_public_addresses() {
        let sa = |s: &str| SocketAddr::new(ip(s), 443);
        let e = filter_addrs(vec![sa("127.0.0.1"), sa("::1")]).unwrap_err();
        assert!(is_refused_error(e.as_ref()));
        assert!(!e.to_string().contains("127.0.0.1"), "{e}");
        assert_eq!(
            filter_addrs(vec![sa("10.0.0.1"), sa("1.1.1.1")]).unwrap(),
            vec![sa("1.1.1.1")]
        );
        assert!(!is_refused_error(
            filter_addrs(vec![]).unwrap_err().as_ref()
        ));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_by_the_resolver() {
        let name: Name = "localhost".parse().unwrap();
        let err = match GuardedResolver.resolve(name).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(is_refused_error(err.as_ref()), "{err}");
    }
}
