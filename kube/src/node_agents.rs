//! The node strategy: the `DaemonSet` agent of the node where a claim is mounted serves it,
//! granted at run time by pod UID and volume name, never by a path.
//!
//! For each claim and end:
//! 1. the migration's identity goes into the Secret the node agents read
//!    ([`NODE_IDENTITY_SECRET`] in the agents' namespace); one migration at a time uses them;
//! 2. the claim is mounted somewhere: by its running consumer (a source in use), else by a holder
//!    pod mover starts (an unused source claim, read-only; a target claim, whose first consumer
//!    it is);
//! 3. the agent of that pod's node is found, and waited for until it has taken the identity;
//! 4. the coordinator grants it the pod's volume (`<ns>.<claim>`), read-only on the source.
//!
//! [`NodeAgents::cleanup`] withdraws the grants, deletes the holder pods and the identity
//! Secret (which ends the agents' sessions of this migration).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use mover_engine::certs::Identity;
use mover_engine::client::{self, PodVolume};
use mover_engine::tunnel::Proxy;

use crate::agents::{AgentEnd, AgentPem, Touched, create_or_reuse, wait_ready};
use crate::claims::{Consumer, consumer_of};
use crate::context::Cluster;
use crate::error::KubeError;
use crate::forward::PortForward;
use crate::objects::labels::MIGRATION_LABEL;
use crate::objects::transfer::End;
use crate::objects::{HolderPod, Migration, NODE_IDENTITY_SECRET, holder_pod, identity_secret, node_labels};

/// How node agents are reached.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The namespace of the agents' `DaemonSet` (and of the identity Secret).
    pub namespace: String,
    /// The image of holder pods (the agent image: `mover-agent hold`).
    pub image: String,
    /// The port the agents listen on.
    pub port: u16,
    /// How long a holder pod, a node agent, or its taking the identity may take.
    pub ready_timeout: Duration,
    /// The coordinator reaches the agents through API-server port-forwards, not at their pod
    /// addresses (which the agents still use between them).
    pub port_forward: bool,
}

/// A grant made, to withdraw at the end: where the coordinator reached the agent, and whether
/// that was a port-forward (which the proxy is not on the way to).
#[derive(Debug, Clone)]
struct Grant {
    addr: String,
    forwarded: bool,
    name: String,
}

/// The node agents of one migration, and what was made for them.
pub struct NodeAgents {
    migration: Migration,
    identity: AgentPem,
    settings: NodeSettings,
    coordinator: Identity,
    proxy: Option<Proxy>,
    /// Where objects were made.
    touched: Touched,
    grants: Mutex<Vec<Grant>>,
    /// The coordinator's port-forwards, by (context, agent pod); closed at cleanup.
    forwards: tokio::sync::Mutex<HashMap<(String, String), PortForward>>,
}

impl NodeAgents {
    /// Node agents for `migration`; `coordinator` grants them volumes.
    #[must_use]
    pub fn new(
        migration: Migration,
        identity: AgentPem,
        settings: NodeSettings,
        (coordinator, proxy): (Identity, Option<Proxy>),
    ) -> Self {
        NodeAgents {
            migration,
            identity,
            settings,
            coordinator,
            proxy,
            touched: Touched::default(),
            grants: Mutex::new(Vec::new()),
            forwards: tokio::sync::Mutex::default(),
        }
    }

    /// The migration.
    #[must_use]
    pub fn migration(&self) -> &Migration {
        &self.migration
    }

