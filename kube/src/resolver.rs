//! Claims as plan volumes: [`KubeVolumes`] is the plan executor's [`VolumeResolver`] for
//! `k8s://` ends. A source claim is found and checked, and an agent serves it: its transfer pod
//! (pinned to the consumer's node for claims one node mounts at a time), or under the node
//! strategy the agent of the node where it is mounted. A target claim is found or created from
//! the source claim (sized by what the source agent measures) and served the same way, the
//! claim's first consumer being the transfer pod or a holder pod. Other ends pass through as
//! written.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use mover_engine::certs::Identity;
use mover_engine::client;
use mover_engine::tunnel::Proxy;
use mover_plan::{ClaimRef, Location, Side, VolumePlan, VolumeResolver};

use crate::agents::{AgentEnd, TransferAgents};
use crate::claims::{self, Consumer, SourceClaim, Strategy};
use crate::context::{Access, Cluster, connect};
use crate::error::KubeError;
use crate::node_agents::NodeAgents;
use crate::objects::Migration;
use crate::objects::transfer::End;
use crate::target::{self, TargetRules};

/// What one claim's target gets beyond the source's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimOverrides {
    /// Its storage class.
    pub storage_class: Option<String>,
    /// Its access modes.
    pub access_modes: Option<Vec<String>>,
}

/// The rules of a volume's target claim: the plan's class map and the volume's overrides (the
/// created claim's labels are the caller's).
#[must_use]
pub fn target_rules(storage_class_map: &BTreeMap<String, String>, overrides: Option<&ClaimOverrides>) -> TargetRules {
    let overrides = overrides.cloned().unwrap_or_default();
    TargetRules {
        storage_class_map: storage_class_map.clone(),
        storage_class: overrides.storage_class,
        access_modes: overrides.access_modes,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
    }
}

/// Sees the transfer agents' states as they change: (volume name, state).
pub type OnState = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Who serves claims: a transfer pod per claim and end, or the agents of the nodes.
#[allow(clippy::large_enum_variant, reason = "one per run")]
pub enum Agents {
    /// The pod strategy.
    Pod(TransferAgents),
    /// The node strategy.
    Node(NodeAgents),
}

impl Agents {
    /// The strategy.
    #[must_use]
    pub fn strategy(&self) -> Strategy {
        match self {
            Agents::Pod(_) => Strategy::Pod,
            Agents::Node(_) => Strategy::Node,
        }
    }

    /// The migration.
    #[must_use]
    pub fn migration(&self) -> &Migration {
        match self {
            Agents::Pod(agents) => agents.migration(),
            Agents::Node(agents) => agents.migration(),
        }
    }

    /// Starts (or grants) the agent of `claim` at `end`, where `consumers` mount it.
    async fn start(
        &self,
        cluster: &Cluster,
        claim: (&str, &str),
        (end, consumers, pin): (End, &[Consumer], Option<&str>),
        on_state: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<AgentEnd, KubeError> {
        match self {
            Agents::Pod(agents) => agents.start(cluster, claim, end, pin, on_state).await,
            Agents::Node(agents) => agents.start(cluster, claim, end, consumers.first().cloned(), on_state).await,
        }
    }

    async fn cleanup(&self) -> Vec<KubeError> {
        match self {
            Agents::Pod(agents) => agents.cleanup().await,
            Agents::Node(agents) => agents.cleanup().await,
        }
    }
}

/// Plan volumes whose ends are claims.
pub struct KubeVolumes {
    access: Access,
    agents: Agents,
    storage_class_map: BTreeMap<String, String>,
    overrides: HashMap<String, ClaimOverrides>,
    coordinator: Identity,
    proxy: Option<Proxy>,
    on_state: OnState,
    clusters: tokio::sync::Mutex<HashMap<Option<String>, Cluster>>,
    /// Each volume's source claim and agent, for its target.
    sources: Mutex<HashMap<String, (SourceClaim, AgentEnd)>>,
    /// Warnings about target claims, for the report.
    warnings: Mutex<Vec<String>>,
}

/// How [`KubeVolumes`] works.
pub struct KubeSettings {
    /// Cluster access.
    pub access: Access,
    /// Source class -> target class.
    pub storage_class_map: BTreeMap<String, String>,
    /// Per volume (by its plan name).
    pub overrides: HashMap<String, ClaimOverrides>,
    /// The coordinator's identity (to ask source agents what their volumes hold).
    pub coordinator: Identity,
    /// The proxy on the way to agents.
    pub proxy: Option<Proxy>,
    /// Sees agent states.
    pub on_state: OnState,
}

impl KubeVolumes {
    /// Resolves with `agents`.
    #[must_use]
    pub fn new(settings: KubeSettings, agents: Agents) -> Self {
        KubeVolumes {
            access: settings.access,
            agents,
            storage_class_map: settings.storage_class_map,
            overrides: settings.overrides,
            coordinator: settings.coordinator,
            proxy: settings.proxy,
            on_state: settings.on_state,
            clusters: tokio::sync::Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            warnings: Mutex::new(Vec::new()),
        }
    }

