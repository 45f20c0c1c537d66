//! What commands share to reach clusters: the kubeconfig (flag, `KUBECONFIG`, `~/.kube/config`,
//! else in-cluster), the migration's identities (from `--certs`, or made for this run), the
//! transfer agents' settings, and cleanup that runs whatever happens, Ctrl-C included.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mover_engine::certs::{self, Identity, Role};
use mover_engine::tunnel::Proxy;
use mover_kube::agents::{AgentPem, AgentSettings, TransferAgents};
use mover_kube::context::Access;
use mover_kube::node_agents::{NodeAgents, NodeSettings};
use mover_kube::objects::transfer::Exposure;
use mover_kube::objects::{Migration, Strategy};
use mover_kube::resolver::{Agents, ClaimOverrides, KubeSettings, KubeVolumes, OnState};
use mover_plan::Clusters;

use crate::access;
use crate::args::{ExposeArg, KubeArgs, StrategyArg};

/// Where cluster access comes from: `--kubeconfig`/`KUBECONFIG` (a `:`-separated list), else
/// `~/.kube/config` if it exists, else the pod's service account.
pub fn cluster_access(kubeconfig: Option<&OsString>) -> Access {
    if let Some(list) = kubeconfig.filter(|list| !list.is_empty()) {
        return Access::Kubeconfig(std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()).collect());
    }
    let home = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube/config"));
    match home {
        Some(path) if path.is_file() => Access::Kubeconfig(vec![path]),
        _ => Access::InCluster,
    }
}

/// The coordinator's identity and the agents' PEM: from a certificate directory, or made for
/// this run (the CA's key then lives only in this process).
pub fn identities(certs_dir: Option<&Path>) -> anyhow::Result<(Identity, AgentPem)> {
    if let Some(dir) = certs_dir {
        let coordinator = access::load_identity(dir, Role::Coordinator)?;
        let read = |name: &str| {
            std::fs::read(dir.join(name)).with_context(|| format!("while reading `{}`", dir.join(name).display()))
        };
        // Checks the agent's files as an agent would load them.
        access::load_identity(dir, Role::Agent)?;
        return Ok((coordinator, AgentPem { ca: read("ca.crt")?, cert: read("agent.crt")?, key: read("agent.key")? }));
    }
    let generated = certs::generate().context("while making this run's certificates")?;
    let coordinator = Identity::from_generated(&generated, Role::Coordinator)?;
    let pem = AgentPem {
        ca: generated.ca.cert.into_bytes(),
        cert: generated.agent.cert.into_bytes(),
        key: generated.agent.key.into_bytes(),
    };
    Ok((coordinator, pem))
}

/// The run's identities: the coordinator's, and the agents' (for an in-process agent that
/// receives into a local directory).
pub struct Identities {
    /// This command's.
    pub coordinator: Identity,
    /// The transfer agents'.
    pub agent: Identity,
}

/// How agents reach claims: `--strategy`, else the plan's `clusters.strategy`, else `pod`.
pub fn strategy(args: &KubeArgs, plan: Option<&Clusters>) -> Strategy {
    let node = match args.strategy {
        Some(strategy) => strategy == StrategyArg::Node,
        None => plan.is_some_and(|p| p.node_strategy),
    };
    if node { Strategy::Node } else { Strategy::Pod }
}

/// How transfer agents are reached: `--expose`, else the plan's `clusters.exposure`, else a
/// `LoadBalancer` Service.
pub fn exposure(args: &KubeArgs, plan: Option<&Clusters>) -> Exposure {
    match args.expose {
        Some(ExposeArg::LoadBalancer) => Exposure::LoadBalancer,
        Some(ExposeArg::NodePort) => Exposure::NodePort,
        Some(ExposeArg::ClusterIp) => Exposure::ClusterIp,
        Some(ExposeArg::Route) => Exposure::Route,
        None => match plan.and_then(|p| p.exposure) {
            None | Some(mover_plan::Exposure::LoadBalancer) => Exposure::LoadBalancer,
            Some(mover_plan::Exposure::NodePort) => Exposure::NodePort,
            Some(mover_plan::Exposure::ClusterIp) => Exposure::ClusterIp,
            Some(mover_plan::Exposure::Route) => Exposure::Route,
        },
    }
}

