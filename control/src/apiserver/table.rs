//! Server-side printing: `meta.k8s.io/v1` `Table` responses for `kubectl get`.
//!
//! kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io` and prints whatever columns
//! the server returns, so the columns and cell text here follow kube-apiserver's printers
//! (`pkg/printers/internalversion/printers.go`, Kubernetes 1.33) rather than anything of our own:
//! users see the same `READY`, `STATUS`, `AGE` … they would against a real cluster.
//!
//! kube-apiserver always generates the wide form (`GenerateOptions{Wide: true}`), so every row
//! carries the priority-1 cells too; kubectl hides priority > 0 columns unless `-o wide`.
//!
//! Everything works on `serde_json::Value` (what the store holds) and never panics: a missing or
//! mistyped field reads as Go's zero value, as if the object had decoded with that field unset.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

/// What each row carries in `object` (the request's `includeObject` parameter). kube-apiserver
/// defaults to `Metadata` when the parameter is absent; kubectl only sends `Object` for
/// `--sort-by`, which needs whole objects to evaluate its JSONPath.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query value; kube-apiserver accepts exactly these spellings.
    pub fn parse(s: &str) -> Option<IncludeObject> {
        match s {
            "None" => Some(IncludeObject::None),
            "Metadata" => Some(IncludeObject::Metadata),
            "Object" => Some(IncludeObject::Object),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Column definitions
// ---------------------------------------------------------------------------------------------

// Descriptions are the API field docs kube-apiserver takes from `SwaggerDoc()`; kubectl only
// shows them in `explain`-like contexts, but clients may display them as header tooltips.
const D_NAME: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const D_AGE: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const D_CONTAINERS: &str = "Names of each container in the template.";
const D_IMAGES: &str = "Images referenced by each container in the template.";
const D_NODE_ADDRESSES: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";

/// One `TableColumnDefinition`.
struct Col {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    description: &'static str,
    priority: i64,
}

const fn name_col() -> Col {
    Col {
        name: "Name",
        ty: "string",
        format: "name",
        description: D_NAME,
        priority: 0,
    }
}

const fn c(name: &'static str, ty: &'static str, description: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

/// A priority-1 column: only shown by `kubectl get -o wide`.
const fn w(name: &'static str, ty: &'static str, description: &'static str) -> Col {
    Col {
        name,
        ty,
        format: "",
        description,
        priority: 1,
    }
}

const fn age_col() -> Col {
    c("Age", "string", D_AGE)
}

const POD_COLS: &[Col] = &[
    name_col(),
    c(
        "Ready",
        "string",
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    c(
        "Status",
        "string",
        "The aggregate status of the containers in this pod.",
    ),
    c(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    age_col(),
    w(
        "IP",
        "string",
        "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
    ),
    w(
        "Node",
        "string",
        "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename",
    ),
    w(
        "Nominated Node",
        "string",
        "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled.",
    ),
    w(
        "Readiness Gates",
        "string",
        "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates",
    ),
];

const SERVICE_COLS: &[Col] = &[
    name_col(),
    c(
        "Type",
        "string",
        "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer. \"ClusterIP\" allocates a cluster-internal IP address for load-balancing to endpoints. Endpoints are determined by the selector or if that is not specified, by manual construction of an Endpoints object or EndpointSlice objects. If clusterIP is \"None\", no virtual IP is allocated and the endpoints are published as a set of endpoints rather than a virtual IP. \"NodePort\" builds on ClusterIP and allocates a port on every node which routes to the same endpoints as the clusterIP. \"LoadBalancer\" builds on NodePort and creates an external load-balancer (if supported in the current cloud) which routes to the same endpoints as the clusterIP. \"ExternalName\" aliases this service to the specified externalName. Several other fields do not apply to ExternalName services. More info: https://kubernetes.io/docs/concepts/services-networking/service/#publishing-services-service-types",
    ),
    c(
        "Cluster-IP",
        "string",
        "clusterIP is the IP address of the service and is usually assigned randomly. If an address is specified manually, is in-range (as per system configuration), and is not in use, it will be allocated to the service; otherwise creation of the service will fail. This field may not be changed through updates unless the type field is also being changed to ExternalName (which requires this field to be blank) or the type field is being changed from ExternalName (in which case this field may optionally be specified, as describe above).  Valid values are \"None\", empty string (\"\"), or a valid IP address. Setting this to \"None\" makes a \"headless service\" (no virtual IP), which is useful when direct endpoint connections are preferred and proxying is not required.  Only applies to types ClusterIP, NodePort, and LoadBalancer. If this field is specified when creating a Service of type ExternalName, creation will fail. This field will be wiped when updating a Service to type ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
    ),
    c(
        "External-IP",
        "string",
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.  These IPs are not managed by Kubernetes.  The user is responsible for ensuring that traffic arrives at a node with this IP.  A common example is external load-balancers that are not part of the Kubernetes system.",
    ),
    c(
        "Port(s)",
        "string",
        "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
    ),
    age_col(),
    w(
        "Selector",
        "string",
        "Route service traffic to pods with label keys and values matching this selector. If empty or not present, the service is assumed to have an external process managing its endpoints, which Kubernetes will not modify. Only applies to types ClusterIP, NodePort, and LoadBalancer. Ignored if type is ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/",
    ),
];

const ENDPOINTS_COLS: &[Col] = &[
    name_col(),
    c(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service.",
    ),
    age_col(),
];

const NODE_COLS: &[Col] = &[
    name_col(),
    c("Status", "string", "The status of the node"),
    c("Roles", "string", "The roles of the node"),
    age_col(),
    c("Version", "string", "Kubelet Version reported by the node."),
    w("Internal-IP", "string", D_NODE_ADDRESSES),
    w("External-IP", "string", D_NODE_ADDRESSES),
    w(
        "OS-Image",
        "string",
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
    ),
    w(
        "Kernel-Version",
        "string",
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
    ),
    w(
        "Container-Runtime",
        "string",
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
    ),
];

const NAMESPACE_COLS: &[Col] = &[
    name_col(),
    c("Status", "string", "The status of the namespace"),
    age_col(),
];

const DEPLOYMENT_COLS: &[Col] = &[
    name_col(),
    c("Ready", "string", "Number of the pod with ready state"),
    c(
        "Up-to-date",
        "string",
        "Total number of non-terminating pods targeted by this deployment that have the desired template spec.",
    ),
    c(
        "Available",
        "string",
        "Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by this deployment.",
    ),
    age_col(),
    w("Containers", "string", D_CONTAINERS),
    w("Images", "string", D_IMAGES),
    w(
        "Selector",
        "string",
        "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment. It must match the pod template's labels.",
    ),
];

const REPLICASET_COLS: &[Col] = &[
    name_col(),
    c(
        "Desired",
        "integer",
        "Replicas is the number of desired pods. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset",
    ),
    c(
        "Current",
        "integer",
        "Replicas is the most recently observed number of non-terminating pods. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset",
    ),
    c(
        "Ready",
        "integer",
        "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.",
    ),
    age_col(),
    w("Containers", "string", D_CONTAINERS),
    w("Images", "string", D_IMAGES),
    w(
        "Selector",
        "string",
        "Selector is a label query over pods that should match the replica count. Label keys and values that must match in order to be controlled by this replica set. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
    ),
];

const DAEMONSET_COLS: &[Col] = &[
    name_col(),
    c(
        "Desired",
        "integer",
        "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod). More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
    ),
    c(
        "Current",
        "integer",
        "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod. More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
    ),
    c(
        "Ready",
        "integer",
        "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
    ),
    c(
        "Up-to-date",
        "integer",
        "The total number of nodes that are running updated daemon pod",
    ),
    c(
        "Available",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
    ),
    c(
        "Node Selector",
        "string",
        "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node. More info: https://kubernetes.io/docs/concepts/configuration/assign-pod-node/",
    ),
    age_col(),
    w("Containers", "string", D_CONTAINERS),
    w("Images", "string", D_IMAGES),
    w(
        "Selector",
        "string",
        "A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
    ),
];

const JOB_COLS: &[Col] = &[
    name_col(),
    c("Status", "string", "Status of the job."),
    c(
        "Completions",
        "string",
        "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
    ),
    c("Duration", "string", "Time required to complete the job."),
    age_col(),
    w("Containers", "string", D_CONTAINERS),
    w("Images", "string", D_IMAGES),
    w(
        "Selector",
        "string",
        "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
    ),
];

const PDB_COLS: &[Col] = &[
    name_col(),
    c(
        "Min Available",
        "string",
        "The minimum number of pods that must be available.",
    ),
    c(
        "Max Unavailable",
        "string",
        "The maximum number of pods that may be unavailable.",
    ),
    c(
        "Allowed Disruptions",
        "integer",
        "Calculated number of pods that may be disrupted at this time.",
    ),
    age_col(),
];

// The event printer puts Name last (and wide-only): `kubectl get events` leads with LAST SEEN.
const EVENT_COLS: &[Col] = &[
    c(
        "Last Seen",
        "string",
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    c(
        "Type",
        "string",
        "Type of this event (Normal, Warning), new types could be added in the future",
    ),
    c(
        "Reason",
        "string",
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    c("Object", "string", "The object that this event is about."),
    w(
        "Subobject",
        "string",
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object.",
    ),
    w(
        "Source",
        "string",
        "The component reporting this event. Should be a short machine understandable string.",
    ),
    c(
        "Message",
        "string",
        "A human-readable description of the status of this operation.",
    ),
    w(
        "First Seen",
        "string",
        "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
    ),
    w(
        "Count",
        "string",
        "The number of times this event has occurred.",
    ),
    Col {
        name: "Name",
        ty: "string",
        format: "name",
        description: D_NAME,
        priority: 1,
    },
];

const CONFIGMAP_COLS: &[Col] = &[
    name_col(),
    c(
        "Data",
        "string",
        "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
    ),
    age_col(),
];

const SECRET_COLS: &[Col] = &[
    name_col(),
    c(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
    ),
    c(
        "Data",
        "string",
        "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
    ),
    age_col(),
];

const SERVICEACCOUNT_COLS: &[Col] = &[
    name_col(),
    c(
        "Secrets",
        "string",
        "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use. Pods are only limited to this list if this service account has a \"kubernetes.io/enforce-mountable-secrets\" annotation set to \"true\". The \"kubernetes.io/enforce-mountable-secrets\" annotation is deprecated since v1.32. Prefer separate namespaces to isolate access to mounted secrets. This field should not be used to find auto-generated service account token secrets for use outside of pods. Instead, tokens can be requested directly using the TokenRequest API, or service account token secrets can be manually created. More info: https://kubernetes.io/docs/concepts/configuration/secret",
    ),
    age_col(),
];

const LEASE_COLS: &[Col] = &[
    name_col(),
    c(
        "Holder",
        "string",
        "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
    ),
    age_col(),
];

const ENDPOINTSLICE_COLS: &[Col] = &[
    name_col(),
    c(
        "AddressType",
        "string",
        "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type. This field is immutable after creation. The following address types are currently supported: * IPv4: Represents an IPv4 Address. * IPv6: Represents an IPv6 Address. * FQDN: Represents a Fully Qualified Domain Name. (Deprecated) The EndpointSlice controller only generates, and kube-proxy only processes, slices of addressType \"IPv4\" and \"IPv6\". No semantics are defined for the \"FQDN\" type.",
    ),
    c(
        "Ports",
        "string",
        "ports specifies the list of network ports exposed by each endpoint in this slice. Each port must have a unique name. Each slice may include a maximum of 100 ports. Services always have at least 1 port, so EndpointSlices generated by the EndpointSlice controller will likewise always have at least 1 port. EndpointSlices used for other purposes may have an empty ports list.",
    ),
    c(
        "Endpoints",
        "string",
        "endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 endpoints.",
    ),
    age_col(),
];

const ROLEBINDING_COLS: &[Col] = &[
    name_col(),
    c(
        "Role",
        "string",
        "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable.",
    ),
    age_col(),
    w("Users", "string", "Users in the roleBinding"),
    w("Groups", "string", "Groups in the roleBinding"),
    w(
        "ServiceAccounts",
        "string",
        "ServiceAccounts in the roleBinding",
    ),
];

const CLUSTERROLEBINDING_COLS: &[Col] = &[
    name_col(),
    c(
        "Role",
        "string",
        "RoleRef can only reference a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable.",
    ),
    age_col(),
    w("Users", "string", "Users in the clusterRoleBinding"),
    w("Groups", "string", "Groups in the clusterRoleBinding"),
    w(
        "ServiceAccounts",
        "string",
        "ServiceAccounts in the clusterRoleBinding",
    ),
];

const CSR_COLS: &[Col] = &[
    name_col(),
    age_col(),
    c(
        "SignerName",
        "string",
        "signerName indicates the requested signer, and is a qualified name.",
    ),
    c(
        "Requestor",
        "string",
        "request contains an x509 certificate signing request encoded in a \"CERTIFICATE REQUEST\" PEM block. When serialized as JSON or YAML, the data is additionally base64-encoded.",
    ),
    c(
        "RequestedDuration",
        "string",
        "expirationSeconds is the requested duration of validity of the issued certificate. The certificate signer may issue a certificate with a different validity duration so a client must check the delta between the notBefore and and notAfter fields in the issued certificate to determine the actual duration.",
    ),
    c(
        "Condition",
        "string",
        "conditions applied to the request. Known conditions are \"Approved\", \"Denied\", and \"Failed\".",
    ),
];

/// kube-apiserver's `DefaultTableConvertor` (k8s.io/apiserver/pkg/registry/rest/table.go), used
/// for every resource without a printer: `kubectl get clusterroles` shows NAME / CREATED AT.
const DEFAULT_COLS: &[Col] = &[name_col(), c("Created At", "date", D_AGE)];

fn cols_for(plural: &str) -> &'static [Col] {
    match plural {
        "pods" => POD_COLS,
        "services" => SERVICE_COLS,
        "endpoints" => ENDPOINTS_COLS,
        "nodes" => NODE_COLS,
        "namespaces" => NAMESPACE_COLS,
        "deployments" => DEPLOYMENT_COLS,
        "replicasets" => REPLICASET_COLS,
        "daemonsets" => DAEMONSET_COLS,
        "jobs" => JOB_COLS,
        "poddisruptionbudgets" => PDB_COLS,
        "events" => EVENT_COLS,
        "configmaps" => CONFIGMAP_COLS,
        "secrets" => SECRET_COLS,
        "serviceaccounts" => SERVICEACCOUNT_COLS,
        "leases" => LEASE_COLS,
        "endpointslices" => ENDPOINTSLICE_COLS,
        "rolebindings" => ROLEBINDING_COLS,
        "clusterrolebindings" => CLUSTERROLEBINDING_COLS,
        "certificatesigningrequests" => CSR_COLS,
        _ => DEFAULT_COLS,
    }
}

/// Column definitions for a resource (plural name: "pods", "services", ...). Resources without a
/// kube printer get kube-apiserver's default table: `Name` plus `Created At` (type `date`).
pub fn column_definitions(plural: &str) -> Vec<Value> {
    cols_for(plural)
        .iter()
        .map(|c| {
            // TableColumnDefinition has no omitempty tags: all five fields are always present.
            json!({
                "name": c.name,
                "type": c.ty,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

/// Cells of one row for one object, including the wide (priority 1) cells, in column order.
pub fn row_cells(plural: &str, obj: &Value, now: Timestamp) -> Vec<Value> {
    match plural {
        "pods" => pod_cells(obj, now),
        "services" => service_cells(obj, now),
        "endpoints" => endpoints_cells(obj, now),
        "nodes" => node_cells(obj, now),
        "namespaces" => vec![
            name(obj),
            json!(or_default(str_at(obj, &["status", "phase"]), "Active")),
            age(obj, now),
        ],
        "deployments" => deployment_cells(obj, now),
        "replicasets" => replicaset_cells(obj, now),
        "daemonsets" => daemonset_cells(obj, now),
        "jobs" => job_cells(obj, now),
        "poddisruptionbudgets" => pdb_cells(obj, now),
        "events" => event_cells(obj, now),
        "configmaps" => vec![
            name(obj),
            json!(map_len(obj, &["data"]) + map_len(obj, &["binaryData"])),
            age(obj, now),
        ],
        "secrets" => vec![
            name(obj),
            // The v1 defaulter fills an empty type with Opaque before kube ever prints it.
            json!(or_default(str_at(obj, &["type"]), "Opaque")),
            json!(map_len(obj, &["data"])),
            age(obj, now),
        ],
        "serviceaccounts" => vec![
            name(obj),
            json!(arr_at(obj, &["secrets"]).len()),
            age(obj, now),
        ],
        "leases" => vec![
            name(obj),
            json!(str_at(obj, &["spec", "holderIdentity"])),
            age(obj, now),
        ],
        "endpointslices" => endpointslice_cells(obj, now),
        "rolebindings" | "clusterrolebindings" => role_binding_cells(obj, now),
        "certificatesigningrequests" => csr_cells(obj, now),
        _ => vec![name(obj), json!(created_at_rfc3339(obj))],
    }
}

/// kube's printPodDisruptionBudget: an unset budget is `N/A`.
fn pdb_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let budget = |field: &str| match at(obj, &["spec", field]).filter(|v| !v.is_null()) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "N/A".to_string(),
    };
    vec![
        name(obj),
        json!(budget("minAvailable")),
        json!(budget("maxUnavailable")),
        json!(int_at(obj, &["status", "disruptionsAllowed"])),
        age(obj, now),
    ]
}

/// kube's printRoleBinding: `Kind/name` of the role, then the subjects by kind (service
/// accounts as `namespace/name`), each list joined with ", ".
fn role_binding_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let role = format!(
        "{}/{}",
        str_at(obj, &["roleRef", "kind"]),
        str_at(obj, &["roleRef", "name"])
    );
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for s in arr_at(obj, &["subjects"]) {
        let name = str_at(s, &["name"]);
        match str_at(s, &["kind"]) {
            "User" => users.push(name.to_string()),
            "Group" => groups.push(name.to_string()),
            "ServiceAccount" => sas.push(format!("{}/{name}", str_at(s, &["namespace"]))),
            _ => {}
        }
    }
    vec![
        name(obj),
        json!(role),
        age(obj, now),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ]
}

/// kube's printCertificateSigningRequest: the signer, the requester, the requested duration
/// and the verdict (Denied before Approved before Pending, then `,Failed`, `,Issued`).
fn csr_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let duration = opt_int_at(obj, &["spec", "expirationSeconds"])
        .map(|s| human_duration(SignedDuration::from_secs(s)))
        .unwrap_or_else(|| "<none>".into());
    let has = |ty: &str| {
        arr_at(obj, &["status", "conditions"])
            .iter()
            .any(|c| str_at(c, &["type"]) == ty)
    };
    let mut condition = if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_string();
    if has("Failed") {
        condition.push_str(",Failed");
    }
    if !str_at(obj, &["status", "certificate"]).is_empty() {
        condition.push_str(",Issued");
    }
    vec![
        name(obj),
        age(obj, now),
        json!(or_default(str_at(obj, &["spec", "signerName"]), "<none>")),
        json!(str_at(obj, &["spec", "username"])),
        json!(duration),
        json!(condition),
    ]
}

/// Row conditions kube attaches (only pods use them: finished pods are marked `Completed`, which
/// lets clients such as kubectl's watch printer recognise terminal rows).
fn row_conditions(plural: &str, obj: &Value) -> Option<Value> {
    if plural != "pods" {
        return None;
    }
    match str_at(obj, &["status", "phase"]) {
        "Succeeded" => Some(json!([{
            "type": "Completed",
            "status": "True",
            "reason": "Succeeded",
            "message": "The pod has completed successfully.",
        }])),
        "Failed" => Some(json!([{
            "type": "Completed",
            "status": "True",
            "reason": "Failed",
            "message": "The pod failed.",
        }])),
        _ => None,
    }
}

/// A whole Table: columnDefinitions, rows (cells + object per `include`: for Metadata a
/// PartialObjectMetadata {kind:"PartialObjectMetadata", apiVersion:"meta.k8s.io/v1", metadata}),
/// metadata.resourceVersion, metadata.continue (if Some), metadata.remainingItemCount (if Some).
pub fn table(
    plural: &str,
    objects: &[Value],
    include: IncludeObject,
    resource_version: &str,
    continue_token: Option<&str>,
    remaining: Option<i64>,
    now: Timestamp,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(row_cells(plural, obj, now)));
            if let Some(conditions) = row_conditions(plural, obj) {
                row.insert("conditions".into(), conditions);
            }
            let object = match include {
                // RawExtension with no object marshals as `null`; kube sends the key anyway.
                IncludeObject::None => Value::Null,
                IncludeObject::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": at(obj, &["metadata"])
                        .filter(|m| m.is_object())
                        .cloned()
                        .unwrap_or_else(|| json!({})),
                }),
                IncludeObject::Object => obj.clone(),
            };
            row.insert("object".into(), object);
            Value::Object(row)
        })
        .collect();

    // ListMeta fields are all omitempty.
    let mut metadata = Map::new();
    if !resource_version.is_empty() {
        metadata.insert("resourceVersion".into(), json!(resource_version));
    }
    if let Some(token) = continue_token.filter(|t| !t.is_empty()) {
        metadata.insert("continue".into(), json!(token));
    }
    if let Some(n) = remaining {
        metadata.insert("remainingItemCount".into(), json!(n));
    }

    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(plural),
        "rows": rows,
    })
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// Go's zero `time.Time` (0001-01-01T00:00:00Z): kube treats it as "unset".
const GO_ZERO_UNIX_SECONDS: i64 = -62_135_596_800;

/// Parses a metav1.Time / MicroTime; unset, unparseable and Go's zero time all read as `None`,
/// which is what `IsZero()` would report after decoding.
fn parse_time(v: Option<&Value>) -> Option<Timestamp> {
    parse_time_str(v?.as_str()?)
}

fn parse_time_str(s: &str) -> Option<Timestamp> {
    let ts: Timestamp = s.parse().ok()?;
    let zero = ts.as_second() == GO_ZERO_UNIX_SECONDS && ts.subsec_nanosecond() == 0;
    (!zero).then_some(ts)
}

/// Go's `time.Duration` saturates at ±2^63 ns (~292 years); `time.Since` of an ancient time
/// therefore prints as "292y", and we clamp the same way.
fn go_duration(d: SignedDuration) -> SignedDuration {
    const MAX_SECS: i64 = i64::MAX / 1_000_000_000;
    if d.as_secs() > MAX_SECS {
        SignedDuration::from_secs(MAX_SECS)
    } else if d.as_secs() < -MAX_SECS {
        SignedDuration::from_secs(-MAX_SECS)
    } else {
        d
    }
}

/// `duration.HumanDuration` from k8s.io/apimachinery: ~2-3 significant figures.
fn human_duration(d: SignedDuration) -> String {
    let d = go_duration(d);
    // Go converts the float seconds to int, which truncates toward zero like `as_secs`.
    let seconds = d.as_secs();
    // Up to 2s in the future is tolerated as clock skew between machines.
    if seconds < -1 {
        return "<invalid>".into();
    } else if seconds < 0 {
        return "0s".into();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        format!("{hours}h{m}m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        format!("{}d{}h", hours / 24, h)
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        format!("{}y{}d", hours / 24 / 365, dy)
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

fn age_since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => human_duration(now.duration_since(t)),
        None => "<unknown>".into(),
    }
}

/// Kubernetes' short human duration (`translateTimestampSince` over `duration.HumanDuration`):
/// "45s", "2m30s", "5m", "7h12m", "3d4h", "400d", "2y30d"; "<unknown>" for a missing timestamp.
pub fn human_age(since: Option<&str>, now: Timestamp) -> String {
    age_since(since.and_then(parse_time_str), now)
}

fn age(obj: &Value, now: Timestamp) -> Value {
    json!(age_since(
        parse_time(at(obj, &["metadata", "creationTimestamp"])),
        now
    ))
}

/// The default convertor prints `creationTimestamp.UTC().Format(time.RFC3339)`, zero time included.
fn created_at_rfc3339(obj: &Value) -> String {
    let ts = parse_time(at(obj, &["metadata", "creationTimestamp"])).unwrap_or_else(|| {
        Timestamp::from_second(GO_ZERO_UNIX_SECONDS).unwrap_or(Timestamp::UNIX_EPOCH)
    });
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

// ---------------------------------------------------------------------------------------------
// JSON access: every miss or wrong type reads as the Go zero value.
// ---------------------------------------------------------------------------------------------

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |cur, key| cur.as_object()?.get(*key))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, path: &[&str]) -> i64 {
    opt_int_at(v, path).unwrap_or(0)
}

fn opt_int_at(v: &Value, path: &[&str]) -> Option<i64> {
    at(v, path).and_then(Value::as_i64)
}

fn bool_at(v: &Value, path: &[&str]) -> bool {
    at(v, path).and_then(Value::as_bool).unwrap_or(false)
}

fn arr_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn obj_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    at(v, path).and_then(Value::as_object)
}

