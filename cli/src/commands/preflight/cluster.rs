//! The checks of a plan with `clusters:`, read from the clusters before anything is created:
//! - each source claim meets the seed's prerequisites (it exists and is Bound, its volume is
//!   usable, it is a file system, the strategy reaches it);
//! - each target claim gets a storage class the target has (the copy's own mapping, fallbacks
//!   named), or exists already and is used as it is;
//! - each namespace's Pod Security level admits the pods mover runs there (transfer pods, holder
//!   pods, node agents, hook Jobs; levels computed from the objects mover builds);
//! - the target namespaces' `ResourceQuotas` have room for the claims mover creates;
//! - each hook Job's service account exists;
//! - the agents are this mover's version (the `--agent-image`, and under the node strategy the
//!   `DaemonSet` of each cluster);
//! - and, as for every plan, CA bundles, local hooks and registries.
//!
//! Agents start only when the plan runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mover_kube::checks::{self, Enforced, Level, NewClaim};
use mover_kube::claims::SourceClaim;
use mover_kube::context::{Access, Cluster};
use mover_kube::objects::Strategy;
use mover_kube::resolver::target_rules;
use mover_kube::target;
use mover_kube::target::StorageClass;
use mover_plan::{ClaimRef, Clusters};

use super::{Checks, check_ca_bundles, check_hooks, check_registries};
use crate::args::KubeArgs;
use crate::plan::{self, HookAction, Location, Plan};

/// The checks of cluster plan `plan`, whose every Bound claim of its namespaces is a volume when
/// it lists none (a claim that is not Bound is a failed check).
pub async fn check_cluster_plan(plan: &Plan, kube: &KubeArgs) -> Checks {
    let mut checks = Checks::default();
    let clusters = plan.clusters.as_ref().expect("a cluster plan");
    let mut plan = plan.clone();
    if clusters.every_claim {
        let mut reached = Reached::new(kube);
        match reached.get(clusters.contexts.source.as_deref()).await {
            Ok(cluster) => {
                for namespace in &plan.namespaces {
                    match mover_kube::claims::claims_in(&cluster, namespace).await {
                        Ok((bound, other)) => {
                            let kept = bound.iter().filter(|n| !clusters.exclude.contains(&format!("{namespace}/{n}")));
                            plan.volumes.extend(kept.map(|name| plan::claim_volume(clusters, namespace, name)));
                            for (name, phase) in other {
                                checks.fail(
                                    format!("claim {namespace}/{name}"),
                                    format!("{phase}, not Bound: left out of the migration"),
                                    "bind it, or list it under `clusters.exclude`",
                                );
                            }
                        }
                        Err(error) => {
                            checks.fail(format!("namespace {namespace}"), error.to_string(), "see the message");
                        }
                    }
                }
            }
            Err(error) => checks.fail("source cluster", error, "see the message"),
        }
    }
    if plan.image_discovery.is_some() {
        check_found_images(&mut plan, kube, &mut checks).await;
    }
    checks.0.extend(check_cluster_volumes(&plan, kube).await.0);
    checks
}

/// Finds the images of the plan's namespaces (the internal registry's exposed host, its trust
/// and a token read from the source cluster) and adds them to `plan`, whose registry checks then
/// pull with the token.
async fn check_found_images(plan: &mut Plan, kube: &KubeArgs, checks: &mut Checks) {
    let Some(clusters) = &plan.clusters else { return };
    let finder = mover_kube::images::KubeImages::new(
        crate::clusters::cluster_access(kube.kubeconfig.as_ref()),
        clusters.contexts.source.clone(),
    );
    let check = "internal registry: exposed, images found, token issued";
    match finder.find_images(plan).await {
        Ok(found) => {
            checks.ok(
                check,
                format!(
                    "`{}`: {} image(s) to copy, {} left out (not in the internal registry)",
                    found.registry.host,
                    found.images.len(),
                    found.skipped.len()
                ),
            );
            plan.add_found_images(&found);
        }
        Err(error) => checks.fail(check, error.to_string(), "see the message"),
    }
}