/// Whether mover reaches agents through port-forwards: `--port-forward`, else the plan's
/// `clusters.portForward`.
pub fn port_forward(args: &KubeArgs, plan: Option<&Clusters>) -> bool {
    args.port_forward || plan.is_some_and(|p| p.port_forward)
}

/// Where each cluster's router is dialled, by context (`""`: every cluster not named): the
/// plan's `routerAddress` of each side (a side without a context is the current context, so
/// `""`), then `--router-address`, which wins.
pub fn routers(args: &KubeArgs, plan: Option<&Clusters>) -> BTreeMap<String, String> {
    let mut routers = BTreeMap::new();
    if let Some(plan) = plan {
        let sides = [
            (&plan.contexts.source, &plan.router_addresses.source),
            (&plan.contexts.target, &plan.router_addresses.target),
        ];
        for (context, address) in sides {
            if let Some(address) = address {
                routers.insert(context.clone().unwrap_or_default(), address.clone());
            }
        }
    }
    routers.extend(args.router_address.iter().cloned());
    routers
}

/// What each claim volume's target gets beyond the source claim's shape, by volume name.
pub fn claim_overrides(plan: &Clusters) -> HashMap<String, ClaimOverrides> {
    let overrides = plan.claims.iter().map(|(volume, target)| {
        let overrides =
            ClaimOverrides { storage_class: target.storage_class.clone(), access_modes: target.access_modes.clone() };
        (volume.clone(), overrides)
    });
    overrides.collect()
}

/// Claim resolution for a copy or plan called `plan_name`.
pub fn volumes(
    args: &KubeArgs,
    certs_dir: Option<&Path>,
    (plan_name, plan): (&str, Option<&Clusters>),
    proxy: Option<Proxy>,
    on_state: OnState,
) -> anyhow::Result<(KubeVolumes, Identities)> {
    let (coordinator, pem) = identities(certs_dir)?;
    let agent = Identity::from_pem(Role::Agent, certs::IdentityPem { ca: &pem.ca, cert: &pem.cert, key: &pem.key })?;
    let migration = Migration::new(coordinator.migration_id(), plan_name)
        .map_err(|e| anyhow::anyhow!("the migration id `{}` is not a label value", e.id))?;
    let settings = AgentSettings {
        image: args.agent_image.clone(),
        port: mover_kube::objects::DEFAULT_PORT,
        exposure: exposure(args, plan),
        routers: routers(args, plan),
        ready_timeout: Duration::from_secs(args.agent_ready_timeout),
        port_forward: port_forward(args, plan),
    };
    let agents = if strategy(args, plan) == Strategy::Node {
        let node = NodeSettings {
            namespace: args.agents_namespace.clone(),
            image: settings.image,
            port: settings.port,
            ready_timeout: settings.ready_timeout,
            port_forward: settings.port_forward,
        };
        Agents::Node(NodeAgents::new(migration, pem, node, (coordinator.clone(), proxy.clone())))
    } else {
        Agents::Pod(TransferAgents::new(migration, pem, settings))
    };
    let settings = KubeSettings {
        access: cluster_access(args.kubeconfig.as_ref()),
        storage_class_map: plan.map(|p| p.storage_class_map.clone()).unwrap_or_default(),
        overrides: plan.map(claim_overrides).unwrap_or_default(),
        coordinator: coordinator.clone(),
        proxy,
        on_state,
    };
    Ok((KubeVolumes::new(settings, agents), Identities { coordinator, agent }))
}

/// Runs `work`, then removes what the migration made in the clusters, also when `work` fails or
/// the user interrupts it (SIGINT, SIGTERM). `None`: interrupted.
pub async fn with_cleanup<T>(volumes: &KubeVolumes, work: impl Future<Output = T>) -> (Option<T>, Vec<String>) {
    let result = tokio::select! {
        result = work => Some(result),
        () = crate::cancelled() => None,
    };
    let problems = volumes.cleanup().await.into_iter().map(|e| format!("cleanup: {e}")).collect();
    (result, problems)
}

/// Prints agents' states as they change, one line each, on stderr.
pub fn print_states() -> OnState {
    Arc::new(|volume: &str, state: &str| crate::output::eprintln(&format!("{volume}: {state}")))
}
