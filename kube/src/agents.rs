//! Transfer agents: one pod per claim and end, running `mover-agent serve` granted exactly that
//! claim, exposed by a Service, with the migration's identity from a Secret in the claim's
//! namespace. Everything made here carries the migration's labels, and [`TransferAgents::cleanup`]
//! removes it (on success, on failure and on Ctrl-C; `mover k8s cleanup` for leftovers).
//!
//! While a pod is not ready its state is reported as it changes, with the reason a user can act
//! on (unschedulable, an image that cannot be pulled, a volume attached elsewhere), not only when
//! the wait times out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use mover_plan::Location;

use crate::context::Cluster;
use crate::error::KubeError;
use crate::forward::PortForward;
use crate::objects::route::{Admission, ROUTE_GROUP, Route, transfer_route};
use crate::objects::transfer::{End, Exposure, TransferPod, transfer_pod, transfer_pod_name, transfer_service};
use crate::objects::{Migration, identity_secret, identity_secret_name};

/// The agent identity the transfer pods get: PEM bytes of the migration CA's certificate and the
/// agents' certificate and key. The CA's key and the coordinator's key never leave the
/// coordinator's machine.
#[derive(Clone)]
pub struct AgentPem {
    /// `ca.crt`.
    pub ca: Vec<u8>,
    /// `agent.crt`.
    pub cert: Vec<u8>,
    /// `agent.key`.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for AgentPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentPem { .. }")
    }
}

/// How transfer agents are run and reached.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The agent image.
    pub image: String,
    /// The port agents listen on.
    pub port: u16,
    /// How their Services expose them.
    pub exposure: Exposure,
    /// With [`Exposure::Route`]: where each cluster's router is dialled (`IP[:PORT]`, by
    /// kubeconfig context), when the Routes' hosts do not resolve to it from here (curl's
    /// `--resolve`); `""` for every cluster not listed. Else a Route's agent is dialled at
    /// `ROUTE_HOST:443`.
    pub routers: std::collections::BTreeMap<String, String>,
    /// How long a pod may take to be ready, and a Service to get an address.
    pub ready_timeout: Duration,
    /// The coordinator reaches agents through API-server port-forwards ([`PortForward`]), not
    /// at their exposed addresses (which the agents still use between them).
    pub port_forward: bool,
}

/// A running transfer agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEnd {
    /// `HOST:PORT` the other agent dials, and the coordinator unless `via` is given.
    pub addr: String,
    /// `127.0.0.1:PORT` of the port-forward the coordinator dials instead, if any.
    pub via: Option<String>,
    /// The volume the agent serves (the claim's name).
    pub volume: String,
    /// The pod's name.
    pub pod: String,
}

impl AgentEnd {
    /// The agent's volume as a plan end.
    #[must_use]
    pub fn location(&self) -> Location {
        Location::Agent { addr: self.addr.clone(), volume: self.volume.clone(), via: self.via.clone() }
    }
}

/// The transfer agents of one migration, and where they were made (for cleanup).
pub struct TransferAgents {
    migration: Migration,
    identity: AgentPem,
    settings: AgentSettings,
    /// (context, namespace) pairs where objects were made, with their clusters.
    touched: Touched,
    /// The coordinator's port-forwards to the agents, closed at cleanup.
    forwards: Mutex<Vec<PortForward>>,
}

impl TransferAgents {
    /// Agents of `migration`, with `identity`.
    #[must_use]
    pub fn new(migration: Migration, identity: AgentPem, settings: AgentSettings) -> Self {
        TransferAgents { migration, identity, settings, touched: Touched::default(), forwards: Mutex::default() }
    }

    /// The migration.
    #[must_use]
    pub fn migration(&self) -> &Migration {
        &self.migration
    }