/// The checks of cluster plan `plan` with its volumes as listed (`mover plan run` runs them
/// after adding every claim of the namespaces).
pub async fn check_cluster_volumes(plan: &Plan, kube: &KubeArgs) -> Checks {
    let clusters = plan.clusters.as_ref().expect("a cluster plan");
    let mut run = ClusterChecks {
        reached: Reached::new(kube),
        strategy: crate::clusters::strategy(kube, Some(clusters)),
        checks: Checks::default(),
        namespaces: BTreeSet::new(),
        target_namespaces: BTreeSet::new(),
        new_claims: BTreeMap::new(),
        classes: HashMap::new(),
    };
    for volume in &plan.volumes {
        if let Location::Kube(claim) = &volume.source
            && let Some(source) = run.check_source(claim).await
            && let Location::Kube(target) = &volume.target
        {
            run.check_target(clusters, &volume.name, &source, target).await;
        }
    }
    run.check_pod_security(&kube.agent_image).await;
    run.check_quotas().await;
    run.check_hook_jobs(plan).await;
    run.check_agents(clusters, kube).await;
    let mut checks = run.checks;
    check_ca_bundles(plan, &mut checks);
    check_hooks(plan, &mut checks);
    check_registries(plan, None, &mut checks).await;
    checks
}

/// Clusters by context, connected once (a failure is kept as its message).
struct Reached {
    access: Access,
    clusters: HashMap<Option<String>, Result<Cluster, String>>,
}

impl Reached {
    fn new(kube: &KubeArgs) -> Self {
        Reached { access: crate::clusters::cluster_access(kube.kubeconfig.as_ref()), clusters: HashMap::new() }
    }

    async fn get(&mut self, context: Option<&str>) -> Result<Cluster, String> {
        let key = context.map(str::to_owned);
        if !self.clusters.contains_key(&key) {
            let connected = mover_kube::context::connect(&self.access, context).await.map_err(|e| e.to_string());
            self.clusters.insert(key.clone(), connected);
        }
        self.clusters[&key].clone()
    }

    /// What `read` reads from the cluster of `context`; a failure to reach it or to read, as its
    /// message.
    async fn read<T>(
        &mut self,
        context: Option<&str>,
        read: impl AsyncFnOnce(&Cluster) -> Result<T, mover_kube::KubeError>,
    ) -> Result<T, String> {
        let cluster = self.get(context).await?;
        read(&cluster).await.map_err(|error| error.to_string())
    }
}

/// `namespace` in context `context`, as checks name it.
fn shown(context: Option<&str>, namespace: &str) -> String {
    format!("namespace `{namespace}` (context `{}`)", context.unwrap_or("current"))
}

/// One run of the cluster checks, and what it gathers on the way.
struct ClusterChecks {
    reached: Reached,
    strategy: Strategy,
    checks: Checks,
    /// The namespaces (by context) where the strategy's pods mount claims.
    namespaces: BTreeSet<(Option<String>, String)>,
    /// The target claims' namespaces, which mover creates when they are missing.
    target_namespaces: BTreeSet<(Option<String>, String)>,
    /// The claims mover will create, by target context and namespace.
    new_claims: BTreeMap<(Option<String>, String), Vec<NewClaim>>,
    /// Each target context's storage classes.
    classes: HashMap<Option<String>, Vec<StorageClass>>,
}

impl ClusterChecks {
    /// The source claim meets the seed's prerequisites under the strategy.
    async fn check_source(&mut self, claim: &ClaimRef) -> Option<SourceClaim> {
        let check = format!("claim {}", claim.display_name());
        let (name, strategy) = (claim.name.as_deref().unwrap_or_default(), self.strategy);
        let find =
            async |cluster: &Cluster| mover_kube::claims::find_source(cluster, &claim.namespace, name, strategy).await;
        match self.reached.read(claim.context.as_deref(), find).await {
            Ok(source) => {
                let volume = source.volume.metadata.name.clone().unwrap_or_default();
                let used = match source.consumers.first() {
                    Some(consumer) => format!("mounted by pod {} on {}", consumer.pod, consumer.node),
                    None => "mounted by no pod".to_owned(),
                };
                self.checks.ok(check, format!("Bound to {volume}, {used}"));
                self.namespaces.insert((claim.context.clone(), claim.namespace.clone()));
                Some(source)
            }
            Err(error) => {
                self.checks.fail(check, error, "see the message");
                None
            }
        }
    }

