//! `kubectl port-forward` run from a harness node's network namespace, for the port-forward
//! test and benchmark: the process, what it printed, and running code in that namespace.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sched::CloneFlags;

use crate::Kubectl;
use crate::cluster::Cluster;

/// A running `kubectl port-forward` in a node's network namespace, with what it printed.
pub struct Forward {
    pub child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Forward {
    /// `kubectl port-forward <args>` with the admin's credentials, in `node`'s namespace.
    pub fn start(c: &Cluster, node: &str, kubectl: &Kubectl, args: &[&str]) -> Result<Forward> {
        Self::start_as(c, c.kubeconfig(), node, kubectl, args)
    }

    /// The same as the user of `kubeconfig`.
    pub fn start_as(
        c: &Cluster,
        kubeconfig: &Path,
        node: &str,
        kubectl: &Kubectl,
        args: &[&str],
    ) -> Result<Forward> {
        let path = kubectl.path.to_string_lossy().into_owned();
        let cache = c.dir().join(format!("kubectl-cache-{}", kubectl.minor));
        let cache = cache.to_string_lossy().into_owned();
        let mut argv = vec![path.as_str(), "--cache-dir", cache.as_str()];
        argv.push("port-forward");
        argv.extend_from_slice(args);
        let mut child = c
            .command(node, &argv)?
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let collect = |r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let sink = buf.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if let Ok(mut b) = sink.lock() {
                        b.push_str(&line);
                        b.push('\n');
                    }
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().context("stdout")?));
        let stderr = collect(Box::new(child.stderr.take().context("stderr")?));
        Ok(Forward {
            child,
            stdout,
            stderr,
        })
    }

    pub fn printed(&self) -> (String, String) {
        let get = |b: &Arc<Mutex<String>>| b.lock().map(|s| s.clone()).unwrap_or_default();
        (get(&self.stdout), get(&self.stderr))
    }

    /// Wait for kubectl's `Forwarding from 127.0.0.1:<local>` line.
    pub fn wait_listening(&mut self, local: u16) -> Result<()> {
        let want = format!("Forwarding from 127.0.0.1:{local}");
        let start = Instant::now();
        loop {
            let (out, err) = self.printed();
            if out.contains(&want) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("kubectl port-forward exited ({status}): {out}{err}");
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("kubectl port-forward did not listen: {out}{err}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `f` on a thread of its own in the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: PathBuf,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}
