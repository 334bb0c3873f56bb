//! Pure rule matching, as kube's `rbac.RuleAllows` and the escalation check's `Covers` do it:
//! which request a `PolicyRule` allows, and whether one set of rules covers another.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::PolicyRule;

/// `*`: any verb, API group, resource or non-resource URL.
pub const ALL: &str = "*";

/// What a request asks for, as kube's `authorizer.Attributes` (the user aside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Resource {
        verb: String,
        group: String,
        resource: String,
        /// Empty when the request is not to a subresource.
        subresource: String,
        /// Empty for collections.
        name: String,
        /// Empty for cluster-scoped requests.
        namespace: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Request {
    pub fn verb(&self) -> &str {
        match self {
            Request::Resource { verb, .. } | Request::NonResource { verb, .. } => verb,
        }
    }

    /// The namespace whose RoleBindings apply ("" for cluster-scoped and non-resource requests).
    pub fn namespace(&self) -> &str {
        match self {
            Request::Resource { namespace, .. } => namespace,
            Request::NonResource { .. } => "",
        }
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == want)
}

fn opt(list: &Option<Vec<String>>) -> &[String] {
    list.as_deref().unwrap_or(&[])
}

fn matches_or_all(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == ALL || v == want)
}

/// kube's `ResourceMatches`: `*`, the exact `resource[/subresource]`, or `*/subresource`.
fn resource_matches(rule: &[String], combined: &str, subresource: &str) -> bool {
    rule.iter().any(|r| {
        r == ALL
            || r == combined
            || (!subresource.is_empty()
                && r.len() == subresource.len() + 2
                && r.starts_with("*/")
                && r.ends_with(subresource))
    })
}

/// A non-resource URL rule: exact, `*`, or a prefix ending in `*`.
fn url_covers(rule: &str, path: &str) -> bool {
    rule == ALL
        || rule == path
        || (rule.ends_with('*') && path.starts_with(rule.trim_end_matches('*')))
}

/// Whether `rule` allows `request` (kube's `RuleAllows`).
pub fn allows(rule: &PolicyRule, request: &Request) -> bool {
    if !matches_or_all(&rule.verbs, request.verb()) {
        return false;
    }
    match request {
        Request::Resource {
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let combined;
            let wanted = if subresource.is_empty() {
                resource.as_str()
            } else {
                combined = format!("{resource}/{subresource}");
                combined.as_str()
            };
            let names = opt(&rule.resource_names);
            matches_or_all(opt(&rule.api_groups), group)
                && resource_matches(opt(&rule.resources), wanted, subresource)
                && (names.is_empty() || has(names, name))
        }
        Request::NonResource { path, .. } => opt(&rule.non_resource_urls)
            .iter()
            .any(|u| url_covers(u, path)),
    }
}

/// Split a rule into rules of one verb, one group, one resource and at most one name (or one
/// verb and one URL), kube's `BreakdownRule`.
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |v: &str| Some(vec![v.to_string()]);
    let mut out = Vec::new();
    for group in opt(&rule.api_groups) {
        for resource in opt(&rule.resources) {
            for verb in &rule.verbs {
                let base = PolicyRule {
                    api_groups: one(group),
                    resources: one(resource),
                    verbs: vec![verb.clone()],
                    ..Default::default()
                };
                let names = opt(&rule.resource_names);
                for name in names {
                    out.push(PolicyRule {
                        resource_names: one(name),
                        ..base.clone()
                    });
                }
                if names.is_empty() {
                    out.push(base);
                }
            }
        }
    }
    for url in opt(&rule.non_resource_urls) {
        for verb in &rule.verbs {
            out.push(PolicyRule {
                non_resource_urls: one(url),
                verbs: vec![verb.clone()],
                ..Default::default()
            });
        }
    }
    out
}

fn has_all(set: &[String], wanted: &[String]) -> bool {
    wanted.iter().all(|w| has(set, w))
}

/// kube's `resourceCoversAll`: `*`, exact matches, or `*/subresource` for subresources.
fn resources_cover(owner: &[String], wanted: &[String]) -> bool {
    if has(owner, ALL) {
        return true;
    }
    wanted.iter().all(|path| {
        has(owner, path)
            || path
                .split_once('/')
                .is_some_and(|(_, sub)| has(owner, &format!("*/{sub}")))
    })
}

/// kube's `ruleCovers`: whether `owner` grants everything `sub` does.
fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let verbs = has(&owner.verbs, ALL) || has_all(&owner.verbs, &sub.verbs);
    let groups =
        has(opt(&owner.api_groups), ALL) || has_all(opt(&owner.api_groups), opt(&sub.api_groups));
    let resources = resources_cover(opt(&owner.resources), opt(&sub.resources));
    let urls = opt(&sub.non_resource_urls).iter().all(|want| {
        opt(&owner.non_resource_urls)
            .iter()
            .any(|u| url_covers(u, want))
    });
    let owner_names = opt(&owner.resource_names);
    let names = owner_names.is_empty()
        || (!opt(&sub.resource_names).is_empty() && has_all(owner_names, opt(&sub.resource_names)));
    verbs && groups && resources && names && urls
}

/// The parts of `wanted` that no rule of `owner` grants (empty when `owner` covers it all), as
/// single-verb rules (kube's `Covers`).
pub fn uncovered(owner: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    wanted
        .iter()
        .flat_map(breakdown)
        .filter(|atom| !owner.iter().any(|o| rule_covers(o, atom)))
        .collect()
}