    /// The target claim exists (used as it is), or the class it will get exists on the target.
    async fn check_target(&mut self, clusters: &Clusters, volume: &str, source: &SourceClaim, target: &ClaimRef) {
        let name = target.name.clone().or_else(|| source.claim.metadata.name.clone()).unwrap_or_default();
        let namespace = &target.namespace;
        let check =
            format!("target claim {namespace}/{name} (context `{}`)", target.context.as_deref().unwrap_or("current"));
        self.namespaces.insert((target.context.clone(), namespace.clone()));
        self.target_namespaces.insert((target.context.clone(), namespace.clone()));
        let context = target.context.as_deref();
        match self.reached.read(context, async |cluster| checks::claim(cluster, namespace, &name).await).await {
            Ok(Some(existing)) => {
                let spec = existing.spec.unwrap_or_default();
                let class = spec.storage_class_name.unwrap_or_else(|| "(none)".to_owned());
                let request = spec.resources.and_then(|r| r.requests).and_then(|r| r.get("storage").cloned());
                let request = request.map_or_else(|| "no size".to_owned(), |q| q.0);
                return self
                    .checks
                    .ok(check, format!("exists (class `{class}`, {request}): used as it is, never resized"));
            }
            Ok(None) => {}
            Err(error) => return self.checks.fail(check, error, "see the message"),
        }
        let key = target.context.clone();
        if !self.classes.contains_key(&key) {
            match self.reached.read(context, async |cluster| target::storage_classes(cluster).await).await {
                Ok(classes) => {
                    self.classes.insert(key.clone(), classes);
                }
                Err(error) => return self.checks.fail(check, error, "see the message"),
            }
        }
        let rules = target_rules(&clusters.storage_class_map, crate::clusters::claim_overrides(clusters).get(volume));
        match target::class_for(source, &self.classes[&key], &rules) {
            Ok(choice) => {
                // Sized as the copy sizes it before it measures the source: its request or capacity.
                let bytes = target::target_bytes(source, None);
                let class = choice.name.as_deref().map_or_else(|| "no class".to_owned(), |c| format!("class `{c}`"));
                let detail = match &choice.warning {
                    Some(warning) => format!("created with {class}, at least {}; {warning}", mebibytes(bytes)),
                    None => format!("created with {class}, at least {}", mebibytes(bytes)),
                };
                self.checks.ok(check, detail);
                let created = NewClaim { class: choice.name, bytes };
                self.new_claims.entry((key, namespace.clone())).or_default().push(created);
            }
            Err(error) => self.checks.fail(
                check,
                error.to_string(),
                "map the source class to one the target has (`clusters.storageClassMap: {SOURCE: TARGET}`, or the \
                 volume's `storageClass`), or create the class on the target",
            ),
        }
    }

    /// Each claim namespace admits the strategy's pods; under the node strategy, the agents'
    /// namespace is checked with the agents (see [`ClusterChecks::check_agents`]).
    async fn check_pod_security(&mut self, image: &str) {
        let needed = checks::claim_pods_level(self.strategy, image);
        let pods = match self.strategy {
            Strategy::Pod => "transfer pods",
            Strategy::Node => "holder pods",
        };
        for (context, namespace) in std::mem::take(&mut self.namespaces) {
            let check = format!("Pod Security of {}", shown(context.as_deref(), &namespace));
            let Some(enforced) = self.enforced(&check, context.as_deref(), &namespace).await else { continue };
            let detail = format!("it {enforced}; {pods} need `{needed}`");
            if enforced.admits(needed) {
                self.checks.ok(check, detail);
            } else {
                let relabel = relabel(&namespace, needed);
                let remedy = match self.strategy {
                    Strategy::Pod => format!(
                        "{relabel}, or use the node strategy (`--strategy node`, or `clusters.strategy: node`), whose \
                         holder pods pass `restricted`"
                    ),
                    Strategy::Node => relabel,
                };
                self.checks.fail(check, detail, remedy);
            }
        }
    }

