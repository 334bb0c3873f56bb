//! Authorization by RBAC (`rbac.authorization.k8s.io/v1`), with Kubernetes' semantics:
//! [`attributes`] turns a request into kube's RequestInfo attributes and writes its denials,
//! [`rules`] matches rules against them, [`authorizer`] evaluates the stored roles and
//! bindings (an index by subject, kept current by a watch), [`escalation`] refuses role and
//! binding writes that grant more than their author holds, [`bootstrap`] reconciles the
//! default policy at start and [`aggregation`] fills aggregated ClusterRoles. The four kinds
//! are validated and defaulted in `validation::rbac`.

pub mod aggregation;
pub mod attributes;
pub mod authorizer;
pub mod bootstrap;
pub mod escalation;
pub mod rules;

pub use authorizer::Authorizer;
pub use bootstrap::GROUP;

use crate::apiserver::pki::UserInfo;
use crate::apiserver::status::{ApiError, ApiResult};

/// The group of every authenticated user (kube's `AuthenticatedGroupAdder`).
pub const AUTHENTICATED: &str = "system:authenticated";

/// Who a request acts as: the authenticated user (in `system:authenticated`), or, for the
/// public endpoints only, `system:anonymous` in `system:unauthenticated`; otherwise 401.
pub fn user_of(authenticated: Option<&UserInfo>, public: bool) -> ApiResult<UserInfo> {
    match authenticated {
        Some(u) => {
            let mut user = u.clone();
            if !user.groups.iter().any(|g| g == AUTHENTICATED) {
                user.groups.push(AUTHENTICATED.to_string());
            }
            Ok(user)
        }
        None if public => Ok(UserInfo {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }),
        None => Err(ApiError::unauthorized()),
    }
}
