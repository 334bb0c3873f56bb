//! Pod IP allocation within the node's podCIDR, kept as one file per address (like the CNI
//! host-local plugin) so allocations survive agent restarts and creating a file with
//! O_EXCL makes a claim atomic.

use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::cidr::Ipv4Net;

pub struct Ipam {
    dir: PathBuf,
    range: Ipv4Net,
}

impl Ipam {
    pub fn open(root: &Path, range: Ipv4Net) -> Result<Ipam> {
        let dir = root.join(range.to_string().replace('/', "_"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Ipam { dir, range })
    }

    /// The address held by `owner` (a pod uid), allocating one if it has none.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.lookup(owner) {
            return Ok(ip);
        }
        let size = self.range.size();
        if size < 4 {
            bail!("pod CIDR {} is too small", self.range);
        }
        // Hosts are 2 ..= size-2 (network, gateway and broadcast excluded). Start after the
        // last address handed out so a released address isn't reused at once.
        let hosts = (size - 3) as u32;
        let last = std::fs::read_to_string(self.dir.join("last_reserved_ip"))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .and_then(|ip| self.range.offset_of(ip))
            .filter(|o| *o >= 2 && *o < 2 + hosts)
            .unwrap_or(1 + hosts);
        for i in 1..=hosts {
            let offset = 2 + (last - 2 + i) % hosts;
            let Some(ip) = self.range.nth(offset) else {
                continue;
            };
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.dir.join(ip.to_string()))
            {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())?;
                    let _ = std::fs::write(self.dir.join("last_reserved_ip"), ip.to_string());
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("claiming a pod IP"),
            }
        }
        bail!("no free address left in pod CIDR {}", self.range)
    }

    pub fn lookup(&self, owner: &str) -> Option<Ipv4Addr> {
        self.allocations()
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip)
    }

    pub fn release(&self, owner: &str) -> Result<()> {
        for (ip, o) in self.allocations() {
            if o == owner {
                std::fs::remove_file(self.dir.join(ip.to_string()))?;
            }
        }
        Ok(())
    }

    /// Release every address whose owner isn't in `live` (pods that vanished while the
    /// agent was down).
    pub fn release_all_but(&self, live: &HashSet<String>) -> Result<Vec<Ipv4Addr>> {
        let mut released = Vec::new();
        for (ip, o) in self.allocations() {
            if !live.contains(&o) {
                std::fs::remove_file(self.dir.join(ip.to_string()))?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    pub fn allocations(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(Ipv4Addr, String)> = rd
            .flatten()
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let owner = std::fs::read_to_string(e.path()).ok()?;
                Some((ip, owner.trim().to_string()))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::open(dir, cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn allocates_skipping_gateway_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let a = ipam(d.path(), "10.244.1.0/24");
        assert_eq!(a.allocate("pod-a").unwrap().to_string(), "10.244.1.2");
        assert_eq!(a.allocate("pod-b").unwrap().to_string(), "10.244.1.3");
        // Same owner, same address.
        assert_eq!(a.allocate("pod-a").unwrap().to_string(), "10.244.1.2");
        let b = ipam(d.path(), "10.244.1.0/24");
        assert_eq!(b.lookup("pod-b").unwrap().to_string(), "10.244.1.3");
        b.release("pod-a").unwrap();
        assert!(b.lookup("pod-a").is_none());
        // A released address isn't handed out again right away.
        assert_eq!(b.allocate("pod-c").unwrap().to_string(), "10.244.1.4");
    }

    #[test]
    fn exhausts_and_wraps() {
        let d = tempfile::tempdir().unwrap();
        let a = ipam(d.path(), "10.0.0.0/29"); // hosts .2 ..= .6
        let ips: Vec<String> = (0..5)
            .map(|i| a.allocate(&format!("p{i}")).unwrap().to_string())
            .collect();
        assert_eq!(
            ips,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert!(
            a.allocate("p5")
                .unwrap_err()
                .to_string()
                .contains("no free address")
        );
        a.release("p1").unwrap();
        assert_eq!(a.allocate("p6").unwrap().to_string(), "10.0.0.3");
    }

    #[test]
    fn releases_orphans() {
        let d = tempfile::tempdir().unwrap();
        let a = ipam(d.path(), "10.0.0.0/24");
        a.allocate("keep").unwrap();
        a.allocate("gone").unwrap();
        let live: HashSet<String> = ["keep".to_string()].into();
        assert_eq!(a.release_all_but(&live).unwrap().len(), 1);
        assert_eq!(a.allocations().len(), 1);
    }
}
