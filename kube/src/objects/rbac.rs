//! Who may do what: one identity each for the coordinator and the node agent, as data (rules)
//! and as objects (service accounts, roles, bindings); and an audit of recorded API requests
//! against those rules, for the tests.
//!
//! - The coordinator (service account `mover`) reads claims, volumes, pods, nodes, storage
//!   classes, namespaces and events; creates claims and missing namespaces; creates and deletes
//!   pods, services, secrets and, on OpenShift, Routes (its transfer agents); reads transfer pods' logs; runs hooks as
//!   Jobs (creates, reads, lists and deletes Jobs, creates and deletes playbook `ConfigMaps`);
//!   keeps a final run's record in a `ConfigMap` (reads, patches, creates and deletes it);
//!   for preflight, lists `ResourceQuotas` and reads service accounts and the node agents'
//!   `DaemonSet`;
//!   quiesces and unquiesces workloads (lists and patches Deployments, `StatefulSets`,
//!   `ReplicaSets`, `DaemonSets`, `CronJobs`, Jobs and `DeploymentConfigs`); on a rollback deletes
//!   the target claims it created, and the target namespaces it created once nothing of anyone
//!   else is in them (lists `ConfigMaps` and service accounts to see that); for the images of a
//!   plan's namespaces, lists `ImageStreams`, reads the registry's default Route and asks for a
//!   token of the service account named `mover-registry` (`TokenRequest`), and of no other.
//! - The node agent (service account `mover-agent`) may read its own identity Secret and
//!   nothing else.
//! - Transfer pods have no API access at all: no service account token is mounted.
//!
//! No rule uses a wildcard verb, resource or group.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::daemonset::{NODE_IDENTITY_SECRET, NODE_SERVICE_ACCOUNT};
use super::labels::MANAGED_BY;
use super::{Install, Strategy};

/// The coordinator's service account (and its `ClusterRole` and binding).
pub const COORDINATOR_SERVICE_ACCOUNT: &str = "mover";

/// The coordinator's rules: `(API group, resources, verbs)`, exactly the requests mover makes
/// (the end-to-end audit in `cli/tests/k8s_plan.rs` fails on a request no rule allows, and on a
/// rule no request uses).
const COORDINATOR_RULES: &[(&str, &[&str], &[&str])] = &[
    // A source claim's volume; a NodePort agent's node address.
    ("", &["persistentvolumes", "nodes"], &["get"]),
    // Why a transfer pod waits (a volume attached elsewhere, an image that cannot be pulled).
    ("", &["events"], &["list"]),
    // A target namespace that is missing is created (never changed; deleted by a rollback of the
    // plan that created it, see below).
    ("", &["namespaces"], &["get", "create"]),
    ("", &["persistentvolumeclaims"], &["get", "list", "create"]),
    ("", &["pods"], &["list", "watch", "create", "delete"]),
    ("", &["services", "secrets"], &["get", "list", "create", "delete"]),
    // `--expose route` on OpenShift: a transfer agent's passthrough Route is created, read until
    // a router admits it, and deleted; cleanup lists the migration's Routes.
    ("route.openshift.io", &["routes"], &["get", "list", "create", "delete"]),
    // The last lines of a transfer pod that ended before it was ready; a hook Job's pod logs.
    ("", &["pods/log"], &["get"]),
    // Hooks as Jobs: a run finds its hook's earlier Job (list), starts one, follows its status
    // (get) and deletes it; a playbook hook's ConfigMap (deleted with its Job, and by name).
    ("batch", &["jobs"], &["get", "list", "create", "delete"]),
    // Playbook ConfigMaps (created, deleted); a final run's record (`run_log`: read, kept by a
    // patch or else created, deleted by a rollback).
    ("", &["configmaps"], &["get", "create", "patch", "delete"]),
    ("storage.k8s.io", &["storageclasses"], &["list"]),
    // Preflight of a cluster plan (`mover preflight`, and `mover plan run` before it starts):
    // the target namespaces' ResourceQuotas have room for the claims mover creates there.
    ("", &["resourcequotas"], &["list"]),
    // Preflight: a hook Job's service account exists in its execution namespace.
    ("", &["serviceaccounts"], &["get"]),
    // Preflight: the node agents' DaemonSet image is this mover's version.
    ("apps", &["daemonsets"], &["get"]),
    // Quiesce and unquiesce (`plan run --final`, `plan rollback`): the workloads that mount a
    // plan's claims are listed and patched (scaled, suspended), never created, updated or deleted.
    ("apps", &["deployments", "statefulsets", "replicasets", "daemonsets"], &["list", "patch"]),
    ("batch", &["cronjobs"], &["list", "patch"]),
    ("batch", &["jobs"], &["patch"]),
    ("apps.openshift.io", &["deploymentconfigs"], &["list", "patch"]),
    // Rollback: the target claims mover created for the plan (labelled and annotated so) go;
    // then each target namespace it created for the plan, once it holds nothing of anyone else
    // (claims, pods, Services, Secrets, ConfigMaps, service accounts, workloads: those not listed
    // above are listed here).
    ("", &["persistentvolumeclaims"], &["delete"]),
    ("", &["namespaces"], &["delete"]),
    ("", &["configmaps", "serviceaccounts"], &["list"]),
    // Images of a plan's namespaces (`images: {fromNamespaces: true}`): OpenShift's ImageStream
    // tags (the internal registry's default Route is read with `get routes` above, the ingress
    // CA's ConfigMap with `get configmaps`; pod templates are listed as quiesce lists them).
    ("image.openshift.io", &["imagestreams"], &["list"]),
];

