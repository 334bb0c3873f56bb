//! What an update of a CertificateSigningRequest writes, as kube's three CSR strategies
//! (`pkg/registry/certificates/certificates/strategy.go`): through the object only metadata,
//! through `status` the status but never the Approved/Denied verdict, through `approval` only
//! the conditions; the spec never changes. Condition timestamps are filled in.

use serde_json::{Value, json};

use super::object;

/// What an update writes (kube's three CSR strategies), with condition timestamps filled.
pub fn update_rules(subresource: Option<&str>, cur: &Value, new: Value) -> Value {
    let mut out = match subresource {
        Some("status") => {
            let mut out = cur.clone();
            out["status"] = new.get("status").cloned().unwrap_or_else(|| json!({}));
            // The verdict is approval's business: keep the stored one.
            let verdict = |c: &&Value| c["type"] == "Approved" || c["type"] == "Denied";
            let mut conditions: Vec<Value> = conditions(&new)
                .iter()
                .filter(|c| !verdict(c))
                .cloned()
                .collect();
            conditions.extend(conditions_of(cur).into_iter().filter(|c| verdict(&c)));
            set_conditions(&mut out, conditions);
            out
        }
        Some("approval") => {
            let mut out = cur.clone();
            set_conditions(&mut out, conditions(&new).to_vec());
            out
        }
        _ => {
            let mut out = new;
            match cur.get("status") {
                Some(s) => out["status"] = s.clone(),
                None => {
                    if let Some(o) = out.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            out
        }
    };
    out["spec"] = cur["spec"].clone();
    stamp_conditions(&mut out, cur);
    out
}

fn conditions(obj: &Value) -> &[Value] {
    obj["status"]["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn conditions_of(obj: &Value) -> Vec<Value> {
    conditions(obj).to_vec()
}

fn set_conditions(obj: &mut Value, conditions: Vec<Value>) {
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if conditions.is_empty() {
        if let Some(s) = obj["status"].as_object_mut() {
            s.remove("conditions");
        }
    } else {
        obj["status"]["conditions"] = json!(conditions);
    }
}

/// kube's `populateConditionTimestamps`: `lastUpdateTime` now when unset; `lastTransitionTime`
/// kept from the stored condition of the same type and status, else now.
fn stamp_conditions(obj: &mut Value, cur: &Value) {
    let now = object::now();
    let old = conditions_of(cur);
    let Some(list) = obj["status"]["conditions"].as_array_mut() else {
        return;
    };
    for c in list {
        if c["lastUpdateTime"].as_str().is_none_or(str::is_empty) {
            c["lastUpdateTime"] = json!(now);
        }
        if c["lastTransitionTime"].as_str().is_none_or(str::is_empty) {
            let same = old
                .iter()
                .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                .and_then(|o| o["lastTransitionTime"].as_str())
                .map(str::to_string);
            c["lastTransitionTime"] = json!(same.unwrap_or_else(|| now.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subresource_writes_only_its_part() {
        let cur = json!({"metadata": {"name": "c"}, "spec": {"signerName": "a.b/c"},
            "status": {"conditions": [{"type": "Approved", "status": "True", "lastTransitionTime": "t0", "lastUpdateTime": "t0"}]}});
        let new = json!({"metadata": {"name": "c", "labels": {"x": "1"}}, "spec": {"signerName": "evil.io/x"},
            "status": {"certificate": "Y2VydA==", "conditions": [{"type": "Denied", "status": "True"}]}});
        let main = update_rules(None, &cur, new.clone());
        assert_eq!(main["metadata"]["labels"]["x"], "1");
        assert_eq!(main["spec"]["signerName"], "a.b/c");
        assert!(main["status"].get("certificate").is_none());
        let status = update_rules(Some("status"), &cur, new.clone());
        assert_eq!(status["status"]["certificate"], "Y2VydA==");
        let types: Vec<&Value> = conditions(&status).iter().map(|c| &c["type"]).collect();
        assert_eq!(types, vec!["Approved"]);
        let approval = update_rules(Some("approval"), &cur, new);
        assert!(approval["status"].get("certificate").is_none());
        assert_eq!(conditions(&approval)[0]["type"], "Denied");
        assert!(conditions(&approval)[0]["lastUpdateTime"].is_string());
    }
}
