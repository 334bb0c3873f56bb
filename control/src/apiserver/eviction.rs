//! The `pods/eviction` subresource (kube-apiserver's `EvictionREST`): a pod is deleted only if
//! the one PodDisruptionBudget that selects it allows a disruption, which the eviction spends
//! by decrementing `status.disruptionsAllowed` and recording the pod in
//! `status.disruptedPods` (an optimistic write, so two evictions never spend the same
//! disruption). The disruption controller recomputes the budget from the pods that remain.

use serde_json::{Value, json};

use super::object::{self, meta_str};
use super::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use super::resources::{self, ResourceInfo};
use super::status::{ApiError, ApiResult};
use super::validation::selector_matches;
use crate::store::Revision;

/// kube's `EvictionsRetry` (20 steps): how often a lost race is retried.
const RETRIES: usize = 20;
/// kube's `MaxDisruptedPodSize`.
const MAX_DISRUPTED_PODS: usize = 2000;
const BUDGET_CAUSE: &str = "DisruptionBudget";
const VIOLATES: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
const MULTIPLE: &str = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.";

fn info(plural: &str) -> ApiResult<&'static ResourceInfo> {
    resources::RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
}

/// `POST pods/{name}/eviction` with a policy/v1 (or v1beta1) `Eviction`: the `Status` to return.
pub async fn evict(
    registry: &Registry,
    ns: &str,
    name: &str,
    eviction: &Value,
    dry_run: bool,
) -> ApiResult<Value> {
    let mut opts = check_eviction(ns, name, eviction)?;
    opts.dry_run |= dry_run;
    let pods = info("pods")?;
    let Some(pod) = delete_if_budget_does_not_apply(registry, pods, ns, name, &opts).await? else {
        return Ok(success());
    };
    let budgets = budgets_of(registry, ns, &pod).await?;
    let budget = match budgets.as_slice() {
        [] => None,
        [one] => Some(one),
        _ => return Err(ApiError::status_code(500, MULTIPLE)),
    };
    let mut delete_opts = opts.clone();
    if let Some(budget) = budget {
        let bypass = !is_ready(&pod) && unhealthy_may_go(budget);
        if bypass {
            // The pod must not have become ready (and so counted) since it was read.
            delete_opts.precondition_rv = delete_opts.precondition_rv.or(revision_of(&pod)?);
        } else {
            spend_disruption(registry, ns, budget, name, opts.dry_run).await?;
        }
        let result = registry.delete(pods, Some(ns), name, &delete_opts).await;
        return match result {
            Err(e) if e.code == 409 && bypass && opts.precondition_rv.is_none() => {
                Err(still_processing(object::name(budget)))
            }
            Err(e) => Err(e),
            Ok(_) => Ok(success()),
        };
    }
    registry.delete(pods, Some(ns), name, &delete_opts).await?;
    Ok(success())
}