    /// Starts the agent of `claim` in `namespace` at `end` (pinned to `node` if given) and waits
    /// until it is ready and reachable. `on_state` sees each state of the wait, as it changes.
    pub async fn start(
        &self,
        cluster: &Cluster,
        (namespace, claim): (&str, &str),
        end: End,
        node: Option<&str>,
        on_state: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<AgentEnd, KubeError> {
        self.touched.add(cluster, namespace);
        let owner = self.ensure_identity(cluster, namespace).await?;
        let secret = identity_secret_name(&self.migration);
        let spec = TransferPod {
            migration: &self.migration,
            namespace,
            claim,
            end,
            node,
            image: &self.settings.image,
            identity_secret: &secret,
            port: self.settings.port,
            owner: Some(owner),
        };
        let name = transfer_pod_name(&self.migration, end, claim);
        let context = &cluster.context;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        let services: Api<Service> = Api::namespaced(cluster.client.clone(), namespace);
        // The Route first: a cluster without OpenShift's Routes is refused before a pod starts.
        if self.settings.exposure == Exposure::Route {
            create_route(cluster, &transfer_route(&spec)).await?;
        }
        create_or_reuse(&pods, &transfer_pod(&spec), context, &format!("transfer pod `{namespace}/{name}`")).await?;
        create_or_reuse(
            &services,
            &transfer_service(&spec, self.settings.exposure),
            context,
            &format!("Service `{namespace}/{name}`"),
        )
        .await?;
        let deadline = Instant::now() + self.settings.ready_timeout;
        let pod = wait_ready(cluster, namespace, &name, deadline, on_state).await?;
        let addr = if self.settings.exposure == Exposure::Route {
            let host = wait_admitted(cluster, (namespace, &name), deadline, on_state).await?;
            let router = self.settings.routers.get(context).or_else(|| self.settings.routers.get(""));
            route_address(&host, router.map(String::as_str))
        } else {
            let node = pod.spec.and_then(|s| s.node_name);
            let exposure = self.settings.exposure;
            let host = wait_address(cluster, (namespace, &name), node.as_deref(), exposure, deadline, on_state).await?;
            join_host_port(&host, service_port(&services, &name, exposure, context).await?)
        };
        let via = if self.settings.port_forward {
            let forward = PortForward::start(cluster, (namespace, &name), self.settings.port).await?;
            let via = forward.addr();
            on_state(&format!("reached through a port-forward at {via}"));
            self.forwards.lock().expect("not poisoned").push(forward);
            Some(via)
        } else {
            None
        };
        Ok(AgentEnd { addr, via, volume: claim.to_owned(), pod: name })
    }

    /// The identity Secret in `namespace`, created if missing; its owner reference.
    async fn ensure_identity(&self, cluster: &Cluster, namespace: &str) -> Result<OwnerReference, KubeError> {
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
        let name = identity_secret_name(&self.migration);
        let wanted =
            identity_secret(&self.migration, namespace, &self.identity.ca, &self.identity.cert, &self.identity.key);
        let doing = format!("creating the identity Secret `{namespace}/{name}`");
        let secret = match secrets.create(&PostParams::default(), &wanted).await {
            Ok(secret) => secret,
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = secrets.get(&name).await.map_err(KubeError::api(&cluster.context, &doing))?;
                if existing.data != wanted.data {
                    return Err(KubeError::Config(format!(
                        "Secret `{namespace}/{name}` (context `{}`) holds another identity for migration `{}`: a leftover \
                         of an earlier run with other certificates; `mover k8s cleanup` removes it",
                        cluster.context, self.migration.id
                    )));
                }
                existing
            }
            Err(error) => return Err(KubeError::api(&cluster.context, doing)(error)),
        };
        // An owner for garbage collection, not a controller.
        Ok(OwnerReference {
            api_version: "v1".into(),
            kind: "Secret".into(),
            name,
            uid: secret.metadata.uid.unwrap_or_default(),
            ..OwnerReference::default()
        })
    }

