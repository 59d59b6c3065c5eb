//! Authorization: a deny list settable from tests (`Store::deny`, `POST /_sim/deny`), answered
//! the way a real API server answers: a denied request gets 403 Forbidden with a `Status`
//! body, and `SelfSubjectAccessReview` (`POST /apis/authorization.k8s.io/v1/
//! selfsubjectaccessreviews`, what `kubectl auth can-i` asks) says `allowed: false` for it.
//! Everything not on the list is allowed, as for a cluster-admin.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;

/// The user every request is made as (the kubeconfig's user).
pub const USER: &str = "kube-sim";

/// One denied (verb, group, resource[, namespace]); `*` in a field matches every value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DenyRule {
    pub verb: String,
    /// API group, `""` for the core group.
    pub group: String,
    /// Plural resource name (`pods`).
    pub resource: String,
    /// Only in this namespace; `None`: everywhere (cluster-wide requests included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl DenyRule {
    pub fn new(verb: &str, group: &str, resource: &str) -> DenyRule {
        DenyRule {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: None,
        }
    }

    /// Whether this rule denies the request. A request for every resource of a group (`*`)
    /// is denied when any of its resources is: the identity may not read them all.
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        let field = |rule: &str, asked: &str| rule == "*" || asked == "*" || rule == asked;
        field(&self.verb, a.verb)
            && field(&self.group, a.group)
            && field(&self.resource, a.resource)
            && match (&self.namespace, a.namespace) {
                (None, _) => true,
                (Some(rule), Some(asked)) => rule == asked,
                // A cluster-wide request covers the rule's namespace too.
                (Some(_), None) => true,
            }
    }
}

/// What a request asks to do (the resource attributes of an access review).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    /// `None` (or empty): at the cluster scope.
    pub namespace: Option<&'a str>,
}

pub(crate) fn denied_by<'r>(rules: &'r [DenyRule], a: &Attributes<'_>) -> Option<&'r DenyRule> {
    rules.iter().find(|r| r.matches(a))
}

/// The 403 the real server sends (`pods is forbidden: User "x" cannot watch resource "pods"
/// in API group "" at the cluster scope`).
pub(crate) fn forbidden(a: &Attributes<'_>) -> ApiError {
    let qualified = if a.group.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let scope = match a.namespace {
        Some(ns) if !ns.is_empty() => format!("in the namespace \"{ns}\""),
        _ => "at the cluster scope".to_string(),
    };
    let mut details = json!({"kind": a.resource});
    if !a.group.is_empty() {
        details["group"] = a.group.into();
    }
    ApiError {
        details: Some(details),
        ..ApiError::new(
            403,
            "Forbidden",
            format!(
                "{qualified} is forbidden: User \"{USER}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
                a.verb, a.resource, a.group
            ),
        )
    }
}

/// The answer to a posted SelfSubjectAccessReview: the review with its `status` filled in.
pub(crate) fn review(body: Value, rules: &[DenyRule]) -> Result<Value, ApiError> {
    let spec = body.get("spec").cloned().unwrap_or(Value::Null);
    let invalid = |msg: &str| {
        ApiError::invalid(
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "",
            "spec.resourceAttributes",
            msg,
        )
    };
    let status = if let Some(ra) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let s = |k: &str| ra.get(k).and_then(Value::as_str).unwrap_or("");
        let a = Attributes {
            verb: s("verb"),
            group: s("group"),
            resource: s("resource"),
            namespace: Some(s("namespace")).filter(|n| !n.is_empty()),
        };
        match denied_by(rules, &a) {
            Some(rule) => json!({"allowed": false, "denied": true,
                "reason": format!("kube-sim: denied by the deny list rule {}", serde_json::to_string(rule).unwrap_or_default())}),
            None => json!({"allowed": true,
                "reason": format!("kube-sim: allowed: {USER} may do everything not on the deny list")}),
        }
    } else if spec
        .get("nonResourceAttributes")
        .is_some_and(Value::is_object)
    {
        json!({"allowed": true, "reason": "kube-sim: non-resource requests are allowed"})
    } else {
        return Err(invalid(
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    };
    Ok(json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    }))
}

/// `/apis/authorization.k8s.io/v1`: the review resource, create only.
pub(crate) fn api_resource_list() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "authorization.k8s.io/v1",
        "resources": [{"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview",
            "namespaced": false, "kind": "SelfSubjectAccessReview", "verbs": ["create"]}]})
}

pub(crate) const GROUP: &str = "authorization.k8s.io";

pub(crate) fn api_group() -> Value {
    let v = json!({"groupVersion": "authorization.k8s.io/v1", "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [v.clone()],
        "preferredVersion": v})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs<'a>(verb: &'a str, resource: &'a str, ns: Option<&'a str>) -> Attributes<'a> {
        Attributes {
            verb,
            group: "",
            resource,
            namespace: ns,
        }
    }

    #[test]
    fn rules_match_exactly_or_by_wildcard() {
        let rule = DenyRule::new("watch", "", "pods");
        assert!(rule.matches(&attrs("watch", "pods", None)));
        assert!(rule.matches(&attrs("watch", "pods", Some("a"))));
        assert!(!rule.matches(&attrs("list", "pods", None)));
        assert!(!rule.matches(&attrs("watch", "configmaps", None)));
        assert!(rule.matches(&attrs("watch", "*", None)), "all of the group");
        let all_verbs = DenyRule::new("*", "", "pods");
        assert!(all_verbs.matches(&attrs("get", "pods", None)));
        let in_ns = DenyRule {
            namespace: Some("a".into()),
            ..rule
        };
        assert!(in_ns.matches(&attrs("watch", "pods", Some("a"))));
        assert!(!in_ns.matches(&attrs("watch", "pods", Some("b"))));
        assert!(in_ns.matches(&attrs("watch", "pods", None)));
    }

    #[test]
    fn forbidden_reads_like_the_real_server() {
        let e = forbidden(&attrs("watch", "pods", None));
        assert_eq!(e.code, 403);
        assert_eq!(e.reason, "Forbidden");
        assert_eq!(
            e.message,
            "pods is forbidden: User \"kube-sim\" cannot watch resource \"pods\" in API group \"\" at the cluster scope"
        );
        let e = forbidden(&Attributes {
            verb: "list",
            group: "apps",
            resource: "deployments",
            namespace: Some("x"),
        });
        assert!(e
            .message
            .starts_with("deployments.apps is forbidden: User \"kube-sim\" cannot list"));
        assert!(e.message.ends_with("in the namespace \"x\""));
    }

    #[test]
    fn a_review_answers_allowed_or_denied() {
        let rules = vec![DenyRule::new("watch", "", "pods")];
        let ask = |verb: &str| {
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": {"verb": verb, "resource": "pods"}}})
        };
        let r = review(ask("watch"), &rules).unwrap();
        assert_eq!(r["status"]["allowed"], false);
        assert_eq!(r["status"]["denied"], true);
        assert_eq!(r["spec"]["resourceAttributes"]["verb"], "watch");
        let r = review(ask("list"), &rules).unwrap();
        assert_eq!(r["status"]["allowed"], true);
        assert_eq!(review(json!({"spec": {}}), &rules).unwrap_err().code, 422);
    }
}