fn map_len(v: &Value, path: &[&str]) -> usize {
    obj_at(v, path).map_or(0, Map::len)
}

/// A Go pointer field (`*T`): present and of the right shape.
fn present<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    at(v, path).filter(|x| x.is_object())
}

fn or_default<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() { default } else { s }
}

fn none_if_empty(s: &str) -> String {
    or_default(s, "<none>").to_owned()
}

fn name(obj: &Value) -> Value {
    json!(str_at(obj, &["metadata", "name"]))
}

// ---------------------------------------------------------------------------------------------
// Label formatting (labels.FormatLabels / metav1.FormatLabelSelector)
// ---------------------------------------------------------------------------------------------

/// `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_labels(map: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<String> = map
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// RFC 1123 label-ish name part used by label keys and values: alphanumeric at both ends,
/// `-`, `_`, `.` inside, at most 63 characters.
fn is_label_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Label keys are qualified names: `[prefix/]name`.
fn is_label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_label_name_part(name),
        None => is_label_name_part(k),
    }
}

fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_label_name_part(v)
}

/// `metav1.LabelSelectorAsSelector(sel).String()`: `Err` where kube's conversion errors (bad
/// operator, wrong value count, invalid key/value); `""` for a nil or empty selector.
fn label_selector_string(sel: Option<&Value>) -> Result<String, ()> {
    let Some(sel) = sel.filter(|s| s.is_object()) else {
        return Ok(String::new());
    };
    // (key, rendered requirement); kube sorts requirements by key.
    let mut reqs: Vec<(String, String)> = Vec::new();
    for (k, v) in obj_at(sel, &["matchLabels"]).into_iter().flatten() {
        let v = v.as_str().unwrap_or("");
        if !is_label_key(k) || !is_label_value(v) {
            return Err(());
        }
        reqs.push((k.clone(), format!("{k}={v}")));
    }
    for expr in arr_at(sel, &["matchExpressions"]) {
        let key = str_at(expr, &["key"]);
        let values: Vec<&str> = arr_at(expr, &["values"])
            .iter()
            .map(|v| v.as_str().unwrap_or(""))
            .collect();
        if !is_label_key(key) {
            return Err(());
        }
        let rendered = match str_at(expr, &["operator"]) {
            op @ ("In" | "NotIn") => {
                if values.is_empty() || !values.iter().all(|v| is_label_value(v)) {
                    return Err(());
                }
                // Requirement.String() sorts multi-valued sets for a stable rendering.
                let mut sorted = values.clone();
                sorted.sort_unstable();
                let word = if op == "In" { "in" } else { "notin" };
                format!("{key} {word} ({})", sorted.join(","))
            }
            "Exists" if values.is_empty() => key.to_owned(),
            "DoesNotExist" if values.is_empty() => format!("!{key}"),
            _ => return Err(()),
        };
        reqs.push((key.to_owned(), rendered));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(","))
}