    /// Deletes every pod, Service and Secret of the migration where agents were started, and
    /// waits until the pods are gone. Returns what could not be removed.
    pub async fn cleanup(&self) -> Vec<KubeError> {
        self.forwards.lock().expect("not poisoned").clear();
        self.touched.remove_all(&self.migration).await
    }
}

/// The (cluster, namespace) pairs where a migration's agents made objects, for cleanup.
#[derive(Default)]
pub(crate) struct Touched(Mutex<Vec<(Cluster, String)>>);

impl Touched {
    /// Notes `namespace` of `cluster`, once.
    pub(crate) fn add(&self, cluster: &Cluster, namespace: &str) {
        let mut touched = self.0.lock().expect("not poisoned");
        if !touched.iter().any(|(c, n)| c.context == cluster.context && n == namespace) {
            touched.push((cluster.clone(), namespace.to_owned()));
        }
    }

    /// Removes what `migration`'s agents made where they made it: its objects but the hooks'
    /// Jobs and pods (a failed hook's stay for `kubectl logs`). Returns what could not be removed.
    pub(crate) async fn remove_all(&self, migration: &Migration) -> Vec<KubeError> {
        let touched = self.0.lock().expect("not poisoned").clone();
        let selector = format!("{},!{}", migration.selector(), crate::objects::hook_job::HOOK_LABEL);
        let mut errors = Vec::new();
        for (cluster, namespace) in touched {
            if let Err(error) = remove(&cluster, Some(&namespace), &selector, None).await {
                errors.push(error);
            }
        }
        errors
    }
}

