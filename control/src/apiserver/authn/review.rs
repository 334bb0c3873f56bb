//! `authentication.k8s.io/v1` `SelfSubjectReview`: who the API server takes the caller for
//! (`kubectl auth whoami`). Nothing is stored; the answer is the posted review with its
//! status filled in.

use serde_json::{Value, json};

use super::UserInfo;
use super::token_request::GROUP;
use crate::apiserver::status::{ApiError, ApiResult};

/// kube's `authentication.k8s.io/v1` `UserInfo`: empty uid and extra are left out.
pub fn user_info_json(user: &UserInfo) -> Value {
    let mut out = json!({"username": user.name});
    if !user.uid.is_empty() {
        out["uid"] = json!(user.uid);
    }
    out["groups"] = json!(user.groups);
    if !user.extra.is_empty() {
        out["extra"] = json!(user.extra);
    }
    out
}

/// The answer to a posted SelfSubjectReview `body` from `user`.
pub fn self_subject_review(user: &UserInfo, body: &Value) -> ApiResult<Value> {
    let kind = body.get("kind").and_then(Value::as_str);
    if !body.is_object() || kind.is_some_and(|k| k != "SelfSubjectReview") {
        return Err(ApiError::bad_request(format!(
            "the body is not a SelfSubjectReview (kind {})",
            kind.unwrap_or("unset")
        )));
    }
    Ok(json!({
        "kind": "SelfSubjectReview",
        "apiVersion": format!("{GROUP}/v1"),
        "metadata": {"creationTimestamp": jiff::Timestamp::now().round(jiff::Unit::Second).map_err(|e| ApiError::internal(e.to_string()))?.to_string()},
        "status": {"userInfo": user_info_json(user)},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_reports_the_caller() {
        let user = UserInfo {
            name: "alice".into(),
            groups: vec!["devs".into(), "system:authenticated".into()],
            ..UserInfo::default()
        };
        let out = self_subject_review(&user, &json!({"kind": "SelfSubjectReview"})).unwrap();
        assert_eq!(
            out["status"]["userInfo"],
            json!({"username": "alice", "groups": ["devs", "system:authenticated"]})
        );
        assert_eq!(out["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(
            self_subject_review(&user, &json!({"kind": "Pod"}))
                .unwrap_err()
                .code,
            400
        );
    }
}
