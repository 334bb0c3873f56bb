//! IPv4 CIDRs such as `10.96.0.0/12`: the Service ClusterIP range the apiserver allocates
//! from, and the cluster pod network node IPAM carves node podCIDRs out of.

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

#[cfg(test)]
mod tests {
    use super::*;

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
