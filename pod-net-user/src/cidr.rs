//! Pod CIDRs as the CLI reads and prints them: `10.244.2.0/24` or
//! `fd00:10:244:2::/64`, or a single pod as `/32` or `/128`.
//!
//! An IPv4-mapped IPv6 prefix (`::ffff:10.244.4.0/120`) is read as the IPv4
//! prefix it stands for (`10.244.4.0/24`): the maps key IPv4 that way
//! already, and the kernel must route it as IPv4, so one prefix has one
//! form everywhere (CLI, apply files, the store).
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Serialize, Serializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// The longest prefix for the address family.
    #[must_use]
    pub const fn max_prefix(addr: IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// Whether the prefix is one address (a /32, or a /128 for IPv6).
    #[must_use]
    pub const fn is_single_address(&self) -> bool {
        self.prefix_len == Self::max_prefix(self.addr)
    }

    /// The prefix `addr/prefix_len` with its host bits cleared.
    #[must_use]
    pub fn masked(addr: IpAddr, prefix_len: u8) -> Self {
        let addr = match addr {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4, prefix_len)),
            IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, prefix_len)),
        };
        Self { addr, prefix_len }
    }

    /// Whether the two prefixes share an address: one holds the other.
    #[must_use]
    pub fn overlaps(&self, other: &Self) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The first of `sorted` (sorted by `key`) whose address lies in this
    /// prefix: a prefix's address is its lowest, so the first item at or
    /// after it is inside when any is.
    pub fn first_inside<'a, T>(
        &self,
        sorted: &'a [T],
        key: impl Fn(&T) -> IpAddr,
    ) -> Option<&'a T> {
        let start = sorted.partition_point(|item| key(item) < self.addr);
        sorted.get(start).filter(|item| self.contains(key(item)))
    }

    /// Whether `ip` lies inside this prefix.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix_len) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix_len) == net,
            _ => false,
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix_len: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0);
    Ipv6Addr::from(bits & mask)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a CIDR did not parse.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidCidr(String);

impl fmt::Display for InvalidCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidCidr {}

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = text.split_once('/').ok_or_else(|| {
            InvalidCidr(format!(
                "invalid CIDR {text:?}: expected ADDRESS/PREFIX like 10.244.2.0/24"
            ))
        })?;
        let addr: IpAddr = addr.parse().map_err(|_| {
            InvalidCidr(format!(
                "invalid CIDR {text:?}: {addr:?} is not an IP address"
            ))
        })?;
        let prefix_len: u8 = prefix
            .parse()
            .ok()
            .filter(|&len| len <= Self::max_prefix(addr))
            .ok_or_else(|| {
                InvalidCidr(format!(
                    "invalid CIDR {text:?}: prefix length must be 0..={}",
                    Self::max_prefix(addr)
                ))
            })?;
        let masked = Self::masked(addr, prefix_len);
        if masked.addr != addr {
            return Err(InvalidCidr(format!(
                "invalid CIDR {text:?}: host bits are set (did you mean {masked}?)"
            )));
        }
        Ok(masked.unmapped())
    }
}

impl Cidr {
    /// The IPv4 prefix an IPv4-mapped one (`::ffff:a.b.c.d/96+n`) stands
    /// for; any other prefix as it is.
    #[must_use]
    pub fn unmapped(self) -> Self {
        match self.addr {
            IpAddr::V6(v6) if self.prefix_len >= IPV4_MAPPED_BITS => {
                v6.to_ipv4_mapped().map_or(self, |v4| Self {
                    addr: IpAddr::V4(v4),
                    prefix_len: self.prefix_len - IPV4_MAPPED_BITS,
                })
            }
            _ => self,
        }
    }
}

/// The bits before an IPv4 address in its IPv4-mapped form `::ffff:0:0/96`.
const IPV4_MAPPED_BITS: u8 = 96;

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_single_pods() {
        let cidr: Cidr = "10.244.2.0/24".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.244.2.0/24");
        assert!(cidr.contains("10.244.2.77".parse().unwrap()));
        assert!(!cidr.contains("10.244.3.1".parse().unwrap()));
        let pod: Cidr = "10.244.2.5/32".parse().unwrap();
        assert!(pod.contains("10.244.2.5".parse().unwrap()));
        let v6: Cidr = "fd00:10:244:2::/64".parse().unwrap();
        assert_eq!(v6.prefix_len, 64);
    }

    #[test]
    fn names_what_is_wrong() {
        let error = |text: &str| text.parse::<Cidr>().unwrap_err().to_string();
        assert!(error("10.244.2.0").contains("expected ADDRESS/PREFIX"));
        assert!(error("10.244.2/24").contains("is not an IP address"));
        assert!(error("10.244.2.0/33").contains("prefix length must be 0..=32"));
        assert!(error("10.244.2.1/24").contains("did you mean 10.244.2.0/24?"));
        assert!(error("10.244.2.0/x").contains("prefix length"));
        assert!(error("::ffff:10.244.4.1/120").contains("did you mean ::ffff:10.244.4.0/120?"));
    }

    #[test]
    fn ipv4_mapped_prefixes_read_as_ipv4() {
        let parse = |text: &str| text.parse::<Cidr>().unwrap();
        assert_eq!(parse("::ffff:10.244.4.0/120"), parse("10.244.4.0/24"));
        assert_eq!(parse("::ffff:10.244.4.7/128"), parse("10.244.4.7/32"));
        assert!(parse("::ffff:10.244.4.7/128").is_single_address());
        assert_eq!(parse("::ffff:0.0.0.0/96"), parse("0.0.0.0/0"));
        // Shorter than /96 it is more than IPv4: it stays IPv6.
        assert_eq!(parse("::fffe:0:0/95").to_string(), "::fffe:0:0/95");
        // IPv4-compatible (`::a.b.c.d`) and other IPv6 prefixes stay IPv6.
        assert_eq!(parse("::10.244.4.0/120").to_string(), "::af4:400/120");
        assert_eq!(
            parse("fd00:10:244:2::/64").to_string(),
            "fd00:10:244:2::/64"
        );
    }

    #[test]
    fn overlap_is_containment_either_way() {
        let parse = |text: &str| text.parse::<Cidr>().unwrap();
        assert!(parse("10.244.0.0/16").overlaps(&parse("10.244.1.0/24")));
        assert!(parse("10.244.1.0/24").overlaps(&parse("10.244.0.0/16")));
        assert!(parse("10.244.1.0/24").overlaps(&parse("10.244.1.0/24")));
        assert!(!parse("10.244.1.0/24").overlaps(&parse("10.244.2.0/24")));
        assert!(!parse("10.244.1.0/24").overlaps(&parse("::fffe:0:0/95")));
        assert_eq!(
            Cidr::masked("10.244.1.77".parse().unwrap(), 24),
            parse("10.244.1.0/24")
        );
    }
}