/// `metav1.FormatLabelSelector`: `<error>` for an invalid selector, `<none>` for an empty one.
fn format_label_selector(sel: Option<&Value>) -> String {
    match label_selector_string(sel) {
        Err(()) => "<error>".into(),
        Ok(s) if s.is_empty() => "<none>".into(),
        Ok(s) => s,
    }
}

/// `layoutContainerCells`: comma-joined container names and images.
fn container_cells(template_spec_containers: &[Value]) -> (Value, Value) {
    let names: Vec<&str> = template_spec_containers
        .iter()
        .map(|c| str_at(c, &["name"]))
        .collect();
    let images: Vec<&str> = template_spec_containers
        .iter()
        .map(|c| str_at(c, &["image"]))
        .collect();
    (json!(names.join(",")), json!(images.join(",")))
}

// ---------------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------------

fn condition_is(obj: &Value, cond_type: &str, pred: impl Fn(&Value) -> bool) -> bool {
    arr_at(obj, &["status", "conditions"])
        .iter()
        .any(|c| str_at(c, &["type"]) == cond_type && pred(c))
}

/// `isPodInitializedConditionTrue` / `hasJobCondition`: the first condition of the type decides.
fn first_condition_true(obj: &Value, cond_type: &str) -> bool {
    arr_at(obj, &["status", "conditions"])
        .iter()
        .find(|c| str_at(c, &["type"]) == cond_type)
        .is_some_and(|c| str_at(c, &["status"]) == "True")
}

/// `lastState.terminated.finishedAt`, when the container restarted after a termination.
fn last_finished(status: &Value) -> Option<Timestamp> {
    present(status, &["lastState", "terminated"]).and_then(|t| parse_time(at(t, &["finishedAt"])))
}

/// `printPod`: READY, STATUS and RESTARTS are derived exactly as kube-apiserver does, including
/// init-container progress, sidecar (restartable init) containers and the Terminating override.
fn pod_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let init_specs = arr_at(obj, &["spec", "initContainers"]);
    let total = arr_at(obj, &["spec", "containers"]).len()
        + init_specs
            .iter()
            .filter(|c| str_at(c, &["restartPolicy"]) == "Always")
            .count();

    let mut reason = pod_reason(obj);
    let init = init_progress(obj, init_specs);
    let mut ready = init.ready_sidecars;
    let mut restarts = init.restarts;
    let initializing = init.reason.is_some();
    if let Some(r) = init.reason {
        reason = r;
    }
    if !initializing || first_condition_true(obj, "Initialized") {
        // Only sidecar restarts carry over: finished init containers no longer matter.
        restarts = init.sidecar_restarts;
        ready += container_progress(obj, &mut restarts, &mut reason);
    }
    let reason = deletion_override(obj, reason);

    // The internal type mirrors podIP into podIPs when only the former is set.
    let pod_ip = arr_at(obj, &["status", "podIPs"])
        .first()
        .map_or_else(|| str_at(obj, &["status", "podIP"]), |p| str_at(p, &["ip"]));

    vec![
        name(obj),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts.cell(now)),
        age(obj, now),
        json!(none_if_empty(pod_ip)),
        json!(none_if_empty(str_at(obj, &["spec", "nodeName"]))),
        json!(none_if_empty(str_at(obj, &["status", "nominatedNodeName"]))),
        json!(readiness_gates_cell(obj)),
    ]
}

