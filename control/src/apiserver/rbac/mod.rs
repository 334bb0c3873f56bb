//! Authorization by RBAC (`rbac.authorization.k8s.io/v1`), with Kubernetes' semantics:
//! [`attributes`] turns a request into kube's RequestInfo attributes and writes its denials,
//! [`rules`] matches rules against them, [`authorizer`] evaluates the stored roles and
//! bindings (an index by subject, kept current by a watch), [`escalation`] refuses role and
//! binding writes that grant more than their author holds, [`bootstrap`] reconciles the
//! default policy at start (with the controllers' roles of [`controller_policy`]),
//! [`aggregation`] fills aggregated ClusterRoles and [`review`] answers the access reviews of
//! `authorization.k8s.io` (`kubectl auth can-i`). The four kinds
//! are validated and defaulted in `validation::rbac`.

pub mod aggregation;
pub mod attributes;
pub mod authorizer;
pub mod bootstrap;
pub mod controller_policy;
pub mod escalation;
pub mod review;
pub mod rules;

pub use authorizer::Authorizer;
pub use bootstrap::GROUP;
