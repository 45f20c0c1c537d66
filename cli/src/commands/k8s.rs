//! `mover k8s manifests`: the objects mover's install needs, rendered from mover-kube's
//! builders, so what is printed is what the code creates.

use std::io::Write;

use anyhow::Context;
use mover_kube::manifests;
use mover_kube::objects::{Install, Strategy, install_objects, template_objects};

use crate::Outcome;
use crate::args::{K8sCleanupArgs, K8sCommand, K8sManifestsArgs, StrategyArg};
use mover_kube::objects::MANAGED_BY;

/// Says what the templates are, so that nobody applies them.
const TEMPLATES_HEADER: &str = "\
# Examples of what mover creates per migration and claim (not for `kubectl apply`): the
# migration's identity Secret, a source transfer pod pinned to its claim's node, a target
# transfer pod and the Service exposing it; per hook, a playbook hook's Job and ConfigMap.
";

/// Runs `mover k8s ...`.
pub async fn run(command: &K8sCommand) -> anyhow::Result<Outcome> {
    match command {
        K8sCommand::Manifests(args) => manifests(args),
        K8sCommand::Cleanup(args) => cleanup(args).await,
    }
}

/// Removes mover's pods, Services and Secrets in every namespace of each context: one plan's
/// (by its name), or every run's.
async fn cleanup(args: &K8sCleanupArgs) -> anyhow::Result<Outcome> {
    let (name, mut contexts) = match &args.plan {
        Some(path) => {
            let plan = crate::plan::load(path)?;
            let Some(clusters) = &plan.clusters else {
                anyhow::bail!("`{}` has no `clusters:`: nothing of it is in a cluster", path.display());
            };
            (Some(plan.name.clone()), vec![clusters.contexts.source.clone(), clusters.contexts.target.clone()])
        }
        None => (args.plan_name.clone(), Vec::new()),
    };
    if !args.context.is_empty() {
        contexts = args.context.iter().cloned().map(Some).collect();
    }
    if contexts.is_empty() {
        contexts.push(None);
    }
    contexts.dedup();
    let access = crate::clusters::cluster_access(args.kubeconfig.as_ref());
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    for context in contexts {
        let cluster = mover_kube::context::connect(&access, context.as_deref()).await?;
        let removed = mover_kube::agents::remove(&cluster, None, &selector, name.as_deref()).await?;
        crate::output::println(&format!("context `{}`: removed {removed} objects", cluster.context));
    }
    Ok(Outcome::Success)
}

fn manifests(args: &K8sManifestsArgs) -> anyhow::Result<Outcome> {
    let install = Install {
        strategy: match args.strategy {
            StrategyArg::Pod => Strategy::Pod,
            StrategyArg::Node => Strategy::Node,
        },
        namespace: &args.namespace,
        image: &args.image,
        kubelet_root: &args.kubelet_root,
        port_forward: args.port_forward,
    };
    let (header, objects) = if args.show_templates {
        (TEMPLATES_HEADER, template_objects(&install))
    } else {
        ("", install_objects(&install))
    };
    let yaml = manifests::to_yaml(&objects).context("while rendering the manifests as YAML")?;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(header.as_bytes()).and_then(|()| stdout.write_all(yaml.as_bytes())) {
        // `mover k8s manifests | head`: a closed stdout is the reader's choice, not a failure.
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("while writing the manifests")
        }
        _ => Ok(Outcome::Success),
    }
}
