//! The filter plugins of kube's default profile that apply here (NodeUnschedulable, NodeName,
//! TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit, in that order, the first failing
//! one deciding a node's reasons) and the score plugins (NodeResourcesFit LeastAllocated,
//! NodeResourcesBalancedAllocation, TaintToleration, NodeAffinity, with kube's weights).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};

use super::resources::{Allocatable, PodRes, Usage};

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const REASON_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const REASON_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const REASON_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// What the scheduler knows of a node, parsed once per change of the node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub allocatable: Allocatable,
    /// The node's taints, plus `not-ready`/`unreachable` NoSchedule while it is not Ready
    /// (what kube's node lifecycle controller would add).
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let spec = node.spec.as_ref();
        let mut taints: Vec<Taint> = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        let implicit = match ready {
            Some("True") => None,
            Some("Unknown") => Some(TAINT_UNREACHABLE),
            _ => Some(TAINT_NOT_READY),
        };
        if let Some(key) = implicit
            && !taints
                .iter()
                .any(|t| t.key == key && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: key.to_string(),
                effect: "NoSchedule".to_string(),
                ..Default::default()
            });
        }
        NodeInfo {
            allocatable: Allocatable::of(&node),
            unschedulable: spec.and_then(|s| s.unschedulable) == Some(true),
            taints,
            node,
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.node.metadata.labels.as_ref()
    }

    /// Whether the two differ in anything scheduling looks at (heartbeats do not count).
    pub fn same_for_scheduling(&self, o: &NodeInfo) -> bool {
        self.allocatable == o.allocatable
            && self.taints == o.taints
            && self.unschedulable == o.unschedulable
            && self.labels() == o.labels()
    }
}

/// kube's `ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect = t.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// The pod, with what filtering and scoring ask of it worked out once per attempt.
pub struct PodCtx<'a> {
    pub pod: &'a Pod,
    pub spec: &'a PodSpec,
    pub res: PodRes,
}

impl<'a> PodCtx<'a> {
    pub fn new(pod: &'a Pod, spec: &'a PodSpec) -> PodCtx<'a> {
        PodCtx {
            pod,
            spec,
            res: PodRes::of(spec),
        }
    }

    fn tolerations(&self) -> &[Toleration] {
        self.spec.tolerations.as_deref().unwrap_or(&[])
    }

    fn required_terms(&self) -> Option<&[NodeSelectorTerm]> {
        self.spec
            .affinity
            .as_ref()?
            .node_affinity
            .as_ref()?
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .map(|s| s.node_selector_terms.as_slice())
    }
}

