//! Streams a test reads while it acts: a Service's ready endpoints as its EndpointSlice watch
//! reports them, and the output lines of a command running in a pod.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cluster::Cluster;

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Per EndpointSlice watch event: when it arrived (unix ms) and the slice's ready addresses.
pub type SliceEvents = mpsc::Receiver<(u64, BTreeSet<String>)>;

/// A watch of service `name`'s EndpointSlices.
pub fn watch_ready_endpoints(
    c: &Cluster,
    name: &str,
) -> Result<(std::process::Child, SliceEvents)> {
    let url = format!(
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io/service-name={name}&watch=true"
    );
    let mut child = c
        .kubectl_command()?
        .args(["get", "--raw", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let events = serde_json::Deserializer::from_reader(std::io::BufReader::new(stdout))
            .into_iter::<serde_json::Value>();
        for event in events {
            let Ok(event) = event else { break };
            let ready = event["object"]["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["conditions"]["ready"] != false)
                .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            if tx.send((unix_ms(), ready)).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

/// Run `cmd` in `pod` and stream its stdout lines through a channel.
pub fn pod_stream(
    c: &Cluster,
    pod: &str,
    cmd: &[&str],
) -> Result<(std::process::Child, mpsc::Receiver<String>)> {
    let mut child = c
        .pod_command(pod, cmd)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}