/// Restarts summed over containers, and the latest time one of them finished before one.
#[derive(Clone, Copy, Default)]
struct Restarts {
    count: i64,
    last: Option<Timestamp>,
}

impl Restarts {
    fn add(&mut self, count: i64, finished: Option<Timestamp>) {
        self.count = self.count.saturating_add(count);
        self.last = self.last.max(finished);
    }

    /// `3 (5m ago)`, or just the count when there is no restart or no time for it.
    fn cell(&self, now: Timestamp) -> String {
        match self.last {
            Some(t) if self.count != 0 => {
                format!("{} ({} ago)", self.count, age_since(Some(t), now))
            }
            _ => self.count.to_string(),
        }
    }
}

/// The reason before any container is looked at: the status reason or else the phase, or
/// `SchedulingGated`.
fn pod_reason(obj: &Value) -> String {
    let phase = str_at(obj, &["status", "phase"]);
    let status_reason = str_at(obj, &["status", "reason"]);
    if condition_is(obj, "PodScheduled", |c| {
        str_at(c, &["reason"]) == "SchedulingGated"
    }) {
        return "SchedulingGated".into();
    }
    or_default(status_reason, phase).to_owned()
}

/// A sidecar is an init container with restartPolicy Always; kube looks it up by name and a
/// later duplicate overrides an earlier one (map insert), hence `rev().find`.
fn is_sidecar(init_specs: &[Value], name: &str) -> bool {
    init_specs
        .iter()
        .rev()
        .find(|c| str_at(c, &["name"]) == name)
        .is_some_and(|c| str_at(c, &["restartPolicy"]) == "Always")
}

/// What the init container statuses say, up to the first one still in the way.
#[derive(Default)]
struct InitProgress {
    restarts: Restarts,
    sidecar_restarts: Restarts,
    ready_sidecars: usize,
    /// `Init:…` while initialization is in progress or has failed.
    reason: Option<String>,
}

fn init_progress(obj: &Value, init_specs: &[Value]) -> InitProgress {
    let mut progress = InitProgress::default();
    for (i, cs) in arr_at(obj, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        let count = int_at(cs, &["restartCount"]);
        let finished = last_finished(cs);
        progress.restarts.add(count, finished);
        let sidecar = is_sidecar(init_specs, str_at(cs, &["name"]));
        if sidecar {
            progress.sidecar_restarts.add(count, finished);
        }
        let terminated = present(cs, &["state", "terminated"]);
        let waiting_reason =
            present(cs, &["state", "waiting"]).map_or("", |w| str_at(w, &["reason"]));
        let reason = match terminated {
            Some(t) if int_at(t, &["exitCode"]) == 0 => continue,
            _ if sidecar && bool_at(cs, &["started"]) => {
                if bool_at(cs, &["ready"]) {
                    progress.ready_sidecars += 1;
                }
                continue;
            }
            // Initialization failed.
            Some(t) => terminated_reason(t, "Init:"),
            None if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" => {
                format!("Init:{waiting_reason}")
            }
            None => format!("Init:{i}/{}", init_specs.len()),
        };
        progress.reason = Some(reason);
        break;
    }
    progress
}

/// A terminated container's reason, else its signal, else its exit code.
fn terminated_reason(terminated: &Value, prefix: &str) -> String {
    let r = str_at(terminated, &["reason"]);
    if !r.is_empty() {
        format!("{prefix}{r}")
    } else if int_at(terminated, &["signal"]) != 0 {
        format!("{prefix}Signal:{}", int_at(terminated, &["signal"]))
    } else {
        format!("{prefix}ExitCode:{}", int_at(terminated, &["exitCode"]))
    }
}

/// The app containers: their restarts into `restarts`, a waiting or terminated one's reason
/// into `reason`; returns how many are ready and running.
fn container_progress(obj: &Value, restarts: &mut Restarts, reason: &mut String) -> usize {
    let mut ready = 0;
    let mut has_running = false;
    // kube walks the statuses backwards so the first container's reason wins.
    for cs in arr_at(obj, &["status", "containerStatuses"]).iter().rev() {
        restarts.add(int_at(cs, &["restartCount"]), last_finished(cs));
        let waiting_reason =
            present(cs, &["state", "waiting"]).map_or("", |w| str_at(w, &["reason"]));
        let terminated = present(cs, &["state", "terminated"]);
        if !waiting_reason.is_empty() {
            *reason = waiting_reason.to_owned();
        } else if let Some(t) = terminated {
            *reason = terminated_reason(t, "");
        } else if bool_at(cs, &["ready"]) && present(cs, &["state", "running"]).is_some() {
            has_running = true;
            ready += 1;
        }
    }
    // A pod whose first container completed while another still runs is not "Completed".
    if reason == "Completed" && has_running {
        *reason = if condition_is(obj, "Ready", |c| str_at(c, &["status"]) == "True") {
            "Running".into()
        } else {
            "NotReady".into()
        };
    }
    ready
}

/// A pod being deleted shows `Terminating` (`Unknown` when its node is lost) unless it has
/// already finished.
fn deletion_override(obj: &Value, reason: String) -> String {
    let phase = str_at(obj, &["status", "phase"]);
    let deleting = at(obj, &["metadata", "deletionTimestamp"]).is_some_and(Value::is_string);
    if deleting && str_at(obj, &["status", "reason"]) == "NodeLost" {
        "Unknown".into()
    } else if deleting && phase != "Failed" && phase != "Succeeded" {
        "Terminating".into()
    } else {
        reason
    }
}

/// READINESS GATES: how many of the gates' conditions are true, of how many gates.
fn readiness_gates_cell(obj: &Value) -> String {
    let gates = arr_at(obj, &["spec", "readinessGates"]);
    if gates.is_empty() {
        return "<none>".to_owned();
    }
    let conditions = arr_at(obj, &["status", "conditions"]);
    let true_count = gates
        .iter()
        .filter(|g| {
            let ty = str_at(g, &["conditionType"]);
            conditions
                .iter()
                .find(|c| str_at(c, &["type"]) == ty)
                .is_some_and(|c| str_at(c, &["status"]) == "True")
        })
        .count();
    format!("{true_count}/{}", gates.len())
}

// ---------------------------------------------------------------------------------------------
// Services, endpoints, endpoint slices
// ---------------------------------------------------------------------------------------------

fn service_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    // Defaulting turns an unset type into ClusterIP before kube prints it.
    let svc_type = or_default(str_at(obj, &["spec", "type"]), "ClusterIP");
    // The internal type mirrors clusterIP into clusterIPs when only the former is set.
    let cluster_ip = arr_at(obj, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .unwrap_or_else(|| str_at(obj, &["spec", "clusterIP"]));
    let external_ips: Vec<&str> = arr_at(obj, &["spec", "externalIPs"])
        .iter()
        .map(|v| v.as_str().unwrap_or(""))
        .collect();

    let external = match svc_type {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_owned()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            // Server-side tables are generated wide, so the ingress list is never truncated.
            let mut lb: Vec<&str> = arr_at(obj, &["status", "loadBalancer", "ingress"])
                .iter()
                .map(|i| or_default(str_at(i, &["ip"]), str_at(i, &["hostname"])))
                .filter(|s| !s.is_empty())
                .collect();
            lb.sort_unstable();
            lb.dedup();
            let mut all = lb;
            all.extend(external_ips.iter().copied());
            if all.is_empty() {
                "<pending>".to_owned()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => str_at(obj, &["spec", "externalName"]).to_owned(),
        _ => "<unknown>".to_owned(),
    };

    let ports: Vec<String> = arr_at(obj, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int_at(p, &["port"]);
            let proto = or_default(str_at(p, &["protocol"]), "TCP");
            match int_at(p, &["nodePort"]) {
                n if n > 0 => format!("{port}:{n}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();

    vec![
        name(obj),
        json!(svc_type),
        json!(none_if_empty(cluster_ip)),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".to_owned()
        } else {
            ports.join(",")
        }),
        age(obj, now),
        json!(format_labels(obj_at(obj, &["spec", "selector"]))),
    ]
}

/// `net.JoinHostPort`: IPv6 literals are bracketed.
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `formatEndpoints`: the first three `ip:port` pairs, then `+ N more...`.
fn format_endpoints(obj: &Value) -> String {
    let subsets = arr_at(obj, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addresses = arr_at(ss, &["addresses"]);
        let ports = arr_at(ss, &["ports"]);
        if ports.is_empty() {
            // Headless services may have no ports: list bare IPs.
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_at(a, &["ip"]).to_owned());
            }
            continue;
        }
        for p in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(str_at(a, &["ip"]), int_at(p, &["port"])));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

fn endpoints_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(obj), json!(format_endpoints(obj)), age(obj, now)]
}

/// `listWithMoreString`: `<unset>` when there is nothing to list.
fn list_with_more(list: &[String], more: bool, count: usize, max: usize) -> String {
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - max)
    } else if joined.is_empty() {
        "<unset>".into()
    } else {
        joined
    }
}

fn endpointslice_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    const MAX: usize = 3;
    let port_values = arr_at(obj, &["ports"]);
    let ports: Vec<String> = port_values
        .iter()
        .take(MAX)
        .map(|p| {
            match (
                opt_int_at(p, &["port"]),
                at(p, &["name"]).and_then(Value::as_str),
            ) {
                (Some(n), _) => n.to_string(),
                (None, Some(name)) => name.to_owned(),
                (None, None) => "*".to_owned(),
            }
        })
        .collect();
    let ports_cell = list_with_more(&ports, port_values.len() > MAX, port_values.len(), MAX);

    let addresses: Vec<&str> = arr_at(obj, &["endpoints"])
        .iter()
        .flat_map(|e| {
            arr_at(e, &["addresses"])
                .iter()
                .map(|a| a.as_str().unwrap_or(""))
        })
        .collect();
    let shown: Vec<String> = addresses
        .iter()
        .take(MAX)
        .map(|s| (*s).to_owned())
        .collect();
    let endpoints_cell = list_with_more(&shown, addresses.len() > MAX, addresses.len(), MAX);

    vec![
        name(obj),
        json!(str_at(obj, &["addressType"])),
        json!(ports_cell),
        json!(endpoints_cell),
        age(obj, now),
    ]
}