    /// The level namespace `namespace` of `context` enforces; `None` (a failed check) when it
    /// cannot be read.
    async fn enforced(&mut self, check: &str, context: Option<&str>, namespace: &str) -> Option<Enforced> {
        let read = self.reached.read(context, async |cluster| checks::namespace(cluster, namespace).await).await;
        match read {
            Ok(found) => Some(checks::pod_security::enforced(found.as_ref())),
            Err(error) => {
                self.checks.fail(check, error, "see the message");
                None
            }
        }
    }

    /// The target namespaces' quotas have room for the claims mover creates there.
    async fn check_quotas(&mut self) {
        for ((context, namespace), claims) in std::mem::take(&mut self.new_claims) {
            let check = format!("ResourceQuotas of {}", shown(context.as_deref(), &namespace));
            let quotas =
                self.reached.read(context.as_deref(), async |cluster| checks::quotas(cluster, &namespace).await);
            let quotas = quotas.await;
            let quotas = match quotas {
                Ok(quotas) => quotas,
                Err(error) => {
                    self.checks.fail(check, error, "see the message");
                    continue;
                }
            };
            let total: u64 = claims.iter().map(|claim| claim.bytes).sum();
            let shortfalls = checks::quota_shortfalls(&quotas, &claims);
            if shortfalls.is_empty() {
                let detail = if quotas.is_empty() {
                    "none".to_owned()
                } else {
                    format!(
                        "{} quota(s) with room for {} new claim(s), {}",
                        quotas.len(),
                        claims.len(),
                        mebibytes(total)
                    )
                };
                self.checks.ok(check, detail);
            }
            for shortfall in shortfalls {
                self.checks.fail(
                    format!("ResourceQuota `{namespace}/{}` (context `{}`): {}", shortfall.quota, context.as_deref().unwrap_or("current"), shortfall.resource),
                    format!(
                        "{} hard, {} used; the {} claim(s) mover creates need {}",
                        shortfall.hard,
                        shortfall.used,
                        claims.len(),
                        shortfall.needed
                    ),
                    format!(
                        "raise its `spec.hard` `{}` by at least {} (`kubectl -n {namespace} edit resourcequota {}`), or \
                         free that much in the namespace",
                        shortfall.resource, shortfall.missing, shortfall.quota
                    ),
                );
            }
        }
    }

    /// Each hook Job's execution namespace admits its pod, and its service account exists.
    async fn check_hook_jobs(&mut self, plan: &Plan) {
        let Some(clusters) = plan.clusters.as_ref() else { return };
        for hook in &plan.hooks {
            let Some(job) = &hook.job else { continue };
            let context = clusters.contexts.get(hook.side).as_deref();
            let namespace = &job.namespace;
            let playbook = matches!(hook.action, HookAction::Playbook(_));
            let needed = checks::hook_job_level(playbook, &job.image, job.service_account.as_deref());
            let check = format!("hook `{}`: Pod Security of {}", hook.name, shown(context, namespace));
            let Some(enforced) = self.enforced(&check, context, namespace).await else { continue };
            // A target claim's namespace that is missing is created before the hooks run.
            let created = self.target_namespaces.contains(&(context.map(str::to_owned), namespace.clone()));
            if enforced.source == checks::pod_security::Source::Missing && !created {
                self.checks.fail(
                    check,
                    "the namespace does not exist",
                    format!(
                        "create it (`kubectl create namespace {namespace}`), or fix the hook's `executionNamespace`"
                    ),
                );
                continue;
            }
            let detail = format!("it {enforced}; the hook's Job pod needs `{needed}`");
            if enforced.admits(needed) {
                self.checks.ok(check, detail);
            } else {
                let remedy = format!("{}, or run the hook in another `executionNamespace`", relabel(namespace, needed));
                self.checks.fail(check, detail, remedy);
            }
            let Some(account) = &job.service_account else { continue };
            let check = format!("hook `{}`: service account `{namespace}/{account}`", hook.name);
            let exists = async |cluster: &Cluster| checks::service_account_exists(cluster, namespace, account).await;
            let found = self.reached.read(context, exists).await;
            match found {
                Ok(true) => self.checks.ok(check, format!("exists (context `{}`)", context.unwrap_or("current"))),
                Ok(false) => self.checks.fail(
                    check,
                    format!("does not exist in context `{}`", context.unwrap_or("current")),
                    format!("create it: `kubectl -n {namespace} create serviceaccount {account}`, or name another in the hook's `serviceAccount`"),
                ),
                Err(error) => self.checks.fail(check, error, "see the message"),
            }
        }
    }

