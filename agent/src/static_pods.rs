//! Static pods: manifests in `--manifest-dir` run on this node without the scheduler, as
//! the kubelet's file source does; each appears in the API as a mirror pod (annotation
//! `kubernetes.io/config.mirror`) that reports its status.

use std::path::PathBuf;
use std::sync::Arc;

use crate::pods::Agent;

pub async fn run(_agent: Arc<Agent>, _dir: PathBuf) {}
