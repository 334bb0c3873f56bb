//! `policy/v1` PodDisruptionBudget validation (kube's `ValidatePodDisruptionBudget` and
//! `ValidatePodDisruptionBudgetStatusUpdate`).

use serde_json::Value;

use super::{Causes, int_or_percent, non_negative, one_of, selector};
use crate::apiserver::status::FieldCause;

pub fn validate(obj: &Value, old: Option<&Value>, out: &mut Causes) {
    let spec = &obj["spec"];
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        out.push(FieldCause::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for field in ["minAvailable", "maxUnavailable"] {
        int_or_percent(&spec[field], &format!("spec.{field}"), out);
    }
    if !spec["selector"].is_null() {
        selector(&spec["selector"], "spec.selector", out);
    }
    if !spec["unhealthyPodEvictionPolicy"].is_null() {
        one_of(
            &spec["unhealthyPodEvictionPolicy"],
            "spec.unhealthyPodEvictionPolicy",
            &["AlwaysAllow", "IfHealthyBudget"],
            out,
        );
    }
    // Status is validated whenever it changes (the status subresource; the main resource
    // keeps the stored status).
    if old.is_none_or(|o| o["status"] != obj["status"]) {
        status(&obj["status"], out);
    }
}

fn status(status: &Value, out: &mut Causes) {
    for field in [
        "disruptionsAllowed",
        "currentHealthy",
        "desiredHealthy",
        "expectedPods",
    ] {
        non_negative(&status[field], &format!("status.{field}"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(spec: Value) -> Vec<String> {
        let mut out = Vec::new();
        validate(&json!({"spec": spec, "status": {}}), None, &mut out);
        out.into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn one_budget_an_int_or_a_percent_of_at_most_100() {
        assert!(errors(json!({"minAvailable": 2, "selector": {}})).is_empty());
        assert!(errors(json!({"maxUnavailable": "25%"})).is_empty());
        let both = errors(json!({"minAvailable": 1, "maxUnavailable": 1}));
        assert_eq!(both.len(), 1);
        assert!(both[0].ends_with("minAvailable and maxUnavailable cannot be both set"));
        assert_eq!(
            errors(json!({"minAvailable": -1})),
            ["spec.minAvailable: Invalid value: -1: must be greater than or equal to 0"]
        );
        assert_eq!(
            errors(json!({"maxUnavailable": "101%"})),
            ["spec.maxUnavailable: Invalid value: \"101%\": must not be greater than 100%"]
        );
        assert!(errors(json!({"minAvailable": "half"}))[0].contains("a valid percent string"));
    }

    #[test]
    fn selectors_and_eviction_policies_are_checked() {
        let bad = errors(json!({"minAvailable": 1, "selector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": []}]}}));
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("spec.selector.matchExpressions[0].values: Required value"));
        let policy = errors(json!({"unhealthyPodEvictionPolicy": "Sometimes"}));
        assert!(policy[0].starts_with("spec.unhealthyPodEvictionPolicy: Unsupported value"));
    }
}
