//! `mover plan rollback PLAN.yaml`: undoes a plan's cutover. The source's workloads that
//! `plan run --final` quiesced start again (each restored to the value recorded before, unless
//! someone changed it since: theirs wins), then what mover created in the target cluster goes:
//! the claims it created for the plan (a claim that existed before stays), any transfer pods,
//! Services and Secrets of the plan left behind, and last the namespaces it created for the plan
//! when nothing of anyone else is in them (one that existed before stays; one that holds
//! something else stays, and the output names what). It says what it restored, removed and kept.

use anyhow::bail;
use mover_kube::context::connect;
use mover_kube::objects::MANAGED_BY;
use mover_kube::quiesce::KubeWorkloads;
use mover_kube::rollback::{ClaimRollback, NamespaceRollback, remove_created_claim, remove_created_namespace};
use mover_kube::run_log::ClusterRunLog;
use mover_plan::Location;
use serde_json::json;

use crate::Outcome;
use crate::args::{GlobalArgs, PlanRollbackArgs};
use crate::commands::plan::add_every_claim;
use crate::plan;
use crate::render::plan::PlanPrinter;

pub async fn run(args: &PlanRollbackArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let printer = PlanPrinter::new(global);
    let mut plan = plan::load(&args.plan)?;
    let Some(clusters) = plan.clusters.clone() else {
        bail!(
            "`{}` has no `clusters:`: a rollback restarts workloads and removes claims in Kubernetes clusters, and this \
             plan names none",
            args.plan.display()
        );
    };
    let access = crate::clusters::cluster_access(args.kube.kubeconfig.as_ref());
    let workloads = KubeWorkloads::new(access.clone(), clusters.contexts.clone());
    let restored = workloads.unquiesce_plan(&plan).await?;
    let mut lines: Vec<String> = restored.iter().map(|line| format!("restored {line}")).collect();
    if restored.is_empty() {
        lines.push("source: no workload of this plan is quiesced".to_owned());
    }

    let source = connect(&access, clusters.contexts.source.as_deref()).await?;
    if clusters.every_claim {
        add_every_claim(&mut plan, &clusters, &source, &printer).await?;
    }
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    let mut namespaces = Vec::new();
    for volume in &plan.volumes {
        let (Location::Kube(claim), Location::Kube(source_claim)) = (&volume.target, &volume.source) else { continue };
        let Some(name) = claim.name.as_ref().or(source_claim.name.as_ref()) else { continue };
        let target = connect(&access, claim.context.as_deref()).await?;
        let shown = format!("claim {}/{name} in context `{}`", claim.namespace, target.context);
        match remove_created_claim(&target, (&claim.namespace, name), &plan.name).await? {
            ClaimRollback::Deleted => removed.push(format!("deleted {shown} (mover created it)")),
            ClaimRollback::Kept => kept.push(format!("kept {shown}: it existed before mover used it")),
            ClaimRollback::Missing => {}
        }
        let namespace = (claim.context.clone(), claim.namespace.clone());
        if !namespaces.contains(&namespace) {
            namespaces.push(namespace);
        }
    }
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let mut contexts = vec![clusters.contexts.source.clone(), clusters.contexts.target.clone()];
    contexts.dedup();
    for context in contexts {
        let cluster = connect(&access, context.as_deref()).await?;
        let count = mover_kube::agents::remove(&cluster, None, &selector, Some(&plan.name)).await?;
        if count > 0 {
            removed.push(format!("deleted {count} transfer objects of the plan in context `{}`", cluster.context));
        }
    }
    // Last, with the claims and transfer objects gone: the namespaces mover created.
    for (context, namespace) in &namespaces {
        let target = connect(&access, context.as_deref()).await?;
        let shown = format!("namespace {namespace} in context `{}`", target.context);
        match remove_created_namespace(&target, namespace, &plan.name).await? {
            NamespaceRollback::Deleted => removed.push(format!("deleted {shown} (mover created it)")),
            NamespaceRollback::InUse(objects) => kept.push(format!(
                "kept {shown}: mover created it, but it holds what mover did not create: {}",
                objects.join(", ")
            )),
            NamespaceRollback::NotCreated => kept.push(format!("kept {shown}: it existed before mover used it")),
            NamespaceRollback::Missing => {}
        }
    }
    // The next final run starts from the beginning (it quiesces again, records afresh).
    let log = ClusterRunLog::new(access.clone(), clusters.contexts.source.clone(), args.kube.agents_namespace.clone());
    log.forget(&plan.name).await?;
    lines.extend(kept.iter().cloned());
    lines.extend(removed.iter().cloned());
    if printer.is_json() {
        crate::output::json_final(
            &json!({"type": "rollback", "plan": plan.name, "restored": restored, "removed": removed, "kept": kept}),
        );
    } else {
        for line in &lines {
            crate::output::println(line);
        }
    }
    Ok(Outcome::Success)
}