    /// The cluster of `context`, connected once.
    pub async fn cluster(&self, context: Option<&str>) -> Result<Cluster, KubeError> {
        let mut clusters = self.clusters.lock().await;
        let key = context.map(str::to_owned);
        if let Some(cluster) = clusters.get(&key) {
            return Ok(cluster.clone());
        }
        let cluster = connect(&self.access, context).await?;
        clusters.insert(key, cluster.clone());
        Ok(cluster)
    }

    /// The strategy.
    #[must_use]
    pub fn strategy(&self) -> Strategy {
        self.agents.strategy()
    }

    /// What users should know about the target claims (class fallbacks, claims too small).
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().expect("not poisoned").clone()
    }

    /// Removes every transfer pod, holder pod, Service and Secret this migration made, and
    /// withdraws its grants from node agents.
    pub async fn cleanup(&self) -> Vec<KubeError> {
        self.agents.cleanup().await
    }

    /// Where `side` of volume `name` is: a claim's transfer agent, started; other ends as written.
    /// Sources before their targets: a target claim is made from its volume's source claim.
    pub async fn end(&self, name: &str, location: &Location, side: Side) -> Result<Location, KubeError> {
        let Location::Kube(claim) = location else { return Ok(location.clone()) };
        match side {
            Side::Source => Box::pin(self.resolve_source(name, claim)).await,
            Side::Target => Box::pin(self.resolve_target(name, claim)).await,
        }
    }

    async fn resolve_source(&self, volume: &str, claim: &ClaimRef) -> Result<Location, KubeError> {
        let name = claim.name.as_deref().ok_or_else(|| {
            KubeError::Config(format!("the source `{claim}` names no claim: write `k8s://CONTEXT/NAMESPACE/PVC`"))
        })?;
        let cluster = self.cluster(claim.context.as_deref()).await?;
        let source = claims::find_source(&cluster, &claim.namespace, name, self.strategy()).await?;
        let on_state = |state: &str| (self.on_state)(volume, state);
        let how = (End::Source, source.consumers.as_slice(), source.pin());
        let agent = self.agents.start(&cluster, (&claim.namespace, name), how, &on_state).await?;
        let location = agent.location();
        self.sources.lock().expect("not poisoned").insert(volume.to_owned(), (source, agent));
        Ok(location)
    }

    async fn resolve_target(&self, volume: &str, claim: &ClaimRef) -> Result<Location, KubeError> {
        let Some((source, source_agent)) = self.sources.lock().expect("not poisoned").get(volume).cloned() else {
            return Err(KubeError::Config(format!(
                "the target `{claim}` is a claim, so its source must be a claim too (`k8s://CONTEXT/NAMESPACE/PVC`): \
                 mover makes the target claim from the source claim"
            )));
        };
        let name = claim.name.clone().or_else(|| source.claim.metadata.name.clone()).unwrap_or_default();
        let cluster = self.cluster(claim.context.as_deref()).await?;
        let used = self.measure(&source_agent).await;
        let mut rules = target_rules(&self.storage_class_map, self.overrides.get(volume));
        rules.labels = self.agents.migration().labels();
        rules.annotations = self.agents.migration().annotations();
        if target::ensure_namespace(&cluster, &claim.namespace, self.agents.migration()).await? {
            (self.on_state)(
                volume,
                &format!("created namespace `{}` in context `{}`", claim.namespace, cluster.context),
            );
        }
        let target = target::ensure(&cluster, &source, (&claim.namespace, &name), used, &rules).await?;
        self.warnings.lock().expect("not poisoned").extend(target.warnings.iter().map(|w| format!("{volume}: {w}")));
        // An existing claim that a running pod mounts is reached on that pod's node.
        let consumers = if target.created { Vec::new() } else { claims::consumers(&cluster, &target.claim).await? };
        let pin = consumers.first().map(|c| c.node.as_str());
        let on_state = |state: &str| (self.on_state)(volume, state);
        let how = (End::Target, consumers.as_slice(), pin);
        let agent = self.agents.start(&cluster, (&claim.namespace, &name), how, &on_state).await?;
        Ok(agent.location())
    }

    /// What the source agent's volume holds, if it can tell.
    async fn measure(&self, agent: &AgentEnd) -> Option<u64> {
        let status = match &agent.via {
            Some(via) => client::inspect(&self.coordinator, via, None).await,
            None => client::inspect(&self.coordinator, &agent.addr, self.proxy.as_ref()).await,
        };
        let status = status.ok()?;
        status.volumes.iter().find(|v| v.name == agent.volume).map(|v| v.used_bytes)
    }
}

impl VolumeResolver for KubeVolumes {
    fn resolve<'a>(&'a self, volume: &'a VolumePlan, side: Side) -> BoxFuture<'a, anyhow::Result<Location>> {
        let location = match side {
            Side::Source => &volume.source,
            Side::Target => &volume.target,
        };
        Box::pin(async move { self.end(&volume.name, location, side).await.map_err(anyhow::Error::new) })
    }
}
