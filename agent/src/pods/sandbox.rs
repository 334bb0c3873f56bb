//! Pod sandboxes: the pause process, the pod's cgroup, its network (veth, address) and the
//! generated /etc files, created and torn down as one unit.

use std::path::PathBuf;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use nix::sys::signal::Signal;

use super::Agent;
use crate::network::host_veth_name;
use crate::runtime::spec::{PidNamespace, SandboxState, now_rfc3339, write_json_atomic};

pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

pub fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    name.chars().take(63).collect()
}

pub fn etc_dir(agent: &Agent, uid: &str) -> PathBuf {
    agent.runtime.pod_dir(uid).join("etc")
}

/// Create everything the pod's containers join. On failure, what was made is removed.
pub async fn create(agent: &Agent, pod: &Pod) -> Result<SandboxState> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let host_net = host_network(pod);
    std::fs::create_dir_all(agent.runtime.pod_dir(&uid))?;
    let cgroup = agent.edge.create_pod_cgroup(&uid)?;
    let hostname = if host_net {
        agent.cfg.node_name.clone()
    } else {
        hostname(pod)
    };
    let host_pid = pod.spec.as_ref().map(PidNamespace::of) == Some(PidNamespace::Host);
    let (pid, ticks) = agent
        .edge
        .start_pause(&hostname, host_net, host_pid, &cgroup)
        .await?;
    let mut state = SandboxState {
        pod_uid: uid.clone(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        pause_pid: pid,
        pause_start_ticks: ticks,
        host_network: host_net,
        netns_path: None,
        ip: None,
        host_veth: None,
        cgroups: vec![cgroup],
        created_at: now_rfc3339(),
    };
    let result = async {
        if host_net {
            state.ip = Some(agent.cfg.node_ip.to_string());
        } else {
            let netns = agent.runtime.netns_path(&uid);
            agent.edge.pin_netns(pid, &netns)?;
            state.netns_path = Some(netns.clone());
            let ip = agent.ipam.allocate(&uid)?;
            state.ip = Some(ip.to_string());
            let host_if = host_veth_name(&uid);
            state.host_veth = Some(host_if.clone());
            agent
                .network
                .attach_pod(&netns, &host_if, ip, agent.pod_cidr)
                .await
                .context("wiring the pod's network")?;
        }
        write_etc(agent, pod, &state, &hostname)?;
        write_json_atomic(&agent.runtime.sandbox_state_path(&uid), &state)?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(state),
        Err(e) => {
            if let Err(e2) = destroy(agent, &uid, Some(&state)).await {
                tracing::warn!(pod = %uid, "cleaning up a failed sandbox: {e2:#}");
            }
            Err(e)
        }
    }
}

fn write_etc(agent: &Agent, pod: &Pod, state: &SandboxState, hostname: &str) -> Result<()> {
    let dir = etc_dir(agent, &state.pod_uid);
    std::fs::create_dir_all(&dir)?;
    let hosts = if state.host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".into())
    } else {
        let mut h = String::from(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
        );
        if let Some(ip) = &state.ip {
            h.push_str(&format!("{ip}\t{hostname}\n"));
        }
        for alias in pod
            .spec
            .as_ref()
            .and_then(|s| s.host_aliases.clone())
            .unwrap_or_default()
        {
            h.push_str(&format!(
                "{}\t{}\n",
                alias.ip,
                alias.hostnames.unwrap_or_default().join("\t")
            ));
        }
        h
    };
    std::fs::write(dir.join("hosts"), hosts)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    std::fs::write(dir.join("resolv.conf"), resolv_conf(agent, pod))?;
    Ok(())
}

/// The pod's resolv.conf for its `dnsPolicy` and `dnsConfig` ([`super::resolv`]).
fn resolv_conf(agent: &Agent, pod: &Pod) -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let node = super::resolv::NodeDns {
        host: super::resolv::DnsConf::parse(&host),
        cluster_dns: agent.cfg.cluster_dns,
        cluster_domain: &agent.cfg.cluster_domain,
    };
    super::resolv::pod_resolv_conf(&node, pod)
}

/// Stop the pause process and remove the pod's network, address, netns pin and cgroups.
/// Safe to call on a partial or already-removed sandbox.
pub async fn destroy(agent: &Agent, uid: &str, state: Option<&SandboxState>) -> Result<()> {
    if let Some(s) = state
        && agent.edge.is_alive(s.pause_pid, s.pause_start_ticks)
    {
        agent.edge.signal(s.pause_pid, Signal::SIGKILL);
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            agent.edge.wait_exit(s.pause_pid),
        )
        .await;
    }
    let host_if = state
        .and_then(|s| s.host_veth.clone())
        .unwrap_or_else(|| host_veth_name(uid));
    agent.network.detach_pod(&host_if).await?;
    agent.ipam.release(uid)?;
    agent.edge.unpin_netns(&agent.runtime.netns_path(uid))?;
    agent.edge.remove_pod_cgroups(uid)?;
    let _ = std::fs::remove_file(agent.runtime.sandbox_state_path(uid));
    Ok(())
}