/// Merge single-resource rules that differ only in their verbs (kube's `CompactRules`), so
/// an escalation message lists `{APIGroups:[""], Resources:["services"], Verbs:["get" "list"]}`.
pub fn compact(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    let mut simple: BTreeMap<(String, String), PolicyRule> = BTreeMap::new();
    let mut out = Vec::new();
    for rule in rules {
        let groups = opt(&rule.api_groups);
        let resources = opt(&rule.resources);
        let is_simple = groups.len() == 1
            && resources.len() == 1
            && opt(&rule.resource_names).is_empty()
            && opt(&rule.non_resource_urls).is_empty();
        if !is_simple {
            out.push(rule);
            continue;
        }
        let key = (groups[0].clone(), resources[0].clone());
        match simple.get_mut(&key) {
            Some(existing) => {
                for v in rule.verbs {
                    if !has(&existing.verbs, &v) {
                        existing.verbs.push(v);
                    }
                }
            }
            None => {
                simple.insert(key, rule);
            }
        }
    }
    out.extend(simple.into_values());
    out
}

/// Go's `%q` of a string slice: `["a" "b"]`.
pub fn go_quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(" "))
}

/// kube's `CompactString`: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
pub fn compact_string(rule: &PolicyRule) -> String {
    let mut parts = Vec::new();
    let fields: [(&str, &[String]); 5] = [
        ("APIGroups", opt(&rule.api_groups)),
        ("Resources", opt(&rule.resources)),
        ("NonResourceURLs", opt(&rule.non_resource_urls)),
        ("ResourceNames", opt(&rule.resource_names)),
        ("Verbs", &rule.verbs),
    ];
    for (label, values) in fields {
        if !values.is_empty() {
            parts.push(format!("{label}:{}", go_quoted(values)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        PolicyRule {
            verbs: v(verbs),
            api_groups: Some(v(groups)),
            resources: Some(v(resources)),
            ..Default::default()
        }
    }

    fn res(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Request {
        Request::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: "foo".into(),
        }
    }

    #[test]
    fn verbs_groups_and_resources_match_exactly_or_by_wildcard() {
        let r = rule(&["get", "list"], &[""], &["services"]);
        assert!(allows(&r, &res("list", "", "services", "", "")));
        assert!(!allows(&r, &res("watch", "", "services", "", "")));
        assert!(!allows(&r, &res("list", "apps", "services", "", "")));
        assert!(!allows(&r, &res("list", "", "pods", "", "")));
        let all = rule(&["*"], &["*"], &["*"]);
        assert!(allows(
            &all,
            &res("delete", "apps", "deployments", "scale", "x")
        ));
    }

    #[test]
    fn subresources_need_their_own_entry() {
        let pods = rule(&["get"], &[""], &["pods"]);
        assert!(!allows(&pods, &res("get", "", "pods", "log", "p")));
        let log = rule(&["get"], &[""], &["pods/log"]);
        assert!(allows(&log, &res("get", "", "pods", "log", "p")));
        assert!(!allows(&log, &res("get", "", "pods", "", "p")));
        let any_status = rule(&["get"], &[""], &["*/status"]);
        assert!(allows(&any_status, &res("get", "", "pods", "status", "p")));
        assert!(!allows(&any_status, &res("get", "", "pods", "log", "p")));
    }

    #[test]
    fn resource_names_limit_to_named_objects() {
        let mut r = rule(&["get"], &[""], &["configmaps"]);
        r.resource_names = Some(v(&["a"]));
        assert!(allows(&r, &res("get", "", "configmaps", "", "a")));
        assert!(!allows(&r, &res("get", "", "configmaps", "", "b")));
        assert!(!allows(&r, &res("get", "", "configmaps", "", "")));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let r = PolicyRule {
            verbs: v(&["get"]),
            non_resource_urls: Some(v(&["/apis/*", "/version"])),
            ..Default::default()
        };
        let get = |p: &str| Request::NonResource {
            verb: "get".into(),
            path: p.into(),
        };
        assert!(allows(&r, &get("/version")));
        assert!(allows(&r, &get("/apis/apps/v1")));
        assert!(!allows(&r, &get("/apis")));
        assert!(!allows(&r, &get("/healthz")));
        assert!(!allows(&rule(&["*"], &["*"], &["*"]), &get("/version")));
    }

    #[test]
    fn uncovered_lists_what_the_owner_lacks_and_compacts_it() {
        let owner = vec![rule(&["get"], &[""], &["services"])];
        let wanted = vec![rule(&["get", "list", "watch"], &[""], &["services"])];
        let missing = compact(uncovered(&owner, &wanted));
        assert_eq!(missing.len(), 1);
        assert_eq!(
            compact_string(&missing[0]),
            r#"{APIGroups:[""], Resources:["services"], Verbs:["list" "watch"]}"#
        );
        assert!(uncovered(&[rule(&["*"], &["*"], &["*"])], &wanted).is_empty());
        // A rule limited to names does not cover one for every object.
        let mut named = rule(&["get"], &[""], &["services"]);
        named.resource_names = Some(v(&["a"]));
        assert_eq!(
            uncovered(&[named.clone()], &[rule(&["get"], &[""], &["services"])]).len(),
            1
        );
        assert!(uncovered(&[rule(&["get"], &[""], &["services"])], &[named]).is_empty());
        let subs = vec![rule(&["get"], &[""], &["*/status"])];
        assert!(uncovered(&subs, &[rule(&["get"], &[""], &["pods/status"])]).is_empty());
    }
}
