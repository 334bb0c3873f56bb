//! skiff's node agent: the kubelet, kube-proxy and CNI plugin of one node, in one binary.
//!
//! # Where to start
//!
//! `src/main.rs` parses the flags. `skiff-agent run` calls [`agent::run`], which wires the
//! modules below together in this order: register the Node ([`node`]); open the container
//! [`runtime`], the [`image`] store and the pod cgroups; once the node has a podCIDR, set up
//! the pod [`network`] (bridge, masquerade, IPAM); start the log [`server`], cluster [`dns`], the
//! service [`proxy`], the node heartbeat and the routes to other nodes, and the [`static_pods`] source;
//! then run the pod manager ([`pods::PodManager`]) for the life of the process.
//! `skiff-agent cleanup` ([`agent::cleanup`]) takes all of it out of the kernel again.
//!
//! The same binary also runs as each pod's helper processes: the runtime re-executes it as
//! `skiff-agent pause` ([`runtime::pause`]), `shim` ([`runtime::shim`]) and `init`
//! ([`runtime::init`]), so a node needs nothing but `skiff-agent`.
//!
//! # Modules
//!
//! - [`agent`]: `run` and `cleanup`, the wiring described above;
//! - [`config`]: [`config::AgentConfig`], the settings from `skiff-agent run`'s flags;
//! - [`credentials`]: the client the agent talks to the API with: a kubeconfig as given, or
//!   the kubelet's TLS bootstrap from `--bootstrap-kubeconfig` to a node client certificate,
//!   renewed before it expires;
//! - [`node`]: the Node object: registration (addresses, capacity, daemon endpoint), the
//!   heartbeat (a Lease plus the Ready condition), and routes to the other nodes' podCIDRs;
//! - [`pods`]: the pods bound to this node: the manager that watches them and one worker per
//!   pod (sandbox, containers, restarts with CrashLoopBackOff, probes, status, termination;
//!   a file per verb under `pods/worker/`, and its lifecycle tests over the fakes), with the
//!   container environment, volumes, probes and status computation beside it;
//! - [`static_pods`]: manifests in `--manifest-dir`, run without the scheduler and shown in the
//!   API as mirror pods;
//! - [`runtime`]: the container runtime: a pause process holding each pod's namespaces, a shim
//!   and an init process per container instance, cgroups, and the on-disk state a restarted
//!   agent adopts running pods from; processes, netns pins and cgroups sit behind
//!   [`runtime::edge::RuntimeEdge`] (real: Linux; in tests: a recording fake);
//! - [`network`]: the pod network, as a CNI bridge plugin builds it: bridge `skiff0`, one veth
//!   pair per pod, IPAM within the podCIDR, routes, masquerade; netlink and iptables sit
//!   behind [`network::NetworkEdge`] (in tests: a recording fake);
//! - [`proxy`]: the service proxy (kube-proxy): Services and EndpointSlices in, eBPF maps
//!   (`--proxy-mode ebpf`, the programs of `ebpf/skiff-ebpf`) or iptables rules
//!   (`--proxy-mode iptables`) out; also the drain gate pod workers wait on before they tear
//!   down a pod's network, and the proxy's metrics;
//! - [`image`]: the node-local image store: archives imported with `skiff-agent image import`
//!   (no registry is reachable), each flattened into one read-only root filesystem;
//! - [`logs`]: per-container log files in the CRI format, with rotation: written by the shim,
//!   read back for `kubectl logs`;
//! - [`server`]: the HTTPS endpoint (the kubelet's port 10250) the apiserver forwards
//!   `kubectl logs`, `exec` and `attach` to, authorizing each request by SubjectAccessReview
//!   ([`server::auth`]); [`exec_target`] finds the container process an exec runs beside;
//! - [`l2announce`]: L2 announcement of LoadBalancer addresses: one node per Service, picked
//!   through a Lease, answers ARP for its address on the underlay link (an `AF_PACKET` socket
//!   behind [`l2announce::ArpEdge`]; in tests: a recording fake);
//! - [`dns`]: cluster DNS (the Kubernetes DNS specification's records from Services and
//!   EndpointSlices, other names forwarded to the node's resolvers), served on the pods'
//!   gateway and reached at the `kube-dns` ClusterIP, which the proxy sends to the node itself;
//! - [`bpf_cli`]: `skiff-agent bpf …`: the eBPF proxy's pinned maps as tables or JSON, with or
//!   without a running agent.
//!
//! # How a pod runs
//!
//! The scheduler binds a pod by setting its `spec.nodeName`. [`pods::PodManager`] watches the
//! pods with `spec.nodeName=<this node>` and hands each to its own worker
//! ([`pods::worker`]). The worker creates the sandbox ([`pods::sandbox`]): the pod's cgroup,
//! a pause process holding its namespaces and, unless `hostNetwork`, an address from IPAM and
//! a veth pair into the bridge. It then runs the init containers in order and keeps the app
//! containers running: each container instance gets its image's root filesystem ([`image`]),
//! its command line and environment ([`pods::env`]) and its volumes ([`pods::volumes`]), and
//! the [`runtime`] starts it as a shim, which writes the [`logs`] and records the exit status,
//! and under it an init process, which joins the pod's cgroups and namespaces, pivots into an
//! overlay of the image and execs the command. Probes run ([`pods::probe`]); the worker
//! reports the pod's status ([`pods::status`]) to the apiserver. When the pod is deleted the
//! worker sends SIGTERM, sends SIGKILL to what outlives the grace period, reports the pod not
//! ready, waits (at most 5 s) until this node's service proxy no longer sends new connections
//! to the pod's IP, destroys the sandbox and confirms the deletion to the apiserver.
//!
//! # How a Service reaches the dataplane
//!
//! The proxy loop watches Services and EndpointSlices (written by the control plane's
//! EndpointSlice controller), rebuilds the entries of the Services that changed into a model of
//! service ports and the endpoints that may receive new connections, and has the dataplane
//! make the kernel match it: the eBPF maps (Cilium's lb4 layout), read by the cgroup programs
//! when a pod's socket connects or sends and by the tc programs for NodePort traffic on the
//! uplink, or kube-proxy's iptables chains.
pub mod agent;
pub mod bpf_cli;
pub mod config;
pub mod credentials;
pub mod dns;
pub mod exec_target;
pub mod image;
pub mod l2announce;
pub mod logs;
pub mod network;
pub mod node;
pub mod pods;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod static_pods;