/// With `--port-forward`: the coordinator reaches agents through the API server. A WebSocket
/// port-forward is a GET (`get`); Kubernetes 1.35 also requires `create`
/// (`AuthorizePodWebsocketUpgradeCreatePermission`), as it always did for SPDY. Not in the
/// default install: it reaches the ports of every pod of the cluster.
const COORDINATOR_PORT_FORWARD_RULE: (&str, &[&str], &[&str]) = ("", &["pods/portforward"], &["get", "create"]);

/// The service account whose short-lived token reads the source's internal registry: the only
/// one the coordinator may ask the TokenRequest API for (a role that could mint a token for any
/// service account could become any of them).
pub const REGISTRY_SERVICE_ACCOUNT: &str = "mover-registry";

/// A rule limited to named objects: `(API group, resources, verbs, names)`.
type NamedRule = (&'static str, &'static [&'static str], &'static [&'static str], &'static [&'static str]);

/// The coordinator's rules limited to named objects.
const COORDINATOR_NAMED_RULES: &[NamedRule] =
    &[("", &["serviceaccounts/token"], &["create"], &[REGISTRY_SERVICE_ACCOUNT])];

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: Option<&[&str]>) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|&item| item.to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: names.map(strings),
        non_resource_urls: None,
    }
}

/// The coordinator's rules, cluster-wide; with `port_forward`, also `pods/portforward`.
#[must_use]
pub fn coordinator_rules(port_forward: bool) -> Vec<PolicyRule> {
    let forward = port_forward.then_some(COORDINATOR_PORT_FORWARD_RULE);
    let plain = COORDINATOR_RULES.iter().copied().chain(forward);
    let plain = plain.map(|(group, resources, verbs)| rule(group, resources, verbs, None));
    let named = COORDINATOR_NAMED_RULES
        .iter()
        .map(|&(group, resources, verbs, names)| rule(group, resources, verbs, Some(names)));
    plain.chain(named).collect()
}

/// The node agent's rules, in the migration namespace: get and watch its identity Secret.
#[must_use]
pub fn node_agent_rules() -> Vec<PolicyRule> {
    vec![rule("", &["secrets"], &["get", "watch"], Some(&[NODE_IDENTITY_SECRET]))]
}

/// The Kubernetes user name of service account `name` in `namespace`.
#[must_use]
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The RBAC objects of an install.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    /// Service accounts, in the migration namespace.
    pub service_accounts: Vec<ServiceAccount>,
    /// Cluster roles.
    pub cluster_roles: Vec<ClusterRole>,
    /// Their bindings.
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    /// Roles, in the migration namespace.
    pub roles: Vec<Role>,
    /// Their bindings.
    pub role_bindings: Vec<RoleBinding>,
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into()),
        ..ObjectMeta::default()
    }
}

fn service_account(name: &str, namespace: &str, token: bool) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(name, Some(namespace)),
        automount_service_account_token: Some(token),
        ..ServiceAccount::default()
    }
}