    /// The agents are this mover's version: the `--agent-image`; under the node strategy, each
    /// cluster's node agents `DaemonSet` too, and its namespace admits them.
    async fn check_agents(&mut self, clusters: &Clusters, kube: &KubeArgs) {
        check_agent_image("agent image", &kube.agent_image, "--agent-image REPOSITORY", &mut self.checks);
        if self.strategy != Strategy::Node {
            return;
        }
        let namespace = &kube.agents_namespace;
        let contexts: BTreeSet<Option<String>> =
            [&clusters.contexts.source, &clusters.contexts.target].into_iter().cloned().collect();
        let install =
            format!("install them: `mover k8s manifests --strategy node --namespace {namespace} | kubectl apply -f -`");
        for context in contexts {
            let shown_context = context.as_deref().unwrap_or("current").to_owned();
            let check = format!("Pod Security of node agents' {}", shown(context.as_deref(), namespace));
            let Some(enforced) = self.enforced(&check, context.as_deref(), namespace).await else { continue };
            let needed = checks::node_agents_level(&kube.agent_image);
            if enforced.source == checks::pod_security::Source::Missing {
                self.checks.fail(check, "the node agents' namespace does not exist", install.clone());
                continue;
            }
            let detail = format!("it {enforced}; the node agents (hostPath) need `{needed}`");
            if enforced.admits(needed) {
                self.checks.ok(check, detail);
            } else {
                self.checks.fail(check, detail, format!("{}, or use the pod strategy", relabel(namespace, needed)));
            }
            let check = format!("node agents' image (context `{shown_context}`)");
            let read = async |cluster: &Cluster| checks::node_agent_image(cluster, namespace).await;
            let image = self.reached.read(context.as_deref(), read).await;
            match image {
                Ok(Some(image)) => check_agent_image(
                    &check,
                    &image,
                    &format!("--strategy node --namespace {namespace} --image REPOSITORY"),
                    &mut self.checks,
                ),
                Ok(None) => self.checks.fail(
                    check,
                    format!("DaemonSet `{namespace}/{}` is not installed", mover_kube::objects::AGENT_NAME),
                    install.clone(),
                ),
                Err(error) => self.checks.fail(check, error, "see the message"),
            }
        }
    }
}

/// How to let `namespace` admit pods that need `level`.
fn relabel(namespace: &str, level: Level) -> String {
    format!("relabel it: `kubectl label --overwrite namespace {namespace} {}={level}`", checks::ENFORCE_LABEL)
}

fn mebibytes(bytes: u64) -> String {
    mover_kube::quantity::of_bytes(bytes).0
}

/// Agents and `mover` are one version (the seed's first prerequisite): agent image `image`'s tag
/// must be this build's version. An image pinned by digest is left to the handshake, which
/// refuses another protocol. `flag` is how the remedy names the image (`--agent-image
/// REPOSITORY`, for instance): `flag:VERSION`.
fn check_agent_image(check: &str, image: &str, flag: &str, checks: &mut Checks) {
    let version = env!("CARGO_PKG_VERSION");
    let protocol = mover_engine::PROTOCOL_VERSION;
    let name_end = image.rfind('/').map_or(0, |slash| slash + 1);
    let tag = image[name_end..].split_once(':').map(|(_, tag)| tag);
    if image.contains('@') {
        checks.ok(check, format!("{image}: pinned by digest; the handshake checks protocol {protocol}"));
    } else if tag == Some(version) {
        checks.ok(check, format!("{image}: mover {version}, protocol {protocol}, as this mover"));
    } else {
        checks.fail(
            check,
            format!("{image} is not mover {version}, this mover's version (protocol {protocol})"),
            format!("use the agent image of this version: `{flag}:{version}`"),
        );
    }
}
