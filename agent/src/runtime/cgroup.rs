//! Pod cgroups. Every pod gets a cgroup v2 directory under `--cgroup-root`
//! (`<root>/kubepods/pod<uid>`), which is where the dataplane's socket-level programs
//! attach. On hybrid hosts like Debian 12 with systemd's legacy layout, the v2 hierarchy
//! has no controllers (cpu and memory are bound to v1), so limits go into per-container
//! cgroups of the v1 `memory` and `cpu` hierarchies under `skiff/<node>/pod<uid>/<container>`;
//! on a pure v2 host with those controllers available, they go into the v2 pod cgroup.
//! The pod worker reaches these through [`super::edge::RuntimeEdge`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::process::cgroup_pids;

/// cpu and memory limits of one container, from its resources.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct CgroupLayout {
    /// `--cgroup-root`: the v2 directory all pods of this node live under.
    pub root: PathBuf,
    /// Base directories in the v1 hierarchies that carry limits, e.g.
    /// ("memory", /sys/fs/cgroup/memory/skiff/node-1).
    pub v1: Vec<(String, PathBuf)>,
    /// Whether the v2 hierarchy itself has the memory and cpu controllers.
    pub v2_limits: bool,
}

/// The mount points of cgroup hierarchies, from /proc/self/mountinfo.
pub struct CgroupMounts {
    pub v2: Option<PathBuf>,
    pub v1: Vec<(String, PathBuf)>,
}

pub fn mounts() -> CgroupMounts {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text)
}

