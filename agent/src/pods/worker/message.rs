//! Termination messages (`terminationMessagePath`, `terminationMessagePolicy`), as the
//! kubelet makes them: each container instance gets an empty file bind-mounted at its
//! `terminationMessagePath` (default `/dev/termination-log`); once the instance has exited,
//! what it wrote there (at most 4096 bytes) becomes `state.terminated.message`, or, with
//! `FallbackToLogsOnError` and a failed exit, the tail of its log (80 lines, 2048 bytes).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Container;

use super::{PodWorker, container_id};
use crate::logs::{LogOptions, read_logs};
use crate::runtime::spec::ContainerExit;
use crate::runtime::{InstanceStatus, instance_status};

const FILE: &str = "termination-log";
const DEFAULT_PATH: &str = "/dev/termination-log";
/// kube's `MaxContainerTerminationMessageLength`.
const MAX_MESSAGE: u64 = 4096;
/// kube's `MaxContainerTerminationMessageLogLines` and `…LogLength`.
const FALLBACK_LINES: i64 = 80;
const FALLBACK_BYTES: i64 = 2048;

/// The instance's termination-message file, created empty and writable by any user the
/// container runs as, and where it appears inside the container.
pub(super) fn termination_log(
    instance_dir: &Path,
    c: &Container,
) -> std::io::Result<(PathBuf, String)> {
    std::fs::create_dir_all(instance_dir)?;
    let file = instance_dir.join(FILE);
    std::fs::File::create(&file)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
    let inside = c
        .termination_message_path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    Ok((file, inside))
}

impl PodWorker {
    /// Read the messages of instances that exited since the last look (the current and the
    /// previous instance of every container), keyed by container id.
    pub(super) async fn collect_termination_messages(&mut self) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let all = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for c in all {
            let (n, _) = self.current(&c.name);
            for instance in [Some(n), n.checked_sub(1)].into_iter().flatten() {
                let id = container_id(&self.uid, &c.name, instance);
                if self.termination_messages.contains_key(&id) {
                    continue;
                }
                let dir = self
                    .agent
                    .runtime
                    .instance_dir(&self.uid, &c.name, instance);
                if let InstanceStatus::Exited(_, exit) = instance_status(&*self.agent.edge, &dir) {
                    let message = self.termination_message(c, instance, &dir, &exit).await;
                    self.termination_messages.insert(id, message);
                }
            }
        }
    }

    async fn termination_message(
        &self,
        c: &Container,
        instance: u32,
        dir: &Path,
        exit: &ContainerExit,
    ) -> Option<String> {
        let written = read_capped(&dir.join(FILE));
        if !written.is_empty() {
            return Some(written);
        }
        let fallback = c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        if !fallback || exit.exit_code == 0 {
            return None;
        }
        let opts = LogOptions {
            tail_lines: Some(FALLBACK_LINES),
            limit_bytes: Some(FALLBACK_BYTES),
            ..Default::default()
        };
        let log_dir = self.agent.runtime.log_dir(&self.uid, &c.name);
        let mut stream = read_logs(&log_dir, instance, &opts, Box::new(|| false));
        let mut tail = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            tail.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&tail).to_string();
        (!text.is_empty()).then_some(text)
    }
}

/// At most [`MAX_MESSAGE`] bytes of `path`; empty when it is missing.
fn read_capped(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_MESSAGE).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_made_writable_at_the_default_or_given_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Container {
            name: "c".into(),
            ..Default::default()
        };
        let (file, inside) = termination_log(&dir.path().join("0"), &c).unwrap();
        assert_eq!(inside, "/dev/termination-log");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        c.termination_message_path = Some("/tmp/why".into());
        assert_eq!(
            termination_log(&dir.path().join("1"), &c).unwrap().1,
            "/tmp/why"
        );
    }

    #[test]
    fn messages_are_capped_at_4096_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, "x".repeat(5000)).unwrap();
        assert_eq!(read_capped(&path).len(), 4096);
        assert_eq!(read_capped(&dir.path().join("missing")), "");
    }
}