fn subject(name: &str, namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".to_owned(),
        name: name.to_owned(),
        namespace: Some(namespace.to_owned()),
        api_group: None,
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef { api_group: "rbac.authorization.k8s.io".to_owned(), kind: kind.to_owned(), name: name.to_owned() }
}

/// The RBAC objects of an install: the coordinator's always, the node agent's for the node
/// strategy (transfer pods need none).
#[must_use]
pub fn rbac(install: &Install) -> Rbac {
    let (namespace, strategy) = (install.namespace, install.strategy);
    let coordinator = COORDINATOR_SERVICE_ACCOUNT;
    let mut rbac = Rbac {
        service_accounts: vec![service_account(coordinator, namespace, true)],
        cluster_roles: vec![ClusterRole {
            metadata: meta(coordinator, None),
            rules: Some(coordinator_rules(install.port_forward)),
            aggregation_rule: None,
        }],
        cluster_role_bindings: vec![ClusterRoleBinding {
            metadata: meta(coordinator, None),
            role_ref: role_ref("ClusterRole", coordinator),
            subjects: Some(vec![subject(coordinator, namespace)]),
        }],
        ..Rbac::default()
    };
    if strategy == Strategy::Node {
        let agent = NODE_SERVICE_ACCOUNT;
        rbac.service_accounts.push(service_account(agent, namespace, true));
        rbac.roles.push(Role { metadata: meta(agent, Some(namespace)), rules: Some(node_agent_rules()) });
        rbac.role_bindings.push(RoleBinding {
            metadata: meta(agent, Some(namespace)),
            role_ref: role_ref("Role", agent),
            subjects: Some(vec![subject(agent, namespace)]),
        });
    }
    rbac
}

/// Whether a binding's subjects include `user`.
fn binds(subjects: Option<&Vec<Subject>>, user: &str) -> bool {
    subjects.into_iter().flatten().any(|subject| match subject.kind.as_str() {
        "ServiceAccount" => {
            service_account_user(subject.namespace.as_deref().unwrap_or_default(), &subject.name) == user
        }
        _ => subject.name == user,
    })
}

impl Rbac {
    /// The rules `user` holds through this install's bindings.
    #[must_use]
    pub fn grants_of(&self, user: &str) -> Grants {
        let named = |meta: &ObjectMeta, name: &str| meta.name.as_deref() == Some(name);
        let cluster_role = |name: &str| {
            let role = self.cluster_roles.iter().find(|role| named(&role.metadata, name));
            role.and_then(|role| role.rules.clone()).unwrap_or_default()
        };
        let mut grants = Grants::default();
        for binding in self.cluster_role_bindings.iter().filter(|binding| binds(binding.subjects.as_ref(), user)) {
            grants.cluster.extend(cluster_role(&binding.role_ref.name));
        }
        for binding in self.role_bindings.iter().filter(|binding| binds(binding.subjects.as_ref(), user)) {
            let namespace = binding.metadata.namespace.clone().unwrap_or_default();
            let rules = if binding.role_ref.kind == "ClusterRole" {
                cluster_role(&binding.role_ref.name)
            } else {
                let role = self.roles.iter().find(|role| {
                    named(&role.metadata, &binding.role_ref.name)
                        && role.metadata.namespace.as_ref() == Some(&namespace)
                });
                role.and_then(|role| role.rules.clone()).unwrap_or_default()
            };
            grants.namespaced.push((namespace, rules));
        }
        grants
    }

    /// Every rule of every role, for the wildcard check.
    pub fn all_rules(&self) -> impl Iterator<Item = &PolicyRule> {
        let cluster = self.cluster_roles.iter().flat_map(|role| role.rules.iter().flatten());
        cluster.chain(self.roles.iter().flat_map(|role| role.rules.iter().flatten()))
    }
}

/// One API request, as the simulated API server records it (a JSON line with `user`, `verb`,
/// `apiGroup`, `resource`, `subresource`, `namespace`, `name`, `code`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Who asked.
    #[serde(default)]
    pub user: String,
    /// The RBAC verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// The API group, `""` for the core group.
    #[serde(default, rename = "apiGroup")]
    pub group: String,
    /// The resource, plural: `pods`.
    pub resource: String,
    /// The subresource: `log`, `portforward`, `status`.
    #[serde(default)]
    pub subresource: Option<String>,
    /// The namespace; none for cluster-scoped resources and requests across namespaces.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The object's name, when the request names one.
    #[serde(default)]
    pub name: Option<String>,
}

