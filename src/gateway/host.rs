//! Virtual-host addressing: `bucket.<domain>[:port]` names the bucket in the host.
//!
//! The host is compared case-insensitively and without its port. Any host that is not
//! `<bucket>.<domain>` for a configured domain — an IP address, `localhost`, the domain itself,
//! another name — is path-style (`/bucket/key`). (s3s's own `SingleDomain` would take
//! `localhost:9000` for a bucket name.)

use std::borrow::Cow;

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

/// The configured virtual-host domains.
#[derive(Debug, Clone, Default)]
pub struct VirtualHosts {
    /// Lowercase domains, without ports.
    domains: Vec<String>,
}

impl VirtualHosts {
    /// Virtual hosts under `domains` (none: every request is path-style).
    pub fn new(domains: &[String]) -> Self {
        VirtualHosts {
            domains: domains.iter().map(|d| d.trim_end_matches('.').to_ascii_lowercase()).collect(),
        }
    }

    /// The bucket a `Host` header names, or `None` for a path-style request.
    pub fn bucket_of(&self, host: &str) -> Option<String> {
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        self.domains.iter().find_map(|domain| {
            let bucket = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
            (!bucket.is_empty()).then(|| bucket.to_owned())
        })
    }
}

/// `host` without a `:port` (IPv6 literals keep their brackets' content whole).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| h.trim_start_matches('['));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let domain = Cow::Borrowed(strip_port(host));
        Ok(match self.bucket_of(host) {
            Some(bucket) => VirtualHost::new(domain).with_bucket(bucket),
            None => VirtualHost::new(domain),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bucket_dot_domain_is_virtual() {
        let hosts = VirtualHosts::new(&["s3.example.org".into(), "Cache.Local".into()]);
        assert_eq!(hosts.bucket_of("nix.s3.example.org"), Some("nix".into()));
        assert_eq!(hosts.bucket_of("NIX.S3.Example.Org:9000"), Some("nix".into()));
        assert_eq!(hosts.bucket_of("a.b.cache.local"), Some("a.b".into()));
        for path_style in [
            "s3.example.org",
            "s3.example.org:9000",
            "localhost:9000",
            "localhost",
            "127.0.0.1:9000",
            "[::1]:9000",
            "evils3.example.org",
            ".s3.example.org",
            "other.net",
        ] {
            assert_eq!(hosts.bucket_of(path_style), None, "{path_style}");
        }
        assert_eq!(VirtualHosts::new(&[]).bucket_of("nix.s3.example.org"), None);
        let vh = hosts.parse_host_header("localhost:9000").unwrap();
        assert_eq!(vh.bucket(), None);
        let vh = hosts.parse_host_header("nix.s3.example.org:80").unwrap();
        assert_eq!(vh.bucket(), Some("nix"));
    }
}