// ---------------------------------------------------------------------------------------------
// Nodes and namespaces
// ---------------------------------------------------------------------------------------------

fn node_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    // Only the Ready condition feeds STATUS; the last one listed wins (kube builds a map).
    let ready = arr_at(obj, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| str_at(c, &["type"]) == "Ready");
    let mut status: Vec<&str> = vec![match ready {
        Some(c) if str_at(c, &["status"]) == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if bool_at(obj, &["spec", "unschedulable"]) {
        status.push("SchedulingDisabled");
    }

    let mut roles: Vec<String> = obj_at(obj, &["metadata", "labels"])
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                (!role.is_empty()).then(|| role.to_owned())
            } else if k == "kubernetes.io/role" {
                v.as_str().filter(|v| !v.is_empty()).map(str::to_owned)
            } else {
                None
            }
        })
        .collect();
    roles.sort();
    roles.dedup();

    let address = |ty: &str| {
        arr_at(obj, &["status", "addresses"])
            .iter()
            .find(|a| str_at(a, &["type"]) == ty)
            .map_or_else(
                || "<none>".to_owned(),
                |a| str_at(a, &["address"]).to_owned(),
            )
    };
    let info = |field: &str| {
        or_default(str_at(obj, &["status", "nodeInfo", field]), "<unknown>").to_owned()
    };

    vec![
        name(obj),
        json!(status.join(",")),
        json!(if roles.is_empty() {
            "<none>".to_owned()
        } else {
            roles.join(",")
        }),
        age(obj, now),
        json!(str_at(obj, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

fn template_containers(obj: &Value) -> &[Value] {
    arr_at(obj, &["spec", "template", "spec", "containers"])
}

fn deployment_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    // apps/v1 defaults replicas to 1 before kube prints it.
    let desired = opt_int_at(obj, &["spec", "replicas"]).unwrap_or(1);
    let (names, images) = container_cells(template_containers(obj));
    // printDeployment renders the selector itself: "" for none, "<invalid>" on error.
    let selector = label_selector_string(at(obj, &["spec", "selector"]))
        .unwrap_or_else(|()| "<invalid>".into());
    vec![
        name(obj),
        json!(format!(
            "{}/{}",
            int_at(obj, &["status", "readyReplicas"]),
            desired
        )),
        json!(int_at(obj, &["status", "updatedReplicas"])),
        json!(int_at(obj, &["status", "availableReplicas"])),
        age(obj, now),
        names,
        images,
        json!(selector),
    ]
}

fn replicaset_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(template_containers(obj));
    vec![
        name(obj),
        json!(opt_int_at(obj, &["spec", "replicas"]).unwrap_or(1)),
        json!(int_at(obj, &["status", "replicas"])),
        json!(int_at(obj, &["status", "readyReplicas"])),
        age(obj, now),
        names,
        images,
        json!(format_label_selector(at(obj, &["spec", "selector"]))),
    ]
}

fn daemonset_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(template_containers(obj));
    vec![
        name(obj),
        json!(int_at(obj, &["status", "desiredNumberScheduled"])),
        json!(int_at(obj, &["status", "currentNumberScheduled"])),
        json!(int_at(obj, &["status", "numberReady"])),
        json!(int_at(obj, &["status", "updatedNumberScheduled"])),
        json!(int_at(obj, &["status", "numberAvailable"])),
        json!(format_labels(obj_at(
            obj,
            &["spec", "template", "spec", "nodeSelector"]
        ))),
        age(obj, now),
        names,
        images,
        json!(format_label_selector(at(obj, &["spec", "selector"]))),
    ]
}

fn job_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = int_at(obj, &["status", "succeeded"]);
    let mut completions_spec = opt_int_at(obj, &["spec", "completions"]);
    let parallelism_spec = opt_int_at(obj, &["spec", "parallelism"]);
    // batch/v1 defaulting: with neither set, both become 1.
    if completions_spec.is_none() && parallelism_spec.is_none() {
        completions_spec = Some(1);
    }
    let completions = match completions_spec {
        Some(c) => format!("{succeeded}/{c}"),
        None => match parallelism_spec.unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };

    let start = parse_time(at(obj, &["status", "startTime"]));
    let completion = parse_time(at(obj, &["status", "completionTime"]));
    let duration = match (start, completion) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now.duration_since(s)),
        (Some(s), Some(c)) => human_duration(c.duration_since(s)),
    };

    // hasJobCondition: the first condition of the type decides.
    let has = |ty: &str| first_condition_true(obj, ty);
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if at(obj, &["metadata", "deletionTimestamp"]).is_some_and(Value::is_string) {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };

    let (names, images) = container_cells(template_containers(obj));
    vec![
        name(obj),
        json!(status),
        json!(completions),
        json!(duration),
        age(obj, now),
        names,
        images,
        json!(format_label_selector(at(obj, &["spec", "selector"]))),
    ]
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// First of the fields that is present: core/v1 and events.k8s.io/v1 Events are the same
/// internal type in kube (and print identically), but name their fields differently.
fn first_at<'a>(obj: &'a Value, paths: &[&[&str]]) -> Option<&'a Value> {
    paths
        .iter()
        .find_map(|p| at(obj, p).filter(|v| !v.is_null()))
}