/// Why a node does not fit, as kube words it (one node may have several reasons).
pub fn filter(pod: &PodCtx<'_>, node: &NodeInfo, usage: &Usage) -> Result<(), Vec<String>> {
    let fail = |r: &str| Err(vec![r.to_string()]);
    // NodeUnschedulable
    if node.unschedulable {
        let taint = Taint {
            key: TAINT_UNSCHEDULABLE.to_string(),
            effect: "NoSchedule".to_string(),
            ..Default::default()
        };
        if !pod.tolerations().iter().any(|t| tolerates(t, &taint)) {
            return fail(REASON_UNSCHEDULABLE);
        }
    }
    // NodeName
    if let Some(want) = pod.spec.node_name.as_deref().filter(|n| !n.is_empty())
        && want != node.name()
    {
        return fail(REASON_NODE_NAME);
    }
    // TaintToleration
    for taint in &node.taints {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !pod.tolerations().iter().any(|t| tolerates(t, taint))
        {
            return fail(&format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            ));
        }
    }
    // NodeAffinity (nodeSelector and required node affinity)
    if !matches_node_selector(pod, node) {
        return fail(REASON_AFFINITY);
    }
    // NodePorts
    if pod
        .res
        .ports
        .iter()
        .any(|p| usage.ports.iter().any(|u| u.conflicts(p)))
    {
        return fail(REASON_PORTS);
    }
    // NodeResourcesFit
    let reasons = insufficient(&pod.res, &node.allocatable, usage);
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// kube's `fitsRequest`.
fn insufficient(pod: &PodRes, alloc: &Allocatable, usage: &Usage) -> Vec<String> {
    let mut reasons = Vec::new();
    if usage.pods + 1 > alloc.pods {
        reasons.push(REASON_TOO_MANY_PODS.to_string());
    }
    if pod.is_empty() {
        return reasons;
    }
    let (req, used, have) = (&pod.requests, &usage.requests, &alloc.res);
    let short = |want: i64, used: i64, have: i64| want > 0 && want > have.saturating_sub(used);
    if short(req.milli_cpu, used.milli_cpu, have.milli_cpu) {
        reasons.push("Insufficient cpu".to_string());
    }
    if short(req.memory, used.memory, have.memory) {
        reasons.push("Insufficient memory".to_string());
    }
    if short(
        req.ephemeral_storage,
        used.ephemeral_storage,
        have.ephemeral_storage,
    ) {
        reasons.push("Insufficient ephemeral-storage".to_string());
    }
    for (name, want) in &pod.scalars {
        let used = usage.scalars.get(name).copied().unwrap_or(0);
        let have = alloc.scalars.get(name).copied().unwrap_or(0);
        if short(*want, used, have) {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

fn matches_node_selector(pod: &PodCtx<'_>, node: &NodeInfo) -> bool {
    let labels = node.labels();
    if let Some(selector) = pod.spec.node_selector.as_ref() {
        for (k, v) in selector {
            if labels.and_then(|l| l.get(k)) != Some(v) {
                return false;
            }
        }
    }
    match pod.required_terms() {
        // Terms are ORed; none at all matches nothing.
        Some(terms) => terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

/// A node selector term: its expressions and fields ANDed; an empty term matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, Some(node.name()))
        })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            match (v.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(v), Ok(b)) => {
                    if op == "Gt" {
                        v > b
                    } else {
                        v < b
                    }
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// The raw scores of a feasible node, before normalisation across nodes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawScore {
    /// LeastAllocated + BalancedAllocation, 0..=200 (not normalised in kube either).
    pub resources: f64,
    /// PreferNoSchedule taints the pod does not tolerate.
    pub intolerable: u32,
    /// Sum of the weights of the preferred node affinity terms the node matches.
    pub affinity: i64,
}

pub const MAX_SCORE: f64 = 100.0;
/// kube's default profile weights.
pub const WEIGHT_TAINTS: f64 = 3.0;
pub const WEIGHT_AFFINITY: f64 = 2.0;

pub fn score(pod: &PodCtx<'_>, node: &NodeInfo, usage: &Usage) -> RawScore {
    let alloc = &node.allocatable.res;
    // LeastAllocated, on non-zero requests, cpu and memory weighted 1 each.
    let least = |used: i64, want: i64, have: i64| -> f64 {
        let requested = used.saturating_add(want);
        if have <= 0 || requested > have {
            0.0
        } else {
            (have - requested) as f64 * MAX_SCORE / have as f64
        }
    };
    let least_allocated = (least(
        usage.non_zero.milli_cpu,
        pod.res.non_zero.milli_cpu,
        alloc.milli_cpu,
    ) + least(usage.non_zero.memory, pod.res.non_zero.memory, alloc.memory))
        / 2.0;
    // BalancedAllocation, on actual requests.
    let fraction = |used: i64, want: i64, have: i64| -> Option<f64> {
        (have > 0).then(|| (used.saturating_add(want) as f64 / have as f64).min(1.0))
    };
    let fractions = [
        fraction(
            usage.requests.milli_cpu,
            pod.res.requests.milli_cpu,
            alloc.milli_cpu,
        ),
        fraction(usage.requests.memory, pod.res.requests.memory, alloc.memory),
    ];
    let std = match fractions {
        [Some(a), Some(b)] => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    let balanced = (1.0 - std) * MAX_SCORE;
    // TaintToleration: PreferNoSchedule taints not tolerated by a PreferNoSchedule-or-any
    // toleration.
    let intolerable = node
        .taints
        .iter()
        .filter(|taint| {
            taint.effect == "PreferNoSchedule"
                && !pod.tolerations().iter().any(|t| {
                    matches!(
                        t.effect.as_deref(),
                        None | Some("") | Some("PreferNoSchedule")
                    ) && tolerates(t, taint)
                })
        })
        .count() as u32;
    // NodeAffinity preferred terms.
    let affinity = pod
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|terms| {
            terms
                .iter()
                .filter(|t| t.weight != 0 && term_matches(&t.preference, node))
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .unwrap_or(0);
    RawScore {
        resources: least_allocated + balanced,
        intolerable,
        affinity,
    }
}

/// The final scores: TaintToleration and NodeAffinity normalised across the feasible nodes
/// (reversed for taints), weighted, added to the resource scores.
pub fn finalize(raw: &[RawScore]) -> impl Iterator<Item = f64> + '_ {
    let max_intolerable = raw.iter().map(|r| r.intolerable).max().unwrap_or(0);
    let max_affinity = raw.iter().map(|r| r.affinity).max().unwrap_or(0);
    raw.iter().map(move |r| {
        let taints = if max_intolerable == 0 {
            MAX_SCORE
        } else {
            MAX_SCORE - f64::from(r.intolerable) * MAX_SCORE / f64::from(max_intolerable)
        };
        let affinity = if max_affinity > 0 {
            r.affinity as f64 * MAX_SCORE / max_affinity as f64
        } else {
            0.0
        };
        r.resources + WEIGHT_TAINTS * taints + WEIGHT_AFFINITY * affinity
    })
}

/// kube's FitError message: "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't
/// match Pod's node affinity/selector."
pub fn fit_error(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".to_string();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> NodeInfo {
        NodeInfo::new(Arc::new(serde_json::from_value(v).unwrap()))
    }

    fn ready_node(name: &str, labels: serde_json::Value, spec: serde_json::Value) -> NodeInfo {
        node(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "3"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }))
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    fn check(p: &Pod, n: &NodeInfo, usage: &Usage) -> Result<(), Vec<String>> {
        let spec = p.spec.as_ref().unwrap();
        filter(&PodCtx::new(p, spec), n, usage)
    }

    #[test]
    fn taints_and_tolerations() {
        let n = ready_node(
            "n",
            json!({}),
            json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}),
        );
        let plain = pod(json!({"containers": [{"name": "c"}]}));
        assert_eq!(
            check(&plain, &n, &Usage::default()),
            Err(vec![
                "node(s) had untolerated taint {dedicated: db}".to_string()
            ])
        );
        for tol in [
            json!({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}),
            json!({"key": "dedicated", "operator": "Exists"}),
            json!({"operator": "Exists"}),
        ] {
            let p = pod(json!({"containers": [{"name": "c"}], "tolerations": [tol]}));
            assert_eq!(check(&p, &n, &Usage::default()), Ok(()), "{tol}");
        }
        let wrong = pod(
            json!({"containers": [{"name": "c"}], "tolerations": [{"key": "dedicated", "value": "web"}]}),
        );
        assert!(check(&wrong, &n, &Usage::default()).is_err());
        // Not ready: an implicit not-ready taint.
        let down = node(json!({"metadata": {"name": "d"},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "3"},
                       "conditions": [{"type": "Ready", "status": "False"}]}}));
        assert_eq!(
            check(&plain, &down, &Usage::default()),
            Err(vec![
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }".to_string()
            ])
        );
        let cordoned = ready_node("c", json!({}), json!({"unschedulable": true}));
        assert_eq!(
            check(&plain, &cordoned, &Usage::default()),
            Err(vec![REASON_UNSCHEDULABLE.to_string()])
        );
    }

    #[test]
    fn node_affinity_operators() {
        let n = ready_node("n1", json!({"zone": "a", "gen": "5"}), json!({}));
        let with = |exprs: serde_json::Value, fields: serde_json::Value| {
            pod(
                json!({"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": exprs, "matchFields": fields}]}}}}),
            )
        };
        let ok = |e, f| check(&with(e, f), &n, &Usage::default()).is_ok();
        assert!(ok(
            json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}]),
            json!([])
        ));
        assert!(!ok(
            json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}]),
            json!([])
        ));
        assert!(ok(
            json!([{"key": "x", "operator": "NotIn", "values": ["a"]}]),
            json!([])
        ));
        assert!(ok(
            json!([{"key": "zone", "operator": "Exists"}]),
            json!([])
        ));
        assert!(ok(
            json!([{"key": "x", "operator": "DoesNotExist"}]),
            json!([])
        ));
        assert!(ok(
            json!([{"key": "gen", "operator": "Gt", "values": ["4"]}]),
            json!([])
        ));
        assert!(!ok(
            json!([{"key": "gen", "operator": "Lt", "values": ["4"]}]),
            json!([])
        ));
        assert!(!ok(
            json!([{"key": "zone", "operator": "Gt", "values": ["4"]}]),
            json!([])
        ));
        assert!(ok(
            json!([]),
            json!([{"key": "metadata.name", "operator": "In", "values": ["n1"]}])
        ));
        assert!(!ok(
            json!([]),
            json!([{"key": "metadata.name", "operator": "In", "values": ["n2"]}])
        ));
        assert!(!ok(json!([]), json!([])));
        let selector = pod(json!({"containers": [{"name": "c"}], "nodeSelector": {"zone": "b"}}));
        assert_eq!(
            check(&selector, &n, &Usage::default()),
            Err(vec![REASON_AFFINITY.to_string()])
        );
    }

    #[test]
    fn resources_and_ports() {
        let n = ready_node("n", json!({}), json!({}));
        let big = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "8Gi"}}}]}),
        );
        assert_eq!(
            check(&big, &n, &Usage::default()),
            Err(vec![
                "Insufficient cpu".to_string(),
                "Insufficient memory".to_string()
            ])
        );
        let web = pod(
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
        );
        let mut usage = Usage::default();
        assert_eq!(check(&web, &n, &usage), Ok(()));
        usage.add(&PodRes::of(web.spec.as_ref().unwrap()));
        assert_eq!(check(&web, &n, &usage), Err(vec![REASON_PORTS.to_string()]));
        let udp = pod(
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80, "protocol": "UDP"}]}]}),
        );
        assert_eq!(check(&udp, &n, &usage), Ok(()));
        usage.add(&PodRes::of(udp.spec.as_ref().unwrap()));
        usage.add(&PodRes::of(udp.spec.as_ref().unwrap()));
        let small = pod(json!({"containers": [{"name": "c"}]}));
        assert_eq!(
            check(&small, &n, &usage),
            Err(vec![REASON_TOO_MANY_PODS.to_string()])
        );
    }

    #[test]
    fn scores_prefer_emptier_nodes() {
        let n = ready_node("n", json!({}), json!({}));
        let p = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}),
        );
        let ctx = PodCtx::new(&p, p.spec.as_ref().unwrap());
        let empty = score(&ctx, &n, &Usage::default());
        let mut usage = Usage::default();
        usage.add(&ctx.res);
        let used = score(&ctx, &n, &usage);
        assert!(empty.resources > used.resources);
        // 500m of 2 cpus and 1Gi of 4Gi: 75 free each; perfectly balanced.
        assert!((empty.resources - 175.0).abs() < 1e-9);
    }

    #[test]
    fn fit_error_message_like_kube() {
        let mut reasons = BTreeMap::new();
        reasons.insert(REASON_AFFINITY.to_string(), 2);
        reasons.insert("Insufficient cpu".to_string(), 1);
        assert_eq!(
            fit_error(3, &reasons),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
        );
    }
}