/// The body must be an Eviction of this pod; its `deleteOptions` are the delete's.
fn check_eviction(ns: &str, name: &str, eviction: &Value) -> ApiResult<DeleteOptions> {
    let api_version = eviction["apiVersion"].as_str().unwrap_or("");
    let kind = eviction["kind"].as_str().unwrap_or("");
    if !matches!(api_version, "policy/v1" | "policy/v1beta1") || kind != "Eviction" {
        return Err(ApiError::bad_request(format!(
            "not a Eviction object: {api_version}, Kind={kind}"
        )));
    }
    if meta_str(eviction, "name") != Some(name) {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    if let Some(body_ns) = meta_str(eviction, "namespace")
        && !body_ns.is_empty()
        && body_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    match eviction.get("deleteOptions") {
        Some(d) if d.is_object() => DeleteOptions::from_body(d),
        _ => Ok(DeleteOptions::default()),
    }
}

/// Terminal, pending and terminating pods are deleted without consulting a budget (they are
/// no disruption); `Some(pod)` when the budget must decide.
async fn delete_if_budget_does_not_apply(
    registry: &Registry,
    pods: &'static ResourceInfo,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<Option<Value>> {
    // A conflict is retried unless the caller pinned a resourceVersion.
    let pinned = opts.precondition_rv.is_some();
    let mut last = None;
    for _ in 0..RETRIES {
        let pod = registry.get(pods, Some(ns), name).await?;
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        let deleting = object::is_deleting(&pod);
        if !deleting && !matches!(phase, Some("Succeeded" | "Failed" | "Pending")) {
            return Ok(Some(pod));
        }
        let mut opts = opts.clone();
        // Not racing a pod that becomes ready (and so guarded) meanwhile.
        let terminal = deleting || matches!(phase, Some("Succeeded" | "Failed"));
        if !terminal && opts.precondition_rv.is_none() {
            opts.precondition_rv = revision_of(&pod)?;
        }
        match registry.delete(pods, Some(ns), name, &opts).await {
            Ok(_) => return Ok(None),
            Err(e) if e.code == 409 && !pinned => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ApiError::internal("eviction retries exhausted")))
}

fn revision_of(obj: &Value) -> ApiResult<Option<Revision>> {
    object::parse_resource_version(meta_str(obj, "resourceVersion"))
}

/// The budgets in the pod's namespace whose selector selects it (an empty selector selects
/// every pod, a missing one none, as in policy/v1).
async fn budgets_of(registry: &Registry, ns: &str, pod: &Value) -> ApiResult<Vec<Value>> {
    let pdbs = info("poddisruptionbudgets")?;
    let page = registry
        .list(pdbs, Some(ns), &ListOptions::default())
        .await?;
    let labels = pod
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    Ok(page
        .items
        .into_iter()
        .filter(|b| {
            let sel = &b["spec"]["selector"];
            sel.is_object() && selector_matches(sel, &labels)
        })
        .collect())
}

pub fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// An unready pod may go without spending a disruption when the budget says so, or when the
/// application is healthy enough without it.
fn unhealthy_may_go(budget: &Value) -> bool {
    if budget.pointer("/spec/unhealthyPodEvictionPolicy") == Some(&json!("AlwaysAllow")) {
        return true;
    }
    let current = status_int(budget, "currentHealthy");
    let desired = status_int(budget, "desiredHealthy");
    current >= desired && desired > 0
}

fn status_int(budget: &Value, field: &str) -> i64 {
    budget["status"][field].as_i64().unwrap_or(0)
}

/// kube's `checkAndDecrement`, retried on conflicts with a fresh read of the budget.
async fn spend_disruption(
    registry: &Registry,
    ns: &str,
    budget: &Value,
    pod: &str,
    dry_run: bool,
) -> ApiResult<()> {
    let pdbs = info("poddisruptionbudgets")?;
    let name = object::name(budget).to_string();
    let mut current = budget.clone();
    for _ in 0..RETRIES {
        let spent = decremented(&current, pod)?;
        if dry_run {
            return Ok(());
        }
        let written = registry
            .update(
                pdbs,
                Some(ns),
                &name,
                Some("status"),
                spent,
                WriteOptions::default(),
            )
            .await;
        match written {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 409 => current = registry.get(pdbs, Some(ns), &name).await?,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::timeout(format!(
        "couldn't update PodDisruptionBudget \"{name}\" due to conflicts"
    )))
}

/// The budget with one disruption spent on `pod`, or why none may be.
pub fn decremented(budget: &Value, pod: &str) -> ApiResult<Value> {
    let name = object::name(budget);
    let generation = budget
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if status_int(budget, "observedGeneration") < generation {
        return Err(still_processing(name));
    }
    let allowed = status_int(budget, "disruptionsAllowed");
    if allowed < 0 {
        return Err(forbidden(name, "pdb disruptions allowed is negative"));
    }
    let disrupted = budget["status"]["disruptedPods"]
        .as_object()
        .map_or(0, serde_json::Map::len);
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(forbidden(
            name,
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(ApiError::too_many_requests(
            VIOLATES,
            json!([{"reason": BUDGET_CAUSE, "message": format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                status_int(budget, "desiredHealthy"),
                status_int(budget, "currentHealthy"),
            )}]),
        ));
    }
    let mut out = budget.clone();
    let status = &mut out["status"];
    status["disruptionsAllowed"] = json!(allowed - 1);
    if !status["disruptedPods"].is_object() {
        status["disruptedPods"] = json!({});
    }
    status["disruptedPods"][pod] = json!(object::now());
    if allowed == 1 {
        set_allowed_condition(&mut out);
    }
    Ok(out)
}

/// kube's `UpdateDisruptionAllowedCondition` (with `SetStatusCondition`'s transition time).
pub fn set_allowed_condition(budget: &mut Value) {
    let allowed = status_int(budget, "disruptionsAllowed") > 0;
    let observed = status_int(budget, "observedGeneration");
    let (status, reason) = if allowed {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let conditions = &mut budget["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    let fresh = json!({
        "type": "DisruptionAllowed",
        "status": status,
        "reason": reason,
        "message": "",
        "observedGeneration": observed,
        "lastTransitionTime": object::now(),
    });
    match list.iter_mut().find(|c| c["type"] == "DisruptionAllowed") {
        Some(c) => {
            let since = (c["status"] == status)
                .then(|| c["lastTransitionTime"].clone())
                .filter(|t| t.is_string());
            *c = fresh;
            if let Some(t) = since {
                c["lastTransitionTime"] = t;
            }
        }
        None => list.push(fresh),
    }
}

fn still_processing(name: &str) -> ApiError {
    ApiError::too_many_requests(
        VIOLATES,
        json!([{"reason": BUDGET_CAUSE, "message": format!(
            "The disruption budget {name} is still being processed by the server."
        )}]),
    )
}

fn forbidden(name: &str, why: &str) -> ApiError {
    ApiError::forbidden(format!(
        "poddisruptionbudgets.policy \"{name}\" is forbidden: {why}"
    ))
}

fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(allowed: i64, generation: i64, observed: i64) -> Value {
        json!({"metadata": {"name": "web", "generation": generation},
            "status": {"disruptionsAllowed": allowed, "observedGeneration": observed,
                "currentHealthy": 2, "desiredHealthy": 2}})
    }

    #[test]
    fn a_spent_disruption_is_recorded_and_the_last_one_flips_the_condition() {
        let b = decremented(&budget(2, 1, 1), "web-1").unwrap();
        assert_eq!(b["status"]["disruptionsAllowed"], 1);
        assert!(b["status"]["disruptedPods"]["web-1"].is_string());
        assert!(b["status"].get("conditions").is_none());
        let b = decremented(&b, "web-2").unwrap();
        assert_eq!(b["status"]["disruptionsAllowed"], 0);
        assert_eq!(b["status"]["conditions"][0]["reason"], "InsufficientPods");
        assert_eq!(b["status"]["conditions"][0]["status"], "False");
    }

    #[test]
    fn no_disruption_left_or_an_unobserved_spec_is_a_429() {
        let e = decremented(&budget(0, 1, 1), "web-1").unwrap_err();
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (429, "TooManyRequests", VIOLATES)
        );
        let cause = &e.details.unwrap()["causes"][0];
        assert_eq!(cause["reason"], "DisruptionBudget");
        assert_eq!(
            cause["message"],
            "The disruption budget web needs 2 healthy pods and has 2 currently"
        );
        let e = decremented(&budget(3, 2, 1), "web-1").unwrap_err();
        assert_eq!(e.code, 429);
        assert_eq!(decremented(&budget(-1, 1, 1), "p").unwrap_err().code, 403);
    }

    #[test]
    fn evictions_must_name_their_pod() {
        let ev = json!({"apiVersion": "policy/v1beta1", "kind": "Eviction",
            "metadata": {"name": "web-1"}, "deleteOptions": {"gracePeriodSeconds": 5}});
        assert_eq!(
            check_eviction("ns", "web-1", &ev).unwrap().grace_period,
            Some(5)
        );
        assert_eq!(check_eviction("ns", "web-2", &ev).unwrap_err().code, 400);
        let wrong = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1"}});
        assert_eq!(check_eviction("ns", "web-1", &wrong).unwrap_err().code, 400);
    }
}