fn event_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let first_ts = parse_time(first_at(
        obj,
        &[&["firstTimestamp"], &["deprecatedFirstTimestamp"]],
    ));
    let last_ts = parse_time(first_at(
        obj,
        &[&["lastTimestamp"], &["deprecatedLastTimestamp"]],
    ));
    let event_time = parse_time(at(obj, &["eventTime"]));

    // Events from the new API only carry eventTime (and series for repeats).
    let first_seen = if first_ts.is_some() {
        age_since(first_ts, now)
    } else {
        age_since(event_time, now)
    };
    let mut last_seen = if last_ts.is_some() {
        age_since(last_ts, now)
    } else {
        first_seen.clone()
    };
    let mut count = first_at(obj, &[&["count"], &["deprecatedCount"]])
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(series) = present(obj, &["series"]) {
        last_seen = age_since(parse_time(at(series, &["lastObservedTime"])), now);
        count = int_at(series, &["count"]);
    } else if count == 0 {
        // Singleton events don't have a count set in the new API.
        count = 1;
    }

    let involved = first_at(obj, &[&["involvedObject"], &["regarding"]]).unwrap_or(&Value::Null);
    let kind = str_at(involved, &["kind"]).to_lowercase();
    let involved_name = str_at(involved, &["name"]);
    let target = if involved_name.is_empty() {
        kind
    } else {
        format!("{kind}/{involved_name}")
    };

    let source = first_at(obj, &[&["source"], &["deprecatedSource"]]).unwrap_or(&Value::Null);
    let component = or_default(
        str_at(source, &["component"]),
        or_default(
            str_at(obj, &["reportingComponent"]),
            str_at(obj, &["reportingController"]),
        ),
    );
    let host = or_default(
        str_at(source, &["host"]),
        str_at(obj, &["reportingInstance"]),
    );
    let source_cell = if host.is_empty() {
        component.to_owned()
    } else {
        format!("{component}, {host}")
    };

    let message = first_at(obj, &[&["message"], &["note"]])
        .and_then(Value::as_str)
        .unwrap_or("");

    vec![
        json!(last_seen),
        json!(str_at(obj, &["type"])),
        json!(str_at(obj, &["reason"])),
        json!(target),
        json!(str_at(involved, &["fieldPath"])),
        json!(source_cell),
        json!(message.trim()),
        json!(first_seen),
        json!(count),
        name(obj),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    /// An RFC 3339 timestamp `secs` seconds before `now()`.
    fn ago(secs: i64) -> String {
        now()
            .checked_sub(SignedDuration::from_secs(secs))
            .unwrap()
            .to_string()
    }

    fn cells(plural: &str, obj: &Value) -> Vec<Value> {
        let cells = row_cells(plural, obj, now());
        assert_eq!(
            cells.len(),
            column_definitions(plural).len(),
            "{plural}: one cell per column"
        );
        cells
    }

    fn names(plural: &str) -> Vec<(String, i64)> {
        column_definitions(plural)
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["priority"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn human_duration_matches_apimachinery() {
        let cases: &[(i64, &str)] = &[
            (-3, "<invalid>"),
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 5 * 60 + 7, "3h5m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 59 * 60, "47h"),
            (48 * 3600, "2d"),
            (50 * 3600, "2d2h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (731 * 86400, "2y1d"),
            (8 * 365 * 86400, "8y"),
        ];
        for &(secs, want) in cases {
            assert_eq!(
                human_duration(SignedDuration::from_secs(secs)),
                want,
                "{secs}s"
            );
        }
        // time.Since saturates at Go's maximum Duration.
        assert_eq!(human_age(Some("0002-01-01T00:00:00Z"), now()), "292y");
    }

    #[test]
    fn human_age_unknowns() {
        assert_eq!(human_age(None, now()), "<unknown>");
        assert_eq!(human_age(Some(""), now()), "<unknown>");
        assert_eq!(human_age(Some("yesterday"), now()), "<unknown>");
        assert_eq!(human_age(Some("0001-01-01T00:00:00Z"), now()), "<unknown>");
        assert_eq!(human_age(Some(&ago(90)), now()), "90s");
        assert_eq!(human_age(Some("2025-06-01T11:00:00.123456Z"), now()), "59m");
        // Offsets are honoured; under three hours HumanDuration stays in minutes.
        assert_eq!(human_age(Some("2025-06-01T13:00:00+02:00"), now()), "60m");
    }

    #[test]
    fn include_object_parse() {
        assert_eq!(IncludeObject::parse("None"), Some(IncludeObject::None));
        assert_eq!(
            IncludeObject::parse("Metadata"),
            Some(IncludeObject::Metadata)
        );
        assert_eq!(IncludeObject::parse("Object"), Some(IncludeObject::Object));
        assert_eq!(IncludeObject::parse("object"), None);
        assert_eq!(IncludeObject::parse(""), None);
        assert_eq!(IncludeObject::default(), IncludeObject::Metadata);
    }

    #[test]
    fn pod_columns() {
        assert_eq!(
            names("pods"),
            [
                ("Name", 0),
                ("Ready", 0),
                ("Status", 0),
                ("Restarts", 0),
                ("Age", 0),
                ("IP", 1),
                ("Node", 1),
                ("Nominated Node", 1),
                ("Readiness Gates", 1),
            ]
            .map(|(n, p)| (n.to_owned(), p))
        );
        let defs = column_definitions("pods");
        assert_eq!(defs[0]["format"], "name");
        assert_eq!(defs[1]["format"], "");
        assert_eq!(defs[3]["type"], "string");
        assert!(defs.iter().all(|d| d.as_object().unwrap().len() == 5));
    }

    fn running_pod() -> Value {
        json!({
            "metadata": {"name": "web-7d4b9c-x2x", "namespace": "default", "creationTimestamp": ago(3 * 86400 + 4 * 3600)},
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "app", "image": "nginx"}, {"name": "log", "image": "busybox"}],
                "readinessGates": [{"conditionType": "example.com/lb"}],
            },
            "status": {
                "phase": "Running",
                "podIP": "10.244.1.7",
                "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}],
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "True"},
                    {"type": "example.com/lb", "status": "False"},
                ],
                "containerStatuses": [
                    {"name": "app", "ready": true, "restartCount": 3, "state": {"running": {"startedAt": ago(300)}},
                     "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": ago(305)}}},
                    {"name": "log", "ready": true, "restartCount": 1, "state": {"running": {"startedAt": ago(3600)}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(3700)}}},
                ],
            },
        })
    }

    #[test]
    fn running_pod_with_restarts() {
        assert_eq!(
            cells("pods", &running_pod()),
            vec![
                json!("web-7d4b9c-x2x"),
                json!("2/2"),
                json!("Running"),
                json!("4 (5m5s ago)"),
                json!("3d4h"),
                json!("10.244.1.7"),
                json!("node-a"),
                json!("<none>"),
                json!("0/1"),
            ]
        );
    }

    #[test]
    fn terminating_pod() {
        let mut pod = running_pod();
        pod["metadata"]["deletionTimestamp"] = json!(ago(10));
        assert_eq!(cells("pods", &pod)[2], "Terminating");
        // Terminal pods keep their phase-derived status even while being deleted.
        pod["status"]["phase"] = json!("Succeeded");
        pod["status"]["containerStatuses"] = json!([
            {"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        ]);
        assert_eq!(cells("pods", &pod)[2], "Completed");
        // A pod on a lost node shows Unknown.
        pod["status"]["reason"] = json!("NodeLost");
        pod["status"]["containerStatuses"] = json!([]);
        assert_eq!(cells("pods", &pod)[2], "Unknown");
    }

    #[test]
    fn crashloop_and_exit_codes() {
        let mut pod = running_pod();
        pod["status"]["containerStatuses"][0]["ready"] = json!(false);
        pod["status"]["containerStatuses"][0]["state"] =
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}});
        let c = cells("pods", &pod);
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "CrashLoopBackOff");

        pod["status"]["containerStatuses"][0]["state"] = json!({"terminated": {"exitCode": 2}});
        assert_eq!(cells("pods", &pod)[2], "ExitCode:2");
        pod["status"]["containerStatuses"][0]["state"] =
            json!({"terminated": {"exitCode": 0, "signal": 9}});
        assert_eq!(cells("pods", &pod)[2], "Signal:9");
    }

    #[test]
    fn completed_with_running_sibling() {
        let mut pod = running_pod();
        pod["status"]["containerStatuses"][0]["ready"] = json!(false);
        pod["status"]["containerStatuses"][0]["state"] =
            json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
        assert_eq!(cells("pods", &pod)[2], "Running");
        pod["status"]["conditions"][1]["status"] = json!("False");
        assert_eq!(cells("pods", &pod)[2], "NotReady");
    }

    fn init_pod(init_statuses: Value) -> Value {
        json!({
            "metadata": {"name": "db-0", "creationTimestamp": ago(30)},
            "spec": {
                "initContainers": [{"name": "migrate"}, {"name": "seed"}],
                "containers": [{"name": "db"}],
            },
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "Initialized", "status": "False"}],
                "initContainerStatuses": init_statuses,
                "containerStatuses": [{"name": "db", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}],
            },
        })
    }

    #[test]
    fn init_container_progress() {
        let done = json!({"name": "migrate", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        let running = json!({"name": "seed", "restartCount": 0, "state": {"running": {}}});
        let c = cells("pods", &init_pod(json!([done, running])));
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "Init:1/2");
        assert_eq!(c[3], "0");

        let pulling = json!({"name": "migrate", "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}});
        assert_eq!(
            cells("pods", &init_pod(json!([pulling])))[2],
            "Init:ImagePullBackOff"
        );

        let failed = json!({"name": "migrate", "restartCount": 2, "state": {"terminated": {"exitCode": 1}},
                            "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(20)}}});
        let c = cells("pods", &init_pod(json!([failed])));
        assert_eq!(c[2], "Init:ExitCode:1");
        // Init-container restarts count while the pod is still initializing.
        assert_eq!(c[3], "2 (20s ago)");

        let crashing = json!({"name": "migrate", "restartCount": 2, "state": {"terminated": {"exitCode": 1, "reason": "Error"}}});
        assert_eq!(cells("pods", &init_pod(json!([crashing])))[2], "Init:Error");
    }

    #[test]
    fn sidecar_counts_as_container() {
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": ago(60)},
            "spec": {
                "initContainers": [{"name": "proxy", "restartPolicy": "Always"}],
                "containers": [{"name": "app"}],
            },
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "initContainerStatuses": [{"name": "proxy", "started": true, "ready": true, "restartCount": 1,
                    "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(40)}}}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "state": {"running": {}}}],
            },
        });
        let c = cells("pods", &pod);
        assert_eq!(c[1], "2/2");
        assert_eq!(c[2], "Running");
        assert_eq!(c[3], "1 (40s ago)");
    }

    #[test]
    fn scheduling_gated_and_pending() {
        let pod = json!({
            "metadata": {"name": "g"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]},
        });
        assert_eq!(
            cells("pods", &pod),
            vec![
                json!("g"),
                json!("0/1"),
                json!("SchedulingGated"),
                json!("0"),
                json!("<unknown>"),
                json!("<none>"),
                json!("<none>"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
    }

    #[test]
    fn nodeport_service() {
        assert_eq!(
            names("services"),
            [
                ("Name", 0),
                ("Type", 0),
                ("Cluster-IP", 0),
                ("External-IP", 0),
                ("Port(s)", 0),
                ("Age", 0),
                ("Selector", 1)
            ]
            .map(|(n, p)| (n.to_owned(), p))
        );
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(7200)},
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.12.34",
                "clusterIPs": ["10.96.12.34"],
                "selector": {"tier": "frontend", "app": "web"},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ],
            },
        });
        assert_eq!(
            cells("services", &svc),
            vec![
                json!("web"),
                json!("NodePort"),
                json!("10.96.12.34"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP"),
                json!("120m"),
                json!("app=web,tier=frontend"),
            ]
        );
    }

    #[test]
    fn other_service_types() {
        let lb = json!({
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.5", "ports": [{"port": 443}], "externalIPs": ["1.2.3.4"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "a.example.com"}, {"ip": "203.0.113.9"}]}},
        });
        let c = cells("services", &lb);
        assert_eq!(c[3], "203.0.113.9,a.example.com,1.2.3.4");
        assert_eq!(c[4], "443/TCP");
        assert_eq!(c[6], "<none>");

        let pending = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer"}});
        assert_eq!(cells("services", &pending)[3], "<pending>");
        assert_eq!(cells("services", &pending)[2], "<none>");
        assert_eq!(cells("services", &pending)[4], "<none>");

        let ext = json!({"metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(cells("services", &ext)[3], "db.example.com");

        let headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432, "protocol": "TCP"}]}});
        let c = cells("services", &headless);
        assert_eq!(c[1], "ClusterIP");
        assert_eq!(c[2], "None");
        assert_eq!(c[3], "<none>");
    }

    #[test]
    fn endpoints_format() {
        let ep = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(5)},
            "subsets": [{
                "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "fd00::3"}, {"ip": "10.0.0.4"}],
                "ports": [{"port": 80}],
            }, {
                "addresses": [{"ip": "10.0.1.1"}],
                "ports": [{"port": 80}, {"port": 443}],
            }],
        });
        assert_eq!(
            cells("endpoints", &ep),
            vec![
                json!("web"),
                json!("10.0.0.1:80,10.0.0.2:80,[fd00::3]:80 + 3 more..."),
                json!("5s")
            ]
        );
        let two = json!({"metadata": {"name": "a"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}]}]});
        assert_eq!(cells("endpoints", &two)[1], "10.0.0.1:80,10.0.0.2:80");
        let headless =
            json!({"metadata": {"name": "a"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]});
        assert_eq!(cells("endpoints", &headless)[1], "10.0.0.1");
        assert_eq!(
            cells("endpoints", &json!({"metadata": {"name": "a"}}))[1],
            "<none>"
        );
    }

    #[test]
    fn endpointslice_format() {
        let slice = json!({
            "metadata": {"name": "web-abc12", "creationTimestamp": ago(61)},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80}, {"name": "metrics"}, {}, {"port": 9090}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]}],
        });
        assert_eq!(
            cells("endpointslices", &slice),
            vec![
                json!("web-abc12"),
                json!("IPv4"),
                json!("80,metrics,* + 1 more..."),
                json!("10.0.0.1,10.0.0.2,10.0.0.3"),
                json!("61s")
            ]
        );
        let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv6"});
        assert_eq!(cells("endpointslices", &empty)[2], "<unset>");
        assert_eq!(cells("endpointslices", &empty)[3], "<unset>");
    }

    #[test]
    fn not_ready_node() {
        let node = json!({
            "metadata": {
                "name": "worker-2",
                "creationTimestamp": ago(40 * 86400),
                "labels": {
                    "node-role.kubernetes.io/worker": "",
                    "node-role.kubernetes.io/control-plane": "",
                    "kubernetes.io/role": "infra",
                    "node-role.kubernetes.io/": "",
                    "kubernetes.io/hostname": "worker-2",
                },
            },
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"},
                ],
                "addresses": [{"type": "Hostname", "address": "worker-2"}, {"type": "InternalIP", "address": "192.168.1.12"}],
                "nodeInfo": {"kubeletVersion": "v1.33.1", "osImage": "Ubuntu 24.04 LTS", "kernelVersion": "6.8.0-31-generic",
                             "containerRuntimeVersion": "containerd://1.7.12"},
            },
        });
        assert_eq!(
            cells("nodes", &node),
            vec![
                json!("worker-2"),
                json!("NotReady,SchedulingDisabled"),
                json!("control-plane,infra,worker"),
                json!("40d"),
                json!("v1.33.1"),
                json!("192.168.1.12"),
                json!("<none>"),
                json!("Ubuntu 24.04 LTS"),
                json!("6.8.0-31-generic"),
                json!("containerd://1.7.12"),
            ]
        );
        let bare = json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let c = cells("nodes", &bare);
        assert_eq!(c[1], "Ready");
        assert_eq!(c[2], "<none>");
        assert_eq!(c[4], "");
        assert_eq!(c[7], "<unknown>");
        assert_eq!(cells("nodes", &json!({}))[1], "Unknown");
    }

    #[test]
    fn namespaces_and_simple_kinds() {
        assert_eq!(
            cells(
                "namespaces",
                &json!({"metadata": {"name": "kube-system", "creationTimestamp": ago(100)}, "status": {"phase": "Terminating"}})
            ),
            vec![json!("kube-system"), json!("Terminating"), json!("100s")]
        );
        assert_eq!(
            cells("namespaces", &json!({"metadata": {"name": "d"}}))[1],
            "Active"
        );
        assert_eq!(
            cells(
                "configmaps",
                &json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}})
            ),
            vec![json!("cfg"), json!(3), json!("<unknown>")]
        );
        assert_eq!(
            cells(
                "secrets",
                &json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}})
            ),
            vec![
                json!("tls"),
                json!("kubernetes.io/tls"),
                json!(2),
                json!("<unknown>")
            ]
        );
        assert_eq!(
            cells("secrets", &json!({"metadata": {"name": "s"}}))[1..3],
            [json!("Opaque"), json!(0)]
        );
        assert_eq!(
            cells(
                "serviceaccounts",
                &json!({"metadata": {"name": "default"}, "secrets": [{"name": "t"}]})
            ),
            vec![json!("default"), json!(1), json!("<unknown>")]
        );
        assert_eq!(
            cells(
                "leases",
                &json!({"metadata": {"name": "kube-scheduler"}, "spec": {"holderIdentity": "cp-1_abc"}})
            ),
            vec![
                json!("kube-scheduler"),
                json!("cp-1_abc"),
                json!("<unknown>")
            ]
        );
        assert_eq!(cells("leases", &json!({}))[1], "");
    }

    #[test]
    fn deployment_mid_rollout() {
        assert_eq!(
            names("deployments"),
            [
                ("Name", 0),
                ("Ready", 0),
                ("Up-to-date", 0),
                ("Available", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1)
            ]
            .map(|(n, p)| (n.to_owned(), p))
        );
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(600)},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "track", "operator": "NotIn", "values": ["canary", "beta"]}]},
                "template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}, {"name": "sidecar", "image": "envoy:1.30"}]}},
            },
            "status": {"replicas": 4, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 2},
        });
        assert_eq!(
            cells("deployments", &d),
            vec![
                json!("web"),
                json!("2/3"),
                json!(1),
                json!(2),
                json!("10m"),
                json!("app,sidecar"),
                json!("nginx:1.27,envoy:1.30"),
                json!("app=web,track notin (beta,canary)"),
            ]
        );
        // No selector renders empty here (printDeployment formats it itself), invalid as <invalid>.
        let bare = json!({"metadata": {"name": "b"}});
        let c = cells("deployments", &bare);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[7], "");
        let bad = json!({"spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}}});
        assert_eq!(cells("deployments", &bad)[7], "<invalid>");
    }

    #[test]
    fn replicaset_and_daemonset() {
        let rs = json!({
            "metadata": {"name": "web-7d4b9c", "creationTimestamp": ago(600)},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "7d4b9c"}},
                     "template": {"spec": {"containers": [{"name": "app", "image": "nginx"}]}}},
            "status": {"replicas": 3, "readyReplicas": 1},
        });
        assert_eq!(
            cells("replicasets", &rs),
            vec![
                json!("web-7d4b9c"),
                json!(3),
                json!(3),
                json!(1),
                json!("10m"),
                json!("app"),
                json!("nginx"),
                json!("app=web,pod-template-hash=7d4b9c"),
            ]
        );
        assert_eq!(cells("replicasets", &json!({}))[7], "<none>");

        let ds = json!({
            "metadata": {"name": "kube-proxy", "creationTimestamp": ago(86400)},
            "spec": {
                "selector": {"matchExpressions": [{"key": "k8s-app", "operator": "In", "values": ["kube-proxy"]}, {"key": "legacy", "operator": "DoesNotExist"}, {"key": "arch", "operator": "Exists"}]},
                "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "kube-proxy", "image": "registry.k8s.io/kube-proxy:v1.33.0"}]}},
            },
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2},
        });
        assert_eq!(
            names("daemonsets")
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        assert_eq!(
            cells("daemonsets", &ds),
            vec![
                json!("kube-proxy"),
                json!(3),
                json!(3),
                json!(2),
                json!(3),
                json!(2),
                json!("kubernetes.io/os=linux"),
                json!("24h"),
                json!("kube-proxy"),
                json!("registry.k8s.io/kube-proxy:v1.33.0"),
                json!("arch,k8s-app in (kube-proxy),!legacy"),
            ]
        );
        let bad = json!({"spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}});
        assert_eq!(cells("daemonsets", &bad)[10], "<error>");
        let bad_key = json!({"spec": {"selector": {"matchLabels": {"-bad": "x"}}}});
        assert_eq!(cells("daemonsets", &bad_key)[10], "<error>");
        assert_eq!(cells("daemonsets", &bad_key)[6], "<none>");
    }

    #[test]
    fn jobs() {
        assert_eq!(
            names("jobs")
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            [
                "Name",
                "Status",
                "Completions",
                "Duration",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let done = json!({
            "metadata": {"name": "pi", "creationTimestamp": ago(3600)},
            "spec": {"completions": 1, "parallelism": 1, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "abc"}},
                     "template": {"spec": {"containers": [{"name": "pi", "image": "perl:5.34"}]}}},
            "status": {"succeeded": 1, "startTime": ago(3600), "completionTime": ago(3600 - 95),
                       "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]},
        });
        assert_eq!(
            cells("jobs", &done),
            vec![
                json!("pi"),
                json!("Complete"),
                json!("1/1"),
                json!("95s"),
                json!("60m"),
                json!("pi"),
                json!("perl:5.34"),
                json!("batch.kubernetes.io/controller-uid=abc"),
            ]
        );
        let running = json!({"metadata": {"name": "w"}, "spec": {"parallelism": 3}, "status": {"succeeded": 2, "startTime": ago(200)}});
        let c = cells("jobs", &running);
        assert_eq!(
            c[1..4],
            [json!("Running"), json!("2/1 of 3"), json!("3m20s")]
        );
        let failed = json!({"spec": {"completions": 5}, "status": {"failed": 6, "conditions": [{"type": "Failed", "status": "True"}]}});
        assert_eq!(
            cells("jobs", &failed)[1..4],
            [json!("Failed"), json!("0/5"), json!("")]
        );
        let suspended =
            json!({"status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
        assert_eq!(
            cells("jobs", &suspended)[1..3],
            [json!("Suspended"), json!("0/1")]
        );
        let deleting = json!({"metadata": {"deletionTimestamp": ago(1)}, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
        assert_eq!(cells("jobs", &deleting)[1], "Terminating");
    }

    #[test]
    fn core_event() {
        assert_eq!(
            names("events"),
            [
                ("Last Seen", 0),
                ("Type", 0),
                ("Reason", 0),
                ("Object", 0),
                ("Subobject", 1),
                ("Source", 1),
                ("Message", 0),
                ("First Seen", 1),
                ("Count", 1),
                ("Name", 1),
            ]
            .map(|(n, p)| (n.to_owned(), p))
        );
        assert_eq!(column_definitions("events")[9]["format"], "name");
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "web-7d4b9c-x2x.17f1a2b3c4d5e6f7", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web-7d4b9c-x2x", "namespace": "default", "fieldPath": "spec.containers{app}"},
            "reason": "BackOff",
            "message": "Back-off restarting failed container app in pod web-7d4b9c-x2x\n",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": ago(3600),
            "lastTimestamp": ago(45),
            "count": 12,
            "type": "Warning",
        });
        assert_eq!(
            cells("events", &ev),
            vec![
                json!("45s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web-7d4b9c-x2x"),
                json!("spec.containers{app}"),
                json!("kubelet, node-a"),
                json!("Back-off restarting failed container app in pod web-7d4b9c-x2x"),
                json!("60m"),
                json!(12),
                json!("web-7d4b9c-x2x.17f1a2b3c4d5e6f7"),
            ]
        );
    }

    #[test]
    fn event_fallbacks() {
        // New-style core event: eventTime only, reportingComponent, no count.
        let ev = json!({
            "metadata": {"name": "e1"},
            "involvedObject": {"kind": "Node"},
            "eventTime": "2025-06-01T11:59:00.000000Z",
            "reportingComponent": "scheduler",
            "reason": "Scheduled",
            "type": "Normal",
        });
        let c = cells("events", &ev);
        assert_eq!(c[0], "60s");
        assert_eq!(c[3], "node");
        assert_eq!(c[5], "scheduler");
        assert_eq!(c[7], "60s");
        assert_eq!(c[8], 1);

        // events.k8s.io/v1 shape with a series.
        let ev = json!({
            "apiVersion": "events.k8s.io/v1",
            "metadata": {"name": "e2"},
            "regarding": {"kind": "Deployment", "name": "web"},
            "note": "Scaled up replica set web-7d4b9c to 3",
            "eventTime": ago(7200),
            "series": {"count": 4, "lastObservedTime": ago(130)},
            "reportingController": "deployment-controller",
            "reportingInstance": "cp-1",
            "reason": "ScalingReplicaSet",
            "type": "Normal",
        });
        assert_eq!(
            cells("events", &ev),
            vec![
                json!("2m10s"),
                json!("Normal"),
                json!("ScalingReplicaSet"),
                json!("deployment/web"),
                json!(""),
                json!("deployment-controller, cp-1"),
                json!("Scaled up replica set web-7d4b9c to 3"),
                json!("120m"),
                json!(4),
                json!("e2"),
            ]
        );
        // lastTimestamp missing falls back to first seen.
        let ev = json!({"firstTimestamp": ago(10), "count": 2});
        let c = cells("events", &ev);
        assert_eq!(
            (c[0].clone(), c[7].clone(), c[8].clone()),
            (json!("10s"), json!("10s"), json!(2))
        );
        assert_eq!(cells("events", &json!({}))[0], "<unknown>");
    }

    #[test]
    fn default_table_for_unknown_resources() {
        assert_eq!(
            column_definitions("clusterroles"),
            vec![
                json!({"name": "Name", "type": "string", "format": "name", "description": D_NAME, "priority": 0}),
                json!({"name": "Created At", "type": "date", "format": "", "description": D_AGE, "priority": 0}),
            ]
        );
        assert_eq!(
            row_cells(
                "clusterroles",
                &json!({"metadata": {"name": "admin", "creationTimestamp": "2025-05-01T14:00:00+02:00"}}),
                now()
            ),
            vec![json!("admin"), json!("2025-05-01T12:00:00Z")]
        );
        assert_eq!(
            row_cells("widgets", &json!({}), now()),
            vec![json!(""), json!("0001-01-01T00:00:00Z")]
        );
    }

    #[test]
    fn whole_table() {
        let succeeded = json!({"metadata": {"name": "done", "uid": "u1", "labels": {"a": "b"}}, "spec": {"containers": [{"name": "c"}]},
                               "status": {"phase": "Succeeded"}});
        let objects = vec![running_pod(), succeeded.clone()];
        let t = table(
            "pods",
            &objects,
            IncludeObject::Metadata,
            "12345",
            Some("tok"),
            Some(7),
            now(),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "12345", "continue": "tok", "remainingItemCount": 7})
        );
        assert_eq!(t["columnDefinitions"], json!(column_definitions("pods")));
        let rows = t["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["cells"][0], "web-7d4b9c-x2x");
        assert!(rows[0].get("conditions").is_none());
        assert_eq!(
            rows[1]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": succeeded["metadata"]})
        );
        assert_eq!(
            rows[1]["conditions"],
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "The pod has completed successfully."}])
        );

        let t = table(
            "pods",
            &objects,
            IncludeObject::Object,
            "1",
            None,
            None,
            now(),
        );
        assert_eq!(t["metadata"], json!({"resourceVersion": "1"}));
        assert_eq!(t["rows"][1]["object"], succeeded);

        let t = table(
            "secrets",
            &[json!({"metadata": {"name": "s"}, "data": {"k": "dg=="}})],
            IncludeObject::None,
            "",
            None,
            None,
            now(),
        );
        assert_eq!(t["metadata"], json!({}));
        assert_eq!(t["rows"][0]["object"], Value::Null);
        assert!(t["rows"][0].get("conditions").is_none());

        // Metadata for an object without usable metadata is still a well-formed PartialObjectMetadata.
        let t = table(
            "pods",
            &[json!(7)],
            IncludeObject::Metadata,
            "1",
            None,
            None,
            now(),
        );
        assert_eq!(t["rows"][0]["object"]["metadata"], json!({}));

        let empty = table(
            "nodes",
            &[],
            IncludeObject::Metadata,
            "9",
            None,
            None,
            now(),
        );
        assert_eq!(empty["rows"], json!([]));
    }

    const PLURALS: &[&str] = &[
        "pods",
        "services",
        "endpoints",
        "nodes",
        "namespaces",
        "deployments",
        "replicasets",
        "daemonsets",
        "jobs",
        "events",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "leases",
        "endpointslices",
        "somethingelse",
    ];

    #[test]
    fn garbage_never_panics() {
        let garbage = [
            json!({}),
            Value::Null,
            json!(42),
            json!("pod"),
            json!([1, 2]),
            json!({"metadata": 5, "spec": [], "status": "x", "subsets": {}, "ports": "p", "endpoints": 3}),
            json!({"metadata": {"name": 3, "creationTimestamp": 17, "labels": [], "deletionTimestamp": {}},
                   "spec": {"containers": "x", "initContainers": [7, null], "replicas": "3", "selector": "app=x", "ports": [null, 3]},
                   "status": {"conditions": [1, "x", null], "containerStatuses": [{"state": 5, "lastState": {"terminated": 1}}],
                              "initContainerStatuses": [null, {"state": {"terminated": "x"}}], "podIPs": [3]}}),
            json!({"spec": {"selector": {"matchLabels": [], "matchExpressions": [null, {"values": 3}]}, "type": 9}}),
            json!({"status": {"startTime": "2025-06-01T11:00:00Z", "completionTime": "1900-01-01T00:00:00Z"}}),
            json!({"restartCount": i64::MAX, "status": {"containerStatuses": [{"restartCount": i64::MAX}, {"restartCount": i64::MAX}]}}),
        ];
        for plural in PLURALS {
            for obj in &garbage {
                let n = column_definitions(plural).len();
                assert_eq!(row_cells(plural, obj, now()).len(), n, "{plural}: {obj}");
                let t = table(
                    plural,
                    std::slice::from_ref(obj),
                    IncludeObject::Metadata,
                    "1",
                    None,
                    None,
                    now(),
                );
                assert_eq!(t["rows"][0]["cells"].as_array().unwrap().len(), n);
            }
        }
    }

    /// Every path of `v`, as JSON-pointer-ish key lists.
    fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(prefix.clone());
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    paths(child, prefix, out);
                    prefix.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    prefix.push(i.to_string());
                    paths(child, prefix, out);
                    prefix.pop();
                }
            }
            _ => {}
        }
    }

    fn replace(v: &mut Value, path: &[String], with: &Value) {
        let mut cur = v;
        for key in path {
            cur = match cur {
                Value::Object(m) => m.get_mut(key).unwrap(),
                Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
                _ => unreachable!(),
            };
        }
        *cur = with.clone();
    }

    /// Replaces every node of realistic objects with every JSON shape: whatever a client stored,
    /// printing must not panic and must keep one cell per column.
    #[test]
    fn every_field_with_every_shape() {
        let shapes = [
            Value::Null,
            json!(true),
            json!(-1),
            json!(1.5),
            json!(""),
            json!("0001-01-01T00:00:00Z"),
            json!([]),
            json!({}),
            json!([{}]),
        ];
        let samples: Vec<(&str, Value)> = vec![
            ("pods", running_pod()),
            (
                "pods",
                init_pod(
                    json!([{"name": "migrate", "restartCount": 1, "state": {"terminated": {"exitCode": 1}},
                            "lastState": {"terminated": {"finishedAt": ago(3)}}}]),
                ),
            ),
            (
                "services",
                json!({"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "clusterIPs": ["1.1.1.1"], "externalIPs": ["2.2.2.2"],
                       "ports": [{"port": 80, "nodePort": 3, "protocol": "TCP"}], "selector": {"a": "b"}},
                       "status": {"loadBalancer": {"ingress": [{"ip": "3.3.3.3", "hostname": "h"}]}}}),
            ),
            (
                "endpoints",
                json!({"subsets": [{"addresses": [{"ip": "1.1.1.1"}], "ports": [{"port": 1}]}]}),
            ),
            (
                "endpointslices",
                json!({"addressType": "IPv4", "ports": [{"port": 1, "name": "x"}], "endpoints": [{"addresses": ["1.1.1.1"]}]}),
            ),
            (
                "nodes",
                json!({"metadata": {"labels": {"node-role.kubernetes.io/x": "", "kubernetes.io/role": "y"}}, "spec": {"unschedulable": true},
                       "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": "1"}],
                                  "nodeInfo": {"osImage": "o"}}}),
            ),
            (
                "deployments",
                json!({"spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]},
                       "template": {"spec": {"containers": [{"name": "n", "image": "i"}]}}}, "status": {"readyReplicas": 1}}),
            ),
            (
                "jobs",
                json!({"spec": {"completions": 2, "parallelism": 2}, "status": {"startTime": ago(9), "completionTime": ago(1),
                       "conditions": [{"type": "Complete", "status": "True"}]}}),
            ),
            (
                "events",
                json!({"involvedObject": {"kind": "Pod", "name": "p"}, "source": {"component": "c", "host": "h"}, "series": {"count": 2, "lastObservedTime": ago(1)},
                       "firstTimestamp": ago(5), "lastTimestamp": ago(2), "eventTime": ago(5), "count": 3, "message": " m "}),
            ),
            (
                "daemonsets",
                json!({"spec": {"template": {"spec": {"nodeSelector": {"a": "b"}}}, "selector": {"matchLabels": {"a": "b"}}}}),
            ),
        ];
        for (plural, sample) in samples {
            let mut all = Vec::new();
            paths(&sample, &mut Vec::new(), &mut all);
            for path in all {
                for shape in &shapes {
                    let mut obj = sample.clone();
                    replace(&mut obj, &path, shape);
                    let cells = row_cells(plural, &obj, now());
                    assert_eq!(
                        cells.len(),
                        column_definitions(plural).len(),
                        "{plural} {path:?} = {shape}"
                    );
                }
            }
        }
    }

    #[test]
    fn label_helpers() {
        assert_eq!(format_labels(None), "<none>");
        assert_eq!(
            format_labels(json!({"b": "2", "a": "1"}).as_object()),
            "a=1,b=2"
        );
        assert_eq!(format_label_selector(None), "<none>");
        assert_eq!(format_label_selector(Some(&json!({}))), "<none>");
        assert_eq!(
            format_label_selector(Some(
                &json!({"matchLabels": {"example.com/app": "x", "z": ""}})
            )),
            "example.com/app=x,z="
        );
        assert_eq!(
            format_label_selector(Some(&json!({"matchLabels": {"Bad.Prefix/x": "y"}}))),
            "<error>"
        );
        assert_eq!(
            format_label_selector(Some(
                &json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
            )),
            "<error>"
        );
        assert_eq!(
            format_label_selector(Some(&json!({"matchLabels": {"a": "value with spaces"}}))),
            "<error>"
        );
    }
}