fn parse_mountinfo(text: &str) -> CgroupMounts {
    let mut out = CgroupMounts {
        v2: None,
        v1: Vec::new(),
    };
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4);
        let mut r = right.split_whitespace();
        let (fstype, _source, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
        let Some(mp) = mount_point else { continue };
        match fstype {
            Some("cgroup2") if out.v2.is_none() => out.v2 = Some(PathBuf::from(mp)),
            Some("cgroup") => {
                for c in ["memory", "cpu"] {
                    if opts.split(',').any(|o| o == c) && !out.v1.iter().any(|(n, _)| n == c) {
                        out.v1.push((c.to_string(), PathBuf::from(mp)));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

impl CgroupLayout {
    /// `root`: `--cgroup-root` (default: the cgroup2 mount point).
    pub fn detect(root: Option<PathBuf>, node: &str) -> Result<CgroupLayout> {
        let m = mounts();
        let root = match root {
            Some(r) => r,
            None => {
                m.v2.clone()
                    .context("no cgroup2 hierarchy is mounted (pods need one for their cgroups)")?
            }
        };
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let controllers =
            m.v2.as_ref()
                .and_then(|p| std::fs::read_to_string(p.join("cgroup.controllers")).ok())
                .unwrap_or_default();
        let v2_limits = controllers.split_whitespace().any(|c| c == "memory")
            && controllers.split_whitespace().any(|c| c == "cpu");
        let v1 = if v2_limits {
            Vec::new()
        } else {
            m.v1.into_iter()
                .map(|(c, mp)| (c, mp.join("skiff").join(node)))
                .collect()
        };
        Ok(CgroupLayout {
            root,
            v1,
            v2_limits,
        })
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("kubepods").join(format!("pod{uid}"))
    }

    /// Create the pod's v2 cgroup; returns it.
    pub fn create_pod(&self, uid: &str) -> Result<PathBuf> {
        let dir = self.pod_dir(uid);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(dir)
    }

    /// The cgroups a container's process joins: the pod's v2 cgroup and, where limits
    /// are set, its own v1 cgroups carrying them.
    pub fn create_container(
        &self,
        uid: &str,
        container: &str,
        limits: Limits,
    ) -> Result<Vec<PathBuf>> {
        let pod = self.create_pod(uid)?;
        let mut dirs = vec![pod.clone()];
        if self.v2_limits {
            // Pure v2: a child per container, limits written there.
            let dir = pod.join(container);
            std::fs::create_dir_all(&dir)?;
            let parent_ctl = pod.parent().map(|p| p.join("cgroup.subtree_control"));
            for p in [
                self.root.join("cgroup.subtree_control"),
                parent_ctl.unwrap_or_default(),
                pod.join("cgroup.subtree_control"),
            ] {
                let _ = std::fs::write(p, "+memory +cpu");
            }
            if let Some(m) = limits.memory_bytes {
                std::fs::write(dir.join("memory.max"), m.to_string())?;
            }
            if let Some(c) = limits.cpu_millis {
                std::fs::write(dir.join("cpu.max"), format!("{} 100000", c * 100))?;
            }
            dirs = vec![dir];
            return Ok(dirs);
        }
        for (controller, base) in &self.v1 {
            let wants = match controller.as_str() {
                "memory" => limits.memory_bytes.is_some(),
                _ => limits.cpu_millis.is_some() || limits.cpu_request_millis.is_some(),
            };
            if !wants {
                continue;
            }
            let dir = base.join(format!("pod{uid}")).join(container);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
            match controller.as_str() {
                "memory" => {
                    if let Some(m) = limits.memory_bytes {
                        std::fs::write(dir.join("memory.limit_in_bytes"), m.to_string())
                            .with_context(|| {
                                format!("setting the memory limit in {}", dir.display())
                            })?;
                    }
                }
                _ => {
                    if let Some(c) = limits.cpu_millis {
                        std::fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
                        std::fs::write(
                            dir.join("cpu.cfs_quota_us"),
                            (c * 100).max(1000).to_string(),
                        )
                        .with_context(|| format!("setting the cpu limit in {}", dir.display()))?;
                    }
                    if let Some(r) = limits.cpu_request_millis {
                        // Kubernetes' mapping of a cpu request to shares (1 cpu = 1024).
                        let shares = (r * 1024 / 1000).max(2);
                        let _ = std::fs::write(dir.join("cpu.shares"), shares.to_string());
                    }
                }
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Kill whatever is left in the pod's cgroups and remove them.
    pub fn remove_pod(&self, uid: &str) -> Result<()> {
        let mut dirs = vec![self.pod_dir(uid)];
        for (_, base) in &self.v1 {
            dirs.push(base.join(format!("pod{uid}")));
        }
        for d in dirs {
            remove_tree(&d)?;
        }
        Ok(())
    }

    /// Remove every pod cgroup of this node (for `cleanup`).
    pub fn remove_all(&self) -> Result<()> {
        remove_tree(&self.root.join("kubepods"))?;
        for (_, base) in &self.v1 {
            remove_tree(base)?;
        }
        Ok(())
    }
}

/// Kill every process in `dir` and its descendants, then rmdir them deepest first.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // cgroup v2 has cgroup.kill (5.14+); elsewhere signal each pid.
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        kill_tree(dir);
    }
    let mut children = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                children.push(e.path());
            }
        }
    }
    for c in children {
        remove_tree(&c)?;
    }
    // A killed process leaves the cgroup only once it has been reaped: retry briefly.
    for attempt in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt == 99 => {
                return Err(e).with_context(|| format!("removing cgroup {}", dir.display()));
            }
            Err(_) => {
                kill_tree(dir);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    Ok(())
}

fn kill_tree(dir: &Path) {
    for pid in cgroup_pids(dir) {
        super::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_mounts() {
        let text = "\
25 24 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
28 25 0:25 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
";
        let m = parse_mountinfo(text);
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            m.v1,
            vec![
                ("cpu".to_string(), PathBuf::from("/sys/fs/cgroup/cpu")),
                ("memory".to_string(), PathBuf::from("/sys/fs/cgroup/memory"))
            ]
        );
    }

    #[test]
    fn finds_combined_cpu_cpuacct() {
        let m = parse_mountinfo(
            "28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
        );
        assert_eq!(m.v1[0].0, "cpu");
        assert!(m.v2.is_none());
    }
}
