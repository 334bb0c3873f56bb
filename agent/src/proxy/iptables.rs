//! The iptables service dataplane: kube-proxy's chain layout, written incrementally.
//!
//! Layout (see [`rules`]): nat `KUBE-SERVICES` (from PREROUTING and OUTPUT) →
//! `KUBE-SVC-<hash>` → `KUBE-SEP-<hash>` (DNAT, hairpin masquerade mark), random choice
//! with `-m statistic --probability 1/(n-i)`, `-m recent` session affinity; node ports via
//! `KUBE-NODEPORTS` (last rule of `KUBE-SERVICES`, `--dst-type LOCAL`) → `KUBE-EXT-<hash>`;
//! `KUBE-MARK-MASQ` / `KUBE-POSTROUTING` (`MASQUERADE --random-fully`); filter
//! `KUBE-SERVICES` (FORWARD, OUTPUT) and `KUBE-EXTERNAL-SERVICES` (INPUT, FORWARD) REJECT
//! new connections to services without endpoints; `KUBE-FORWARD` accepts marked traffic.
//!
//! Writing (see [`plan`]): `iptables-restore --noflush -w`, one atomic payload per table,
//! holding only what changed since the last sync. The dataplane remembers every chain's
//! rules as last written (read back with `iptables-save` on the first sync after start,
//! so a restarted agent rewrites nothing and sweeps stale chains). Shared chains like
//! `KUBE-SERVICES` are edited rule by rule (`-D CHAIN <rule>`, `-I CHAIN 1 <rule>`) rather
//! than flushed and rewritten. On the nft backend a `--noflush` payload costs time
//! proportional to (rules written × chains in the table), so when a sync rewrites most of
//! a big table (10,000 services from empty) the dataplane instead restores the whole
//! table — everything `iptables-save -c` shows that is not ours, verbatim with counters,
//! plus our chains — and falls back to `--noflush` if that fails. UDP services that lose
//! endpoints get their conntrack entries deleted (`conntrack -D … --dst-nat <endpoint>`).
//!
//! Measured in a network namespace on this project's 2-vCPU VM (busy; figures vary ±50%),
//! services × 2 endpoints (`agent/tests/iptables_proxy.rs`, `scale_*`):
//!
//! | | nft 1,000 | nft 10,000 | legacy 1,000 | legacy 10,000 |
//! |---|---|---|---|---|
//! | from empty | 0.5–0.7 s | 3.2–4.7 s (whole table; `--noflush` only: 222 s) | 0.15 s | 1.3–2.7 s |
//! | one endpoint changed | 25–33 ms | 140–230 ms | 60–85 ms | 0.57–0.77 s |
//! | one service added / removed | 11–43 ms | 150–330 ms | 50–110 ms | 0.55–0.72 s |
//! | `KUBE-SERVICES` rewritten whole instead | 108 ms | 2.0 s | 80 ms | 0.96 s |
//! | restart: read back, nothing written | 0.2–0.4 s | 12–22 s | 50–120 ms | 0.7–0.85 s |
//! | cleanup | 0.2–0.4 s | 15–27 s | 70–190 ms | 0.9–1.3 s |
//!
//! At 10,000 services every nft write pays ~0.1 s of kernel (sys) time at commit, even
//! for one rule — apparently nf_tables re-checking the table's jump graph — and
//! `iptables-nft-save` takes 10–20 s (userspace chain lookups); legacy rewrites the whole
//! table blob on every change.
//!
//! All calls block (they run `iptables-restore`, `iptables-save` and `conntrack`); call
//! them from a blocking thread. Commands run in the caller's network namespace.

pub mod plan;
pub mod rules;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracing::{debug, info, warn};

use crate::network::Ipv4Net;
use std::collections::BTreeSet;

use crate::proxy::model::{ProxyState, ServicePortName};
use plan::{ConntrackFlush, Kernel, KernelTable, Planner, TablePlan};
use rules::Table;

/// Which iptables implementation to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables` (iptables-nft, the nf_tables backend).
    Nft,
    /// `iptables-legacy` (x_tables).
    Legacy,
}