/// Deletes the hook Jobs, pods, Services, Routes and Secrets matching `selector` in `namespace` (every namespace
/// when `None`), only those of plan `plan` when given (their `mover.io/plan` annotation), and
/// waits until no such pod is left. Returns how many objects it deleted.
pub async fn remove(
    cluster: &Cluster,
    namespace: Option<&str>,
    selector: &str,
    plan: Option<&str>,
) -> Result<usize, KubeError> {
    let of_plan = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        plan.is_none_or(|plan| {
            meta.annotations.as_ref().and_then(|a| a.get(crate::objects::labels::PLAN_ANNOTATION)).map(String::as_str)
                == Some(plan)
        })
    };
    let client = &cluster.client;
    let list = ListParams::default().labels(selector);
    let mut removed = 0;
    let where_ = namespace.map_or_else(|| "every namespace".to_owned(), |n| format!("namespace `{n}`"));
    macro_rules! delete_all {
        ($kind:ty, $what:literal) => {{
            let all: Api<$kind> = match namespace {
                Some(namespace) => Api::namespaced(client.clone(), namespace),
                None => Api::all(client.clone()),
            };
            let doing = format!("deleting mover's {} ({selector}) in {where_}", $what);
            // A kind the cluster does not serve (Routes outside OpenShift) holds nothing of ours.
            let found = match all.list(&list).await {
                Ok(found) => found.items,
                Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
                Err(error) => return Err(KubeError::api(&cluster.context, &doing)(error)),
            };
            for object in found.into_iter().filter(|o| of_plan(&o.metadata)) {
                let (Some(name), Some(ns)) = (object.metadata.name.clone(), object.metadata.namespace.clone()) else {
                    continue;
                };
                let one: Api<$kind> = Api::namespaced(client.clone(), &ns);
                match one.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => removed += 1,
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => return Err(KubeError::api(&cluster.context, &doing)(error)),
                }
            }
        }};
    }
    // Hook Jobs first, or their controller would replace the pods deleted below; their pods
    // are theirs (background propagation; a Job's own default orphans), their playbook
    // ConfigMaps go by name.
    {
        let jobs: Api<Job> = match namespace {
            Some(namespace) => Api::namespaced(client.clone(), namespace),
            None => Api::all(client.clone()),
        };
        let doing = format!("deleting mover's hook Jobs ({selector}) in {where_}");
        let found = jobs.list(&list).await.map_err(KubeError::api(&cluster.context, &doing))?;
        for job in found.items.into_iter().filter(|o| of_plan(&o.metadata)) {
            let playbook = crate::objects::hook_job::has_playbook_config_map(&job);
            let (Some(name), Some(ns)) = (job.metadata.name, job.metadata.namespace) else { continue };
            if crate::hooks::delete_job_objects(cluster, &ns, &name, playbook).await? {
                removed += 1;
            }
        }
    }
    delete_all!(Pod, "pods");
    delete_all!(Service, "Services");
    delete_all!(Route, "Routes");
    delete_all!(Secret, "Secrets");
    let pods: Api<Pod> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = pods
            .list(&list)
            .await
            .map_err(KubeError::api(&cluster.context, format!("listing mover's pods in {where_}")))?;
        let left: Vec<Pod> = left.items.into_iter().filter(|p| of_plan(&p.metadata)).collect();
        if left.is_empty() {
            return Ok(removed);
        }
        if Instant::now() > deadline {
            let names: Vec<String> = left.iter().filter_map(|p| p.metadata.name.clone()).collect();
            return Err(KubeError::Timeout(format!(
                "mover's pods {} (context `{}`) were deleted but are still there after a minute",
                names.join(", "),
                cluster.context
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates `object`; one of the same name left by an earlier run of this migration is reused.
pub(crate) async fn create_or_reuse<K>(api: &Api<K>, object: &K, context: &str, what: &str) -> Result<(), KubeError>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(KubeError::api(context, format!("creating {what}"))(error)),
    }
}

/// What a pod's status says about why it is not ready, in a user's words.
#[must_use]
pub fn pod_state(pod: &Pod) -> String {
    let Some(status) = &pod.status else { return "Pending".to_owned() };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let unscheduled = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(condition) = unscheduled {
        return format!(
            "{phase}: {} ({})",
            condition.reason.as_deref().unwrap_or("not scheduled"),
            condition.message.as_deref().unwrap_or("")
        );
    }
    let waiting = status.container_statuses.iter().flatten().find_map(|c| c.state.as_ref()?.waiting.as_ref());
    if let Some(waiting) = waiting {
        let reason = waiting.reason.as_deref().unwrap_or("waiting");
        return match waiting.message.as_deref() {
            Some(message) if !message.is_empty() => format!("{phase}: {reason} ({message})"),
            _ => format!("{phase}: {reason}"),
        };
    }
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    if phase == "Running" && !ready { "Running, not ready yet".to_owned() } else { phase.to_owned() }
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watches pod `name` until it is ready, reporting each new state (with the newest Warning
/// event, which says what a kubelet cannot do: attach a volume, pull an image); returns it.
pub(crate) async fn wait_ready(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    deadline: Instant,
    on_state: &(dyn Fn(&str) + Send + Sync),
) -> Result<Pod, KubeError> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(pods, config).default_backoff().applied_objects().boxed();
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            next = stream.try_next() => {
                let pod = match next {
                    Ok(Some(pod)) => pod,
                    Ok(None) => continue,
                    Err(error) => {
                        // The backoff retries; say so rather than fail.
                        report(&mut last, &format!("watching pod `{namespace}/{name}` failed ({error}); retrying"), on_state);
                        continue;
                    }
                };
                if is_ready(&pod) {
                    return Ok(pod);
                }
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
                if matches!(phase, "Failed" | "Succeeded") {
                    let logs = tail_log(cluster, namespace, name).await;
                    return Err(KubeError::Config(format!(
                        "pod `{namespace}/{name}` (context `{}`) ended ({}) before it was ready{logs}",
                        cluster.context,
                        pod_state(&pod)
                    )));
                }
                report(&mut last, &format!("pod `{namespace}/{name}`: {}", pod_state(&pod)), on_state);
            }
            _ = tick.tick() => {
                if let Some(warning) = newest_warning(cluster, namespace, name).await {
                    report(&mut last, &format!("pod `{namespace}/{name}`: {warning}"), on_state);
                }
            }
            () = tokio::time::sleep(remaining) => {
                let shown = if last.is_empty() { "no state was reported".to_owned() } else { last };
                return Err(KubeError::Timeout(format!(
                    "pod `{namespace}/{name}` (context `{}`) was not ready in time; last: {shown}. \
                     `kubectl -n {namespace} describe pod {name}` shows more",
                    cluster.context
                )));
            }
        }
    }
}

fn report(last: &mut String, state: &str, on_state: &(dyn Fn(&str) + Send + Sync)) {
    if *last != state {
        state.clone_into(last);
        on_state(state);
    }
}

/// The newest Warning event about pod `name` (`FailedAttachVolume: Multi-Attach error …`).
async fn newest_warning(cluster: &Cluster, namespace: &str, name: &str) -> Option<String> {
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), namespace);
    let params = ListParams::default().fields(&format!("involvedObject.name={name},type=Warning"));
    let list = events.list(&params).await.ok()?;
    let newest = list.items.into_iter().max_by_key(|e| e.last_timestamp.clone().map(|t| t.0))?;
    Some(format!("{}: {}", newest.reason.unwrap_or_default(), newest.message.unwrap_or_default()))
}