    /// Grants `claim` (in `namespace`) at `end` to the node agent where it is mounted: by
    /// `consumer` if given, else by a holder pod started here. `on_state` sees each state of the
    /// waits.
    pub async fn start(
        &self,
        cluster: &Cluster,
        (namespace, claim): (&str, &str),
        end: End,
        consumer: Option<Consumer>,
        on_state: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<AgentEnd, KubeError> {
        let deadline = Instant::now() + self.settings.ready_timeout;
        self.touched.add(cluster, &self.settings.namespace);
        self.ensure_identity(cluster).await?;
        let consumer = match consumer {
            Some(consumer) => consumer,
            None => self.hold(cluster, (namespace, claim), end, deadline, on_state).await?,
        };
        let volume = bound_volume(cluster, namespace, claim).await?;
        let (agent_pod, addr) = self.agent_on(cluster, &consumer.node, deadline, on_state).await?;
        let via = self.forward_to(cluster, &agent_pod).await?;
        let grant = PodVolume {
            name: format!("{namespace}.{claim}"),
            pod_uid: consumer.uid.clone(),
            volume,
            read_only: end == End::Source,
        };
        let dial = via.as_deref().unwrap_or(&addr);
        self.grant(dial, via.is_some(), &grant, deadline, on_state).await.map_err(|error| {
            KubeError::Config(format!(
                "node agent `{}/{agent_pod}` (context `{}`) did not take the grant of claim `{namespace}/{claim}` \
                 mounted by pod `{}`: {error}",
                self.settings.namespace, cluster.context, consumer.pod,
            ))
        })?;
        let made = Grant { addr: dial.to_owned(), forwarded: via.is_some(), name: grant.name.clone() };
        self.grants.lock().expect("not poisoned").push(made);
        on_state(&format!("granted to node agent `{agent_pod}` on node `{}` (pod `{}`)", consumer.node, consumer.pod));
        Ok(AgentEnd { addr, via, volume: grant.name, pod: agent_pod })
    }

    /// With [`NodeSettings::port_forward`], where this machine reaches node agent `pod`: its
    /// port-forward, opened once.
    async fn forward_to(&self, cluster: &Cluster, pod: &str) -> Result<Option<String>, KubeError> {
        if !self.settings.port_forward {
            return Ok(None);
        }
        let mut forwards = self.forwards.lock().await;
        let key = (cluster.context.clone(), pod.to_owned());
        if let Some(forward) = forwards.get(&key) {
            return Ok(Some(forward.addr()));
        }
        let forward = PortForward::start(cluster, (&self.settings.namespace, pod), self.settings.port).await?;
        let via = forward.addr();
        forwards.insert(key, forward);
        Ok(Some(via))
    }

    /// The proxy on the coordinator's way to an agent: none through a port-forward.
    fn proxy(&self, forwarded: bool) -> Option<&Proxy> {
        if forwarded { None } else { self.proxy.as_ref() }
    }

    /// The node agents' identity Secret holds this migration's identity: created, or found
    /// holding it. Another migration's is refused: one migration uses the node agents at a time.
    async fn ensure_identity(&self, cluster: &Cluster) -> Result<(), KubeError> {
        let namespace = &self.settings.namespace;
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
        let mut wanted =
            identity_secret(&self.migration, namespace, &self.identity.ca, &self.identity.cert, &self.identity.key);
        wanted.metadata.name = Some(NODE_IDENTITY_SECRET.to_owned());
        let doing = format!("creating the node agents' identity Secret `{namespace}/{NODE_IDENTITY_SECRET}`");
        match secrets.create(&PostParams::default(), &wanted).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing =
                    secrets.get(NODE_IDENTITY_SECRET).await.map_err(KubeError::api(&cluster.context, &doing))?;
                let owner = existing.metadata.labels.as_ref().and_then(|l| l.get(MIGRATION_LABEL)).cloned();
                if owner.as_deref() == Some(self.migration.id.as_str()) && existing.data == wanted.data {
                    return Ok(());
                }
                let plan = existing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(crate::objects::labels::PLAN_ANNOTATION))
                    .cloned()
                    .unwrap_or_else(|| "?".to_owned());
                Err(KubeError::Config(format!(
                    "the node agents of context `{}` serve another migration (`{}`, plan `{plan}`): Secret \
                     `{namespace}/{NODE_IDENTITY_SECRET}` holds its identity. One migration uses the node agents at a \
                     time: wait until it ends, or remove its leftovers with `mover k8s cleanup` (plan `{plan}`)",
                    cluster.context,
                    owner.unwrap_or_else(|| "unknown".to_owned()),
                )))
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Err(KubeError::Config(format!(
                "namespace `{namespace}` does not exist in context `{}`: the node strategy needs the node agents' \
                 DaemonSet there, from `mover k8s manifests` for the node strategy, applied with `kubectl apply -f -`",
                cluster.context
            ))),
            Err(error) => Err(KubeError::api(&cluster.context, doing)(error)),
        }
    }

    /// Starts the holder pod of `claim` and waits until it runs; it is then the claim's consumer.
    async fn hold(
        &self,
        cluster: &Cluster,
        (namespace, claim): (&str, &str),
        end: End,
        deadline: Instant,
        on_state: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<Consumer, KubeError> {
        self.touched.add(cluster, namespace);
        let pod =
            holder_pod(&HolderPod { migration: &self.migration, namespace, claim, end, image: &self.settings.image });
        let name = pod.metadata.name.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        create_or_reuse(&pods, &pod, &cluster.context, &format!("holder pod `{namespace}/{name}`")).await?;
        let running = wait_ready(cluster, namespace, &name, deadline, on_state).await?;
        consumer_of(&running, claim).ok_or_else(|| {
            KubeError::Config(format!(
                "holder pod `{namespace}/{name}` (context `{}`) runs on no node",
                cluster.context
            ))
        })
    }

    /// The ready node agent on `node`, and its address (pod IP and port).
    async fn agent_on(
        &self,
        cluster: &Cluster,
        node: &str,
        deadline: Instant,
        on_state: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(String, String), KubeError> {
        let namespace = &self.settings.namespace;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        let selector = node_labels().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let params = ListParams::default().labels(&selector).fields(&format!("spec.nodeName={node}"));
        let doing = format!("listing the node agents of namespace `{namespace}`");
        let mut last = String::new();
        loop {
            let found = pods.list(&params).await.map_err(KubeError::api(&cluster.context, &doing))?;
            let ready = found.items.iter().find(|pod| crate::agents::is_ready(pod));
            if let Some(pod) = ready {
                let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
                if let (Some(name), Some(ip)) = (pod.metadata.name.clone(), ip) {
                    return Ok((name, crate::agents::join_host_port(&ip, self.settings.port)));
                }
            }
            let state = match found.items.first() {
                None => format!("no node agent on node `{node}` yet"),
                Some(pod) => format!(
                    "node agent `{}`: {}",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    crate::agents::pod_state(pod)
                ),
            };
            if Instant::now() > deadline {
                return Err(KubeError::Timeout(format!(
                    "no node agent was ready on node `{node}` (context `{}`, namespace `{namespace}`) in time; last: \
                     {state}. The node strategy needs the node agents' DaemonSet in namespace `{namespace}`, from `mover \
                     k8s manifests` for the node strategy, applied with `kubectl apply -f -`",
                    cluster.context
                )));
            }
            if state != last {
                on_state(&state);
                last = state;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Grants `grant` to the agent at `addr`. Until the agent has read this migration's identity
    /// (it re-reads its Secret every few seconds) the handshake fails, and the grant is tried
    /// again; a refusal by the agent is final.
    async fn grant(
        &self,
        addr: &str,
        forwarded: bool,
        grant: &PodVolume,
        deadline: Instant,
        on_state: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), String> {
        let mut reported = false;
        loop {
            let error = match client::grant_pod_volume(&self.coordinator, addr, self.proxy(forwarded), grant).await {
                Ok(()) => return Ok(()),
                Err(error @ client::CopyError::Remote { .. }) => return Err(mover_engine::full_message(&error)),
                Err(error) => mover_engine::full_message(&error),
            };
            if Instant::now() > deadline {
                return Err(format!("it had not read this migration's identity in time ({error})"));
            }
            if !reported {
                on_state(&format!("node agent at {addr}: waiting until it reads this migration's identity"));
                reported = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Withdraws the grants, deletes the holder pods and the identity Secret. Returns what could
    /// not be undone.
    pub async fn cleanup(&self) -> Vec<KubeError> {
        let mut errors = Vec::new();
        let grants = std::mem::take(&mut *self.grants.lock().expect("not poisoned"));
        for grant in grants {
            if let Err(error) =
                client::revoke_volume(&self.coordinator, &grant.addr, self.proxy(grant.forwarded), &grant.name).await
            {
                errors.push(KubeError::Config(format!(
                    "withdrawing volume `{}` from the node agent at {}: {}",
                    grant.name,
                    grant.addr,
                    mover_engine::full_message(&error)
                )));
            }
        }
        self.forwards.lock().await.clear();
        errors.extend(self.touched.remove_all(&self.migration).await);
        errors
    }
}

/// The name of the volume claim `namespace/name` is bound to (a holder made it bind).
async fn bound_volume(cluster: &Cluster, namespace: &str, name: &str) -> Result<String, KubeError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
    let claim = claims
        .get(name)
        .await
        .map_err(KubeError::api(&cluster.context, format!("reading PersistentVolumeClaim `{namespace}/{name}`")))?;
    claim.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty()).ok_or_else(|| {
        KubeError::Config(format!(
            "PersistentVolumeClaim `{namespace}/{name}` (context `{}`) is mounted but bound to no volume",
            cluster.context
        ))
    })
}