impl Backend {
    /// From a binary name: `iptables`/`iptables-nft` or `iptables-legacy`.
    pub fn from_binary(name: &str) -> Option<Backend> {
        match name.rsplit('/').next().unwrap_or(name) {
            "iptables" | "iptables-nft" => Some(Backend::Nft),
            "iptables-legacy" => Some(Backend::Legacy),
            _ => None,
        }
    }
    pub fn iptables(self) -> &'static str {
        match self {
            Backend::Nft => "iptables",
            Backend::Legacy => "iptables-legacy",
        }
    }
    pub fn save(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-save",
            Backend::Legacy => "iptables-legacy-save",
        }
    }
    pub fn restore(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }
    /// Whether the backend's tools can be run here.
    pub fn available(self) -> bool {
        Command::new(self.save())
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// What one [`IptablesDataplane::sync`] did to the rules: chains and rule lines written (the
/// iptables detail behind the dataplane's [`SyncStats`](crate::proxy::dataplane::SyncStats)).
#[derive(Clone, Debug, Default)]
pub struct RuleSyncStats {
    /// Chains created, rewritten or edited (deleted ones not counted).
    pub chains_written: usize,
    /// Chains flushed and deleted.
    pub chains_deleted: usize,
    /// Rule lines sent (`-A`, `-I`, `-D`).
    pub rules_written: usize,
    pub duration: Duration,
    /// `table/CHAIN` of every chain touched.
    pub changed_chains: Vec<String>,
    /// The tables were read back with `iptables-save` first (first sync, or after a
    /// failure / [`IptablesDataplane::invalidate`]).
    pub reloaded: bool,
    /// A whole table was restored (without `--noflush`) instead of a partial payload.
    pub full_table_restore: bool,
    /// `conntrack -D` invocations.
    pub conntrack_flushes: usize,
    /// The conntrack entries they deleted.
    pub conntrack_entries_deleted: u64,
}

/// kube-proxy's iptables mode, synced incrementally. See the module docs.
pub struct IptablesDataplane {
    backend: Backend,
    planner: Planner,
    /// The tables as we believe the kernel holds them; None until read.
    kernel: Option<Kernel>,
    allow_full_restore: bool,
    conntrack: String,
}

impl IptablesDataplane {
    pub fn new(backend: Backend) -> IptablesDataplane {
        IptablesDataplane {
            backend,
            planner: Planner::default(),
            kernel: None,
            allow_full_restore: true,
            conntrack: "conntrack".into(),
        }
    }

    /// Masquerade traffic to cluster IPs from outside `cidr` (kube-proxy's
    /// `--cluster-cidr`); pod traffic to `Local` node ports short-circuits to the service.
    pub fn with_cluster_cidr(mut self, cidr: Option<Ipv4Net>) -> Self {
        self.planner.cfg.cluster_cidr = cidr;
        self
    }

    /// Reject new connections to `cidr` (the service CIDR) that no Service translated.
    pub fn with_service_cidr(mut self, cidr: Option<Ipv4Net>) -> Self {
        self.planner.cfg.service_cidr = cidr;
        self
    }

    /// Masquerade all traffic to cluster IPs (kube-proxy's `--masquerade-all`).
    pub fn with_masquerade_all(mut self, on: bool) -> Self {
        self.planner.cfg.masquerade_all = on;
        self
    }

    /// Allow whole-table restores on the nft backend when they are much cheaper than a
    /// `--noflush` payload (default: allowed).
    pub fn with_full_restore(mut self, allow: bool) -> Self {
        self.allow_full_restore = allow;
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// (service ports, endpoints) programmed by the last successful sync.
    pub fn programmed(&self) -> (usize, usize) {
        self.planner.programmed()
    }

    /// Forget what was written: the next sync reads the tables back, repairs anything
    /// changed behind our back and sweeps stale chains (a periodic full resync).
    pub fn invalidate(&mut self) {
        self.kernel = None;
        self.planner.reset();
    }

    /// Make the tables match `state`, writing only what changed.
    pub fn sync(&mut self, state: &ProxyState) -> Result<RuleSyncStats> {
        self.sync_changed(state, None)
    }

    /// [`IptablesDataplane::sync`], given that only the service ports in `changed` may
    /// differ from the last successful sync's state (`None`: compare everything).
    pub fn sync_changed(
        &mut self,
        state: &ProxyState,
        changed: Option<&BTreeSet<ServicePortName>>,
    ) -> Result<RuleSyncStats> {
        let start = Instant::now();
        let mut stats = RuleSyncStats::default();
        let mut conntrack = Vec::new();
        if let Err(e) = self.try_sync(state, changed, &mut stats, &mut conntrack) {
            if stats.reloaded {
                return Err(e);
            }
            warn!(
                error = %format!("{e:#}"),
                "iptables sync failed; re-reading the tables and retrying"
            );
            self.invalidate();
            stats = RuleSyncStats::default();
            self.try_sync(state, None, &mut stats, &mut Vec::new())?;
        }
        (stats.conntrack_flushes, stats.conntrack_entries_deleted) =
            self.flush_conntrack(&conntrack);
        stats.duration = start.elapsed();
        debug!(
            chains = stats.chains_written,
            deleted = stats.chains_deleted,
            rules = stats.rules_written,
            full = stats.full_table_restore,
            took = ?stats.duration,
            "iptables sync"
        );
        Ok(stats)
    }

    fn try_sync(
        &mut self,
        state: &ProxyState,
        changed: Option<&BTreeSet<ServicePortName>>,
        stats: &mut RuleSyncStats,
        conntrack: &mut Vec<ConntrackFlush>,
    ) -> Result<()> {
        let full = self.kernel.is_none();
        if full {
            let t = Instant::now();
            stats.reloaded = true;
            self.kernel = Some(self.load()?);
            debug!(took = ?t.elapsed(), "read iptables state");
        }
        let kernel = self.kernel.as_ref().expect("loaded");
        let plan = self.planner.plan_changed(state, kernel, full, changed);
        conntrack.extend(plan.conntrack.iter().cloned());
        for tp in [&plan.nat, &plan.filter] {
            if tp.is_empty() {
                continue;
            }
            if let Err(e) = self.write_table(tp, stats) {
                self.invalidate();
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_table(&mut self, tp: &TablePlan, stats: &mut RuleSyncStats) -> Result<()> {
        let k = self.kernel.as_ref().expect("loaded").get(tp.table);
        let written = tp.rule_lines();
        let (chains_after, rules_after) = tp.size_after(k);
        if self.backend == Backend::Nft
            && self.allow_full_restore
            && plan::prefer_full_restore(
                written,
                chains_after,
                rules_after,
                k.rule_count,
                k.chains.len(),
            )
        {
            match self.full_table_restore(tp) {
                Ok((chains, rules)) => {
                    stats.full_table_restore = true;
                    stats.chains_written += chains;
                    stats.chains_deleted += tp.delete.len();
                    stats.rules_written += rules;
                    stats.changed_chains.extend(tp.changed_chains());
                    return Ok(());
                }
                Err(e) => warn!(
                    table = %tp.table,
                    error = %format!("{e:#}"),
                    "whole-table restore failed; using --noflush"
                ),
            }
        }
        self.restore(&["--noflush"], &tp.payload())
            .with_context(|| format!("writing the {} table", tp.table))?;
        let k = self.kernel.as_mut().expect("loaded").get_mut(tp.table);
        tp.apply(k);
        stats.chains_written += tp.chains_written();
        stats.chains_deleted += tp.delete.len();
        stats.rules_written += written;
        stats.changed_chains.extend(tp.changed_chains());
        Ok(())
    }

    /// Restore the whole table: what a fresh `iptables-save` shows that is not ours, plus
    /// our chains once `tp` is applied. Returns (chains, rules) of ours written.
    fn full_table_restore(&mut self, tp: &TablePlan) -> Result<(usize, usize)> {
        let mut after = self.kernel.as_ref().expect("loaded").get(tp.table).clone();
        tp.apply(&mut after);
        let save = self.save(Some(tp.table.as_str()), true)?;
        let payload = plan::compose_full(&save, tp.table, &after)?;
        self.restore(&["--counters"], &payload)
            .with_context(|| format!("restoring the whole {} table", tp.table))?;
        let (chains, rules) = after
            .chains
            .iter()
            .filter(|(c, _)| plan::is_managed(tp.table, c))
            .fold((0, 0), |(c, r), (_, rules)| (c + 1, r + rules.len()));
        *self.kernel.as_mut().expect("loaded").get_mut(tp.table) =
            KernelTable::parse(&payload, tp.table)?;
        Ok((chains, rules))
    }

    /// Remove every `KUBE-*` chain and every jump to one (nat, filter, mangle).
    /// Returns the number of chains removed.
    pub fn cleanup(&mut self) -> Result<usize> {
        self.invalidate();
        let save = self.save(None, true)?;
        let tables: Vec<&str> = save
            .lines()
            .filter_map(|l| l.strip_prefix('*'))
            .filter(|t| matches!(*t, "nat" | "filter" | "mangle"))
            .collect();
        let mut removed = 0;
        for t in tables {
            let k = KernelTable::parse_named(&save, t)?;
            let Some(payload) = plan::cleanup_payload(t, &k) else {
                continue;
            };
            let chains = k.chains.keys().filter(|c| c.starts_with("KUBE-")).count();
            removed += chains;
            // nft: flushing thousands of chains with --noflush is slow (27 s at 10,000
            // services); restoring the table without them takes well under a second.
            if self.backend == Backend::Nft && chains > 1000 {
                match plan::compose_cleanup(&save, t)
                    .and_then(|full| self.restore(&["--counters"], &full))
                {
                    Ok(()) => continue,
                    Err(e) => warn!(
                        table = t,
                        error = %format!("{e:#}"),
                        "whole-table cleanup failed; using --noflush"
                    ),
                }
            }
            self.restore(&["--noflush"], &payload)
                .with_context(|| format!("cleaning up the {t} table"))?;
        }
        if removed > 0 {
            info!(
                backend = self.backend.iptables(),
                chains = removed,
                "removed iptables proxy rules"
            );
        }
        Ok(removed)
    }

    /// [`IptablesDataplane::cleanup`] for every backend present on the machine (the
    /// other proxy mode does not know which one was used). Returns chains removed.
    pub fn cleanup_all() -> Result<usize> {
        let mut removed = 0;
        for b in [Backend::Nft, Backend::Legacy] {
            if b.available() {
                removed += IptablesDataplane::new(b).cleanup()?;
            }
        }
        Ok(removed)
    }

    fn load(&self) -> Result<Kernel> {
        Ok(Kernel {
            nat: KernelTable::parse(&self.save(Some("nat"), false)?, Table::Nat)?,
            filter: KernelTable::parse(&self.save(Some("filter"), false)?, Table::Filter)?,
        })
    }

    fn save(&self, table: Option<&str>, counters: bool) -> Result<String> {
        let bin = self.backend.save();
        let mut cmd = Command::new(bin);
        if let Some(t) = table {
            cmd.args(["-t", t]);
        }
        if counters {
            cmd.arg("--counters");
        }
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {bin} (is iptables installed?)"))?;
        if !out.status.success() {
            bail!(
                "{bin} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8(out.stdout).with_context(|| format!("{bin} output"))
    }

    fn restore(&self, args: &[&str], payload: &str) -> Result<()> {
        let bin = self.backend.restore();
        let mut child = Command::new(bin)
            .args(args)
            .arg("-w")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {bin} (is iptables installed?)"))?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let out = std::thread::scope(|s| {
            s.spawn(move || {
                // A failing restore may exit before reading everything: its exit status
                // and stderr tell why, so a broken pipe here is not the error to report.
                let _ = stdin.write_all(payload.as_bytes());
            });
            child.wait_with_output()
        })
        .with_context(|| format!("waiting for {bin}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim();
            let context = error_line(err)
                .and_then(|n| payload.lines().nth(n.checked_sub(1)?))
                .map(|l| format!(" (payload line: {l:?})"))
                .unwrap_or_default();
            bail!("{bin} {} failed: {err}{context}", args.join(" "));
        }
        Ok(())
    }

    /// Run the deletions: (invocations, entries deleted). Each deletion that removed
    /// entries is logged (which flows were cut, and why).
    fn flush_conntrack(&self, flushes: &[ConntrackFlush]) -> (usize, u64) {
        let (mut n, mut entries) = (0, 0);
        for f in flushes {
            let args = f.args();
            match Command::new(&self.conntrack)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
            {
                Ok(out) => {
                    n += 1;
                    let err = String::from_utf8_lossy(&out.stderr);
                    // Exit status 1 with "0 flow entries have been deleted" is fine.
                    match conntrack_deleted(&err) {
                        Some(0) => {}
                        Some(k) => {
                            entries += k;
                            info!(
                                entries = k,
                                "deleted stale UDP conntrack entries: conntrack {}",
                                args.join(" ")
                            );
                        }
                        None if out.status.success() => {}
                        None => {
                            warn!(args = %args.join(" "), error = %err.trim(), "conntrack failed");
                        }
                    }
                }
                Err(e) => warn!(error = %e, "running conntrack (is conntrack installed?)"),
            }
        }
        (n, entries)
    }
}

/// The count in conntrack's "… 2 flow entries have been deleted." message.
fn conntrack_deleted(stderr: &str) -> Option<u64> {
    let (before, _) = stderr.split_once(" flow entries have been deleted")?;
    before.rsplit(' ').next()?.parse().ok()
}

/// The payload line an `iptables-restore` error names ("Error occurred at line: 12",
/// "line 12 failed").
fn error_line(err: &str) -> Option<usize> {
    for pat in ["line: ", "line "] {
        if let Some(i) = err.find(pat) {
            let digits: String = err[i + pat.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_deleted_count_is_read_from_conntracks_message() {
        let msg = |n| {
            format!("conntrack v1.4.8 (conntrack-tools): {n} flow entries have been deleted.\n")
        };
        assert_eq!(super::conntrack_deleted(&msg(2)), Some(2));
        assert_eq!(super::conntrack_deleted(&msg(0)), Some(0));
        assert_eq!(
            super::conntrack_deleted(
                "conntrack v1.4.8 (conntrack-tools): Operation failed: invalid parameters"
            ),
            None
        );
    }

    #[test]
    fn error_line() {
        let err = "iptables-restore v1.8.9 (nf_tables): Chain 'KUBE-SEP-X' does not exist\nError occurred at line: 12\nTry `iptables-restore -h'";
        assert_eq!(super::error_line(err), Some(12));
        assert_eq!(
            super::error_line("iptables-restore: line 3 failed"),
            Some(3)
        );
        assert_eq!(super::error_line("v1.8.9 boom"), None);
    }
}
