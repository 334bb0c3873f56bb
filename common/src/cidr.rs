//! IPv4 CIDRs such as `10.96.0.0/12`: the Service ClusterIP range the apiserver allocates
//! from, and the cluster pod network node IPAM carves node podCIDRs out of; and address
//! ranges ([`Ipv4Range`]) such as the LoadBalancer pools.

use std::net::Ipv4Addr;

/// An IPv4 CIDR such as `10.96.0.0/12`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub base: u32,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn parse(s: &str) -> Result<Ipv4Cidr, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/length)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..=30"))?;
        let mask = mask(prefix);
        Ok(Ipv4Cidr {
            base: u32::from(addr) & mask,
            prefix,
        })
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.base
    }

    /// The address at `offset` from the network address.
    pub fn nth(&self, offset: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(offset as u32))
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// An inclusive range of IPv4 addresses, written `first-last` or as a CIDR. A CIDR of /30 or
/// wider leaves out its network and broadcast addresses (hosts on the link would take them
/// for those), as Cilium's LB IPAM does by default; /31 and /32 keep every address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Range {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Ipv4Range {
    pub fn parse(s: &str) -> Result<Ipv4Range, String> {
        let s = s.trim();
        if let Some((first, last)) = s.split_once('-') {
            let addr = |a: &str| {
                a.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))
            };
            let (first, last) = (addr(first)?, addr(last)?);
            if first > last {
                return Err(format!("{s:?}: {first} comes after {last}"));
            }
            return Ok(Ipv4Range { first, last });
        }
        let (addr, len) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is neither a CIDR (address/length) nor a range (first-last)")
        })?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..=32"))?;
        let base = u32::from(addr) & mask(prefix);
        let top = base | !mask(prefix);
        let (first, last) = if prefix <= 30 {
            (base + 1, top - 1)
        } else {
            (base, top)
        };
        Ok(Ipv4Range {
            first: first.into(),
            last: last.into(),
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }

    /// Every address of the range, lowest first.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_from_cidrs_and_pairs() {
        let r = Ipv4Range::parse("10.7.0.200-10.7.0.202").unwrap();
        assert_eq!(
            r.addresses().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["10.7.0.200", "10.7.0.201", "10.7.0.202"]
        );
        assert!(r.contains("10.7.0.201".parse().unwrap()));
        assert!(!r.contains("10.7.0.203".parse().unwrap()));
        let c = Ipv4Range::parse("192.0.2.0/29").unwrap();
        assert_eq!(c.to_string(), "192.0.2.1-192.0.2.6");
        assert_eq!(
            Ipv4Range::parse("192.0.2.9/32").unwrap().to_string(),
            "192.0.2.9-192.0.2.9"
        );
        assert_eq!(
            Ipv4Range::parse("192.0.2.8/31")
                .unwrap()
                .addresses()
                .count(),
            2
        );
        assert!(Ipv4Range::parse("10.0.0.9-10.0.0.1").is_err());
        assert!(Ipv4Range::parse("10.0.0.1").is_err());
        assert!(Ipv4Range::parse("10.0.0.0/33").is_err());
        assert!(Ipv4Range::parse("10.0.0.x-10.0.0.1").is_err());
    }

    #[test]
    fn parses_masks_and_prints() {
        let c = Ipv4Cidr::parse("10.244.7.9/16").unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert_eq!(c.nth(256).to_string(), "10.244.1.0");
        assert_eq!(Ipv4Cidr::parse("0.0.0.0/0").unwrap().size(), 1 << 32);
        assert!(Ipv4Cidr::parse("10.0.0.0/8x").is_err());
        assert!(Ipv4Cidr::parse("10.0.0/8").is_err());
    }
}
