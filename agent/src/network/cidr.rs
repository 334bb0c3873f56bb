//! IPv4 prefixes as the node and pod network use them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
        let mask = Self::mask_of(prefix);
        Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        }
    }
    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix as u32)
        }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.prefix) == u32::from(self.addr)
    }
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix as u32)
    }
    /// The n-th address of the prefix (0 = network address).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        (u64::from(n) < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n))
    }
    pub fn offset_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip)
            .then(|| u32::from(ip) - u32::from(self.addr))
    }
    /// The first host address, held by the node's bridge as the pods' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1).unwrap_or(self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 CIDR"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 CIDR"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{s:?} has a bad prefix length"))?;
        if prefix > 32 {
            return Err(format!("{s:?} has a prefix length over 32"));
        }
        Ok(Ipv4Net::new(addr, prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let n: Ipv4Net = "10.244.1.7/24".parse().unwrap();
        assert_eq!(n.to_string(), "10.244.1.0/24");
        assert!(n.contains("10.244.1.255".parse().unwrap()));
        assert!(!n.contains("10.244.2.1".parse().unwrap()));
        assert_eq!(n.gateway(), "10.244.1.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(n.nth(256), None);
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("nonsense".parse::<Ipv4Net>().is_err());
    }
}