/// The last lines of the pod's log, as a suffix for an error.
async fn tail_log(cluster: &Cluster, namespace: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let params = kube::api::LogParams { tail_lines: Some(20), ..kube::api::LogParams::default() };
    match pods.logs(name, &params).await {
        Ok(log) if !log.trim().is_empty() => format!("; its last log lines:\n{}", log.trim_end()),
        _ => String::new(),
    }
}

/// Waits until Service `name` has an address of its kind (for a NodePort, an address of `node`,
/// where its pod runs); returns the host to dial.
async fn wait_address(
    cluster: &Cluster,
    (namespace, name): (&str, &str),
    node: Option<&str>,
    exposure: Exposure,
    deadline: Instant,
    on_state: &(dyn Fn(&str) + Send + Sync),
) -> Result<String, KubeError> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), namespace);
    let doing = format!("reading Service `{namespace}/{name}`");
    let mut last = String::new();
    loop {
        let service = services.get(name).await.map_err(KubeError::api(&cluster.context, &doing))?;
        let host = match exposure {
            Exposure::LoadBalancer => service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .and_then(|ingress| ingress.first())
                .and_then(|first| first.ip.clone().or_else(|| first.hostname.clone())),
            // (A Route's agent is dialled at its router, not here.)
            Exposure::ClusterIp | Exposure::Route => {
                service.spec.as_ref().and_then(|s| s.cluster_ip.clone()).filter(|ip| ip != "None")
            }
            Exposure::NodePort => match node {
                Some(node) => node_address(cluster, node).await?,
                None => None,
            },
        };
        if let Some(host) = host {
            return Ok(host);
        }
        if Instant::now() > deadline {
            return Err(KubeError::Timeout(format!(
                "Service `{namespace}/{name}` (context `{}`) got no {} address in time; does the cluster provide that \
                 kind of Service? A plan chooses another with `exposure:`",
                cluster.context,
                exposure.service_type()
            )));
        }
        report(
            &mut last,
            &format!("Service `{namespace}/{name}`: waiting for its {} address", exposure.service_type()),
            on_state,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Creates a transfer agent's Route (one left by an earlier run is reused); a cluster that does
/// not serve Routes is a clear error.
async fn create_route(cluster: &Cluster, route: &Route) -> Result<(), KubeError> {
    let namespace = route.metadata.namespace.as_deref().unwrap_or_default();
    let name = route.metadata.name.as_deref().unwrap_or_default();
    let routes: Api<Route> = Api::namespaced(cluster.client.clone(), namespace);
    match routes.create(&PostParams::default(), route).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(KubeError::Config(format!(
            "context `{}` does not serve OpenShift Routes ({ROUTE_GROUP}/v1), so its agents cannot be exposed by a \
             Route; expose them with a Service instead: a LoadBalancer (between clusters), a NodePort, or a \
             ClusterIP (both ends in one cluster)",
            cluster.context
        ))),
        Err(error) => Err(KubeError::api(&cluster.context, format!("creating Route `{namespace}/{name}`"))(error)),
    }
}

/// Waits until a router admitted Route `name`; returns the host it serves it under. A Route a
/// router refused (its host claimed by an older Route) is an error with the router's reason.
async fn wait_admitted(
    cluster: &Cluster,
    (namespace, name): (&str, &str),
    deadline: Instant,
    on_state: &(dyn Fn(&str) + Send + Sync),
) -> Result<String, KubeError> {
    let routes: Api<Route> = Api::namespaced(cluster.client.clone(), namespace);
    let doing = format!("reading Route `{namespace}/{name}`");
    let mut last = String::new();
    loop {
        let route = routes.get(name).await.map_err(KubeError::api(&cluster.context, &doing))?;
        match route.admission() {
            Admission::Admitted(host) => return Ok(host),
            Admission::Rejected(why) => {
                return Err(KubeError::Config(format!(
                    "the router of context `{}` did not admit Route `{namespace}/{name}`: {why}",
                    cluster.context
                )));
            }
            Admission::Pending => {}
        }
        if Instant::now() > deadline {
            return Err(KubeError::Timeout(format!(
                "no router of context `{}` admitted Route `{namespace}/{name}` in time; \
                 `oc -n {namespace} describe route {name}` shows its status",
                cluster.context
            )));
        }
        report(&mut last, &format!("Route `{namespace}/{name}`: waiting for the router to admit it"), on_state);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Where a Route's agent is dialled: the router (at `router`, `IP[:PORT]`, when given; else at
/// the route's host, port 443), with the route's host as the TLS server name
/// (`HOST@ROUTER:PORT`, see `mover_engine::tunnel::split_server_name`).
#[must_use]
pub fn route_address(host: &str, router: Option<&str>) -> String {
    let router = match router {
        Some(router) if router.parse::<std::net::SocketAddr>().is_ok() => router.to_owned(),
        Some(router) => join_host_port(router.trim_start_matches('[').trim_end_matches(']'), ROUTER_PORT),
        None => join_host_port(host, ROUTER_PORT),
    };
    format!("{host}@{router}")
}

/// The port routers serve TLS on.
pub const ROUTER_PORT: u16 = 443;

/// For a NodePort Service: an address of `node`, where its pod runs.
async fn node_address(cluster: &Cluster, node: &str) -> Result<Option<String>, KubeError> {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(cluster.client.clone());
    let node = nodes.get(node).await.map_err(KubeError::api(&cluster.context, format!("reading node `{node}`")))?;
    let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
    let pick = |kind: &str| addresses.iter().find(|a| a.type_ == kind).map(|a| a.address.clone());
    Ok(pick("ExternalIP").or_else(|| pick("InternalIP")))
}

/// The port to dial on the Service's address.
async fn service_port(
    services: &Api<Service>,
    name: &str,
    exposure: Exposure,
    context: &str,
) -> Result<u16, KubeError> {
    let service = services.get(name).await.map_err(KubeError::api(context, format!("reading Service `{name}`")))?;
    let port = service.spec.and_then(|s| s.ports).and_then(|p| p.into_iter().next());
    let number = match (exposure, port) {
        (Exposure::NodePort, Some(port)) => port.node_port,
        (_, Some(port)) => Some(port.port),
        (_, None) => None,
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| KubeError::Config(format!("Service `{name}` (context `{context}`) has no port mover can dial")))
}

/// `HOST:PORT`, with an IPv6 host in brackets.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

#[cfg(test)]
mod tests;