impl Request {
    /// `resource` or `resource/subresource`, as RBAC rules name it.
    #[must_use]
    pub fn rbac_resource(&self) -> String {
        match self.subresource.as_deref().filter(|sub| !sub.is_empty()) {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }
}

/// The rules one user holds: cluster-wide, and per namespace.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// From cluster roles bound cluster-wide: every namespace and cluster-scoped resources.
    pub cluster: Vec<PolicyRule>,
    /// From bindings in one namespace: only requests in that namespace.
    pub namespaced: Vec<(String, Vec<PolicyRule>)>,
}

fn matches(list: Option<&Vec<String>>, item: &str) -> bool {
    list.is_some_and(|list| list.iter().any(|entry| entry == "*" || entry == item))
}

/// Whether `rule` allows `request`: its group, resource (with subresource) and verb are listed,
/// and when the rule names objects, the request names one of them.
#[must_use]
pub fn rule_allows(rule: &PolicyRule, request: &Request) -> bool {
    matches(rule.api_groups.as_ref(), &request.group)
        && matches(rule.resources.as_ref(), &request.rbac_resource())
        && matches(Some(&rule.verbs), &request.verb)
        && rule
            .resource_names
            .as_ref()
            .is_none_or(|names| names.is_empty() || request.name.as_ref().is_some_and(|name| names.contains(name)))
}

/// Whether the cluster-wide `rules` or the `namespaced` ones (for the request's namespace)
/// allow `request`.
#[must_use]
pub fn allowed(rules: &[PolicyRule], namespaced: &[(String, Vec<PolicyRule>)], request: &Request) -> bool {
    // API discovery (`/api`, `/apis`, `/version`) is granted to every authenticated user by the
    // default `system:discovery` role, not by mover's.
    let discovery = request.resource.is_empty() && request.verb == "get";
    discovery
        || rules.iter().any(|rule| rule_allows(rule, request))
        || namespaced.iter().any(|(namespace, rules)| {
            request.namespace.as_ref() == Some(namespace) && rules.iter().any(|rule| rule_allows(rule, request))
        })
}

/// What no request used: each `verb group/resource` of the rules that no request in
/// `requests` was allowed by (an empty group is the core group, written `core`).
#[must_use]
pub fn unused_rules(
    rules: &[PolicyRule],
    namespaced: &[(String, Vec<PolicyRule>)],
    requests: &[Request],
) -> Vec<String> {
    let scoped = rules.iter().map(|rule| (None, rule));
    let scoped = scoped
        .chain(namespaced.iter().flat_map(|(namespace, rules)| rules.iter().map(move |rule| (Some(namespace), rule))));
    let mut unused = Vec::new();
    for (namespace, rule) in scoped {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    let single = PolicyRule {
                        api_groups: Some(vec![group.clone()]),
                        resources: Some(vec![resource.clone()]),
                        verbs: vec![verb.clone()],
                        ..rule.clone()
                    };
                    let used = requests.iter().any(|request| {
                        namespace.is_none_or(|namespace| request.namespace.as_ref() == Some(namespace))
                            && rule_allows(&single, request)
                    });
                    if !used {
                        let group = if group.is_empty() { "core" } else { group };
                        unused.push(format!("{verb} {group}/{resource}"));
                    }
                }
            }
        }
    }
    unused
}

impl Grants {
    /// [`allowed`] over these grants.
    #[must_use]
    pub fn allows(&self, request: &Request) -> bool {
        allowed(&self.cluster, &self.namespaced, request)
    }

    /// [`unused_rules`] over these grants.
    #[must_use]
    pub fn unused(&self, requests: &[Request]) -> Vec<String> {
        unused_rules(&self.cluster, &self.namespaced, requests)
    }
}

/// Whether `rule` uses a wildcard (`*`) verb, resource, group or resource name.
#[must_use]
pub fn has_wildcard(rule: &PolicyRule) -> bool {
    let wild = |list: Option<&Vec<String>>| list.is_some_and(|list| list.iter().any(|item| item.contains('*')));
    wild(Some(&rule.verbs))
        || wild(rule.resources.as_ref())
        || wild(rule.api_groups.as_ref())
        || wild(rule.resource_names.as_ref())
}
