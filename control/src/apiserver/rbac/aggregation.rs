//! ClusterRole aggregation (kube-controller-manager's `clusterrole-aggregation` controller,
//! run here beside the authorizer's watch because that already follows every ClusterRole): a
//! ClusterRole with an `aggregationRule` gets the union of the rules of the ClusterRoles its
//! selectors match, taken in name order without duplicates.

use serde_json::Value;

use super::bootstrap::GROUP;
use crate::apiserver::registry::{Registry, WriteOptions};
use crate::apiserver::resources;
use crate::apiserver::validation::selector_matches;

/// The rules `role` should have, or `None` when it aggregates nothing.
pub fn aggregated_rules(role: &Value, all: &[Value]) -> Option<Vec<Value>> {
    let selectors = role["aggregationRule"]["clusterRoleSelectors"].as_array()?;
    let name = &role["metadata"]["name"];
    let mut selected: Vec<&Value> = all
        .iter()
        .filter(|r| &r["metadata"]["name"] != name)
        .filter(|r| {
            let labels = &r["metadata"]["labels"];
            selectors.iter().any(|s| selector_matches(s, labels))
        })
        .collect();
    selected.sort_by_key(|r| {
        r["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    let mut rules: Vec<Value> = Vec::new();
    for r in selected {
        for rule in r["rules"].as_array().into_iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    Some(rules)
}

/// Write the aggregated rules of every aggregating ClusterRole whose rules are stale. A
/// conflict is left for the next change to retry.
pub async fn aggregate(registry: &Registry, all: &[Value]) {
    let info = resources::lookup(GROUP, "v1", "clusterroles").expect("served");
    for role in all {
        let Some(rules) = aggregated_rules(role, all) else {
            continue;
        };
        let current = role["rules"].as_array().cloned().unwrap_or_default();
        if current == rules {
            continue;
        }
        let mut updated = role.clone();
        updated["rules"] = Value::Array(rules);
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        if let Err(e) = registry
            .update(info, None, name, None, updated, WriteOptions::default())
            .await
        {
            tracing::debug!(role = name, error = %e, "aggregating a ClusterRole failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn union_of_selected_roles_in_name_order() {
        let view = json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors":
            [{"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]}});
        let label = json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"});
        let b = json!({"metadata": {"name": "b", "labels": label}, "rules": [{"verbs": ["get"]}, {"verbs": ["list"]}]});
        let a = json!({"metadata": {"name": "a", "labels": label}, "rules": [{"verbs": ["list"]}]});
        let other = json!({"metadata": {"name": "c"}, "rules": [{"verbs": ["delete"]}]});
        let all = vec![view.clone(), b, a, other];
        assert_eq!(
            aggregated_rules(&view, &all).unwrap(),
            vec![json!({"verbs": ["list"]}), json!({"verbs": ["get"]})]
        );
        assert_eq!(aggregated_rules(&all[1], &all), None);
    }
}
