//! `mover plan run PLAN.yaml [--stage | --final]`: the plan library's executor
//! ([`mover_plan::execute`]: hooks and transfers in MTC's order, hooks in final runs only unless
//! marked), with this front end's runtime: local hook processes (Jobs in a plan with
//! `clusters:`), agent URLs and local paths as written, images through the CLI's registry
//! access, and the plan printer and report watching.
//!
//! The report is printed, and written as JSON with `--report FILE`, however the plan ends: a
//! plan that does not load, a failed preflight, a failed hook or copy, or an interruption
//! (SIGINT, SIGTERM: the report says `cancelled`, and `mover` exits 130).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use mover_engine::hooks::{HookError, HookOutcome};
use mover_engine::image::{ImageError, ImageRef, ImageSummary, Session};
use mover_engine::progress::{SharedReporter, Summary};
use mover_engine::tunnel::Proxy;
use mover_kube::claims;
use mover_kube::context::Cluster;
use mover_kube::hooks::KubeHooks;
use mover_kube::images::KubeImages;
use mover_kube::objects::Migration;
use mover_kube::quiesce::KubeWorkloads;
use mover_kube::resolver::{KubeVolumes, OnState};
use mover_kube::run_log::ClusterRunLog;
use mover_plan::{
    Clusters, HookRunner, ImageFinder, ImageTransfers, LocalHooks, NoRunLog, NoWorkloads, Observer, Run, RunLog,
    Runtime, SkippedImage, StepRecord, VolumeResolver, Workloads, WrittenLocations,
};

use crate::Outcome;
use crate::access;
use crate::args::{GlobalArgs, PlanRunArgs};
use crate::commands::preflight::{self, Thresholds};
use crate::plan::report::{Report, StepResult};
use crate::plan::{self, Hook, ImageDiscovery, ImageTransfer, Plan, RegistrySide, Side, Sides, VolumePlan};
use crate::render::plan::PlanPrinter;

pub async fn run(args: PlanRunArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let stage = args.stage && !args.final_run;
    let printer = PlanPrinter::new(global);
    let started = Instant::now();
    // Shared with the executor's observer, so that an interrupted run's report keeps what ran.
    let report = Arc::new(Mutex::new(None));
    // What the run made in clusters is removed however it ends.
    let clusters: MadeInClusters = Arc::new(Mutex::new(None));
    let hooks: HooksInClusters = Arc::new(Mutex::new(None));
    let mut executed = false;
    let (result, cancelled) = {
        let plan_run = load_and_run(&args, global, stage, (&printer, &report, &clusters, &hooks), &mut executed);
        tokio::select! {
            result = plan_run => (result, false),
            () = crate::cancelled() => (Err(anyhow!("interrupted: the plan stopped where it was")), true),
        }
    };
    // A hook Job still running (the run was interrupted, or lost track of it) goes first.
    let jobs: Option<Arc<KubeHooks>> = hooks.lock().expect("hooks lock").take();
    if let Some(jobs) = jobs {
        for problem in jobs.cleanup().await {
            crate::output::eprintln(&format!("warning: cleanup: {problem}"));
        }
    }
    let made: Option<Arc<KubeVolumes>> = clusters.lock().expect("clusters lock").take();
    if let Some(volumes) = made {
        for problem in volumes.cleanup().await {
            crate::output::eprintln(&format!("warning: cleanup: {problem}"));
        }
    }
    printer.finish();
    let mut report = report
        .lock()
        .expect("report lock")
        .take()
        .unwrap_or_else(|| Report::unloaded(&args.plan.display().to_string(), stage));
    report.dry_run = args.dry_run;
    report.finish(&result, cancelled, started.elapsed().as_secs_f64());
    if let Some(path) = &args.report
        && let Err(error) = report.write(path)
    {
        // Keep the plan's own error when there is one; it matters more.
        if result.is_ok() {
            return Err(error);
        }
        crate::render::print_error(&error);
    }
    if printer.is_json() {
        let mut value = serde_json::to_value(&report).expect("reports serialise");
        value["type"] = "report".into();
        crate::output::json_final(&value);
    } else if executed {
        // A plan that did not load or failed its preflight has nothing to tabulate.
        report.print();
    }
    if cancelled {
        crate::render::print_cancelled(false);
        return Ok(Outcome::Cancelled);
    }
    result.map(|()| Outcome::Success)
}

/// Loads the plan (its report then goes into `report`), checks it and runs it (`executed` is
/// then set).
async fn load_and_run(
    args: &PlanRunArgs,
    global: &GlobalArgs,
    stage: bool,
    (printer, report, made, hooks_made): (&PlanPrinter, &Arc<Mutex<Option<Report>>>, &MadeInClusters, &HooksInClusters),
    executed: &mut bool,
) -> anyhow::Result<()> {
    let mut plan = plan::load(&args.plan)?;
    let clusters = match &plan.clusters {
        Some(clusters) => {
            let shown = printer.clone();
            let on_state: OnState =
                Arc::new(move |volume: &str, state: &str| shown.text_line(&format!("{volume}: {state}")));
            let proxy = access::plan_proxy(&plan)?;
            let (volumes, identities) = crate::clusters::volumes(
                &args.kube,
                plan.certs.as_deref(),
                (&plan.name, Some(clusters)),
                proxy,
                on_state,
            )?;
            let volumes = Arc::new(volumes);
            *made.lock().expect("clusters lock") = Some(volumes.clone());
            if clusters.every_claim {
                let clusters = clusters.clone();
                let source = volumes.cluster(clusters.contexts.source.as_deref()).await?;
                add_every_claim(&mut plan, &clusters, &source, printer).await?;
            }
            Some((volumes, identities))
        }
        None => None,
    };
    let skipped = add_found_images(&mut plan, &args.kube, printer).await?;
    let mut new_report = Report::new(&plan, stage);
    new_report.images_skipped = skipped.into_iter().map(Into::into).collect();
    *report.lock().expect("report lock") = Some(new_report);
    if !args.skip_preflight {
        let checks = match &clusters {
            Some(_) => preflight::check_cluster_volumes(&plan, &args.kube).await,
            None => preflight::check_plan(&plan, &WrittenLocations, Thresholds::from(&args.checks)).await,
        };
        if checks.failures() > 0 {
            checks.print(global.output);
            bail!(
                "preflight: {} of {} checks failed (table above); nothing ran. Fix them, or pass `--skip-preflight` to run anyway",
                checks.failures(),
                checks.0.len()
            );
        }
    }
    let identity = match &clusters {
        Some((_, identities)) => Some(identities.coordinator.clone()),
        None => access::plan_identity(&plan)?,
    };
    let proxy = access::plan_proxy(&plan)?;
    let hooks: Arc<dyn HookRunner> = match (&plan.clusters, &identity) {
        (Some(clusters), Some(identity)) => {
            let migration = Migration::new(identity.migration_id(), &plan.name)
                .map_err(|e| anyhow!("the migration id `{}` is not a label value", e.id))?;
            let access = crate::clusters::cluster_access(args.kube.kubeconfig.as_ref());
            let jobs = Arc::new(KubeHooks::new(access, clusters.contexts.clone(), migration));
            *hooks_made.lock().expect("hooks lock") = Some(jobs.clone());
            jobs
        }
        _ => Arc::new(LocalHooks),
    };
    let workloads: Box<dyn Workloads> = match &plan.clusters {
        Some(clusters) => Box::new(
            KubeWorkloads::new(
                crate::clusters::cluster_access(args.kube.kubeconfig.as_ref()),
                clusters.contexts.clone(),
            )
            .with_timeout(Duration::from_secs(args.quiesce_timeout)),
        ),
        None => Box::new(NoWorkloads),
    };
    // A cluster plan's final run is kept in the source cluster, so that a rerun resumes it.
    let log: Box<dyn RunLog> = match &plan.clusters {
        Some(clusters) => Box::new(ClusterRunLog::new(
            crate::clusters::cluster_access(args.kube.kubeconfig.as_ref()),
            clusters.contexts.source.clone(),
            args.kube.agents_namespace.clone(),
        )),
        None => Box::new(NoRunLog),
    };
    *executed = true;
    let run = Run { stage, dry_run: args.dry_run, restart: args.restart };
    let front = Arc::new(FrontEnd { printer: printer.clone(), report: report.clone() });
    let runtime = Runtime {
        hooks: &*hooks,
        volumes: clusters.as_ref().map_or(&WrittenLocations as &dyn VolumeResolver, |(volumes, _)| &**volumes),
        images: &*front,
        workloads: &*workloads,
        observer: front.clone(),
        log: &*log,
        identity,
        proxy,
    };
    mover_plan::execute(&plan, run, &runtime).await?;
    if front.with_report(|report| !report.quiesced.is_empty()) && !printer.is_json() {
        printer.text_line(&format!(
            "hint: `mover plan rollback {}` starts the source's workloads again",
            args.plan.display()
        ));
    }
    Ok(())
}

/// Adds the images the plan's namespaces use from the source cluster's internal registry
/// (`images: {fromNamespaces: true}`), showing each copy and each image left out; returns the
/// ones left out.
pub(crate) async fn add_found_images(
    plan: &mut Plan,
    kube: &crate::args::KubeArgs,
    printer: &PlanPrinter,
) -> anyhow::Result<Vec<SkippedImage>> {
    let (Some(_), Some(clusters)) = (&plan.image_discovery, &plan.clusters) else { return Ok(Vec::new()) };
    let finder =
        KubeImages::new(crate::clusters::cluster_access(kube.kubeconfig.as_ref()), clusters.contexts.source.clone());
    let found = finder.find(plan).await.context("finding the images of the plan's namespaces failed; nothing ran")?;
    for image in &found.images {
        let (source, destination) = image.transfer.ends();
        printer.text_line(&format!("image {source} -> {destination} (used by {})", image.used_by.join(", ")));
    }
    for image in &found.skipped {
        printer.text_line(&format!(
            "image {} skipped: {} (used by {})",
            image.reference,
            image.reason,
            image.used_by.join(", ")
        ));
    }
    if found.images.is_empty() {
        printer.text_line(&format!(
            "no image of the namespaces ({}) is in the source cluster's internal registry: no image is copied",
            plan.namespaces.join(", ")
        ));
    }
    plan.add_found_images(&found);
    Ok(found.skipped)
}

/// Where a run leaves what it made in clusters, for the cleanup after it (however it ends).
type MadeInClusters = Arc<Mutex<Option<Arc<KubeVolumes>>>>;

/// Where a run leaves its hook runner of a plan with clusters, whose running Jobs go however
/// the run ends.
type HooksInClusters = Arc<Mutex<Option<Arc<KubeHooks>>>>;

/// Adds a volume for every Bound claim of the plan's namespaces but `exclude:`; says which
/// claims are left out because they are not bound.
pub(crate) async fn add_every_claim(
    plan: &mut Plan,
    clusters: &Clusters,
    cluster: &Cluster,
    printer: &PlanPrinter,
) -> anyhow::Result<()> {
    for namespace in &plan.namespaces {
        let (bound, other) = claims::claims_in(cluster, namespace).await?;
        for (name, phase) in other {
            printer.text_line(&format!("{namespace}/{name}: left out, it is {phase}, not Bound"));
        }
        for name in bound {
            if !clusters.exclude.contains(&format!("{namespace}/{name}")) {
                plan.volumes.push(plan::claim_volume(clusters, namespace, &name));
            }
        }
    }
    if plan.volumes.is_empty() && plan.image_discovery.is_none() {
        bail!(
            "no Bound PersistentVolumeClaim in the plan's namespaces ({}) of context `{}`: nothing to migrate",
            plan.namespaces.join(", "),
            cluster.context
        );
    }
    Ok(())
}

/// What `plan run` shows and records while the executor runs: the printer's live lines and the
/// report's entries, and the image transfers (through the CLI's registry access).
struct FrontEnd {
    printer: PlanPrinter,
    report: Arc<Mutex<Option<Report>>>,
}

impl FrontEnd {
    /// `f` on the report (there is one once the plan loaded, before the executor starts).
    fn with_report<R>(&self, f: impl FnOnce(&mut Report) -> R) -> R {
        f(self.report.lock().expect("report lock").as_mut().expect("a loaded plan has a report"))
    }
}

impl Observer for FrontEnd {
    fn notice(&self, text: &str) {
        self.printer.text_line(text);
    }

    fn quiesced(&self, workloads: &[String]) {
        self.with_report(|report| report.quiesced = workloads.to_vec());
    }

    fn hook_started(&self, hook: &Hook) {
        self.printer.hook_started(hook);
    }

    fn hook_line(&self, hook: &Hook, line: &str) {
        self.printer.hook_line(hook, line);
    }

    fn hook_finished(&self, hook: &Hook, result: &Result<HookOutcome, HookError>, elapsed: Duration) {
        let shown = self.with_report(|report| {
            let entry = report.hook_mut(&hook.name);
            entry.elapsed_s = elapsed.as_secs_f64();
            entry.result = match result {
                Ok(_) => StepResult::Succeeded,
                Err(HookError::TimedOut { .. } | HookError::Remote { timed_out: true, .. }) => StepResult::TimedOut,
                Err(_) => StepResult::Failed,
            };
            entry.exit_code = match result {
                Ok(_) => Some(0),
                Err(HookError::Failed { code, .. } | HookError::Remote { code, .. }) => *code,
                Err(_) => entry.exit_code,
            };
            entry.result.to_string()
        });
        self.printer.hook_finished(hook, &shown, elapsed);
    }

    fn volume_reporter(&self, _index: usize, volume: &VolumePlan, dry_run: bool) -> SharedReporter {
        self.printer.volume(&volume.name, dry_run)
    }

    fn step_finished(&self, record: &StepRecord) {
        self.with_report(|report| report.step(record));
    }

    fn volume_finished(&self, index: usize, _volume: &VolumePlan, result: &anyhow::Result<Summary>) {
        let entry = self.with_report(|report| {
            let entry = &mut report.volumes[index];
            match result {
                Ok(summary) => {
                    entry.record(summary);
                    if !self.printer.is_json() {
                        for error in &summary.errors {
                            crate::output::eprintln(&format!("error: volume `{}`: {error}", entry.name));
                        }
                    }
                }
                Err(error) => {
                    entry.result = StepResult::Failed;
                    entry.error = Some(format!("{error:#}"));
                }
            }
            entry.clone()
        });
        self.printer.volume_finished(&entry);
    }
}

impl ImageTransfers for FrontEnd {
    fn transfer_all<'a>(&'a self, plan: &'a Plan, proxy: Option<&'a Proxy>) -> LocalBoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.transfer_images(plan, proxy))
    }
}

impl FrontEnd {
    async fn transfer_images(&self, plan: &Plan, proxy: Option<&Proxy>) -> anyhow::Result<()> {
        if plan.images.is_empty() {
            return Ok(());
        }
        let registries = access::read_token_files(&plan.registries)?;
        // Run in this task, at most `concurrency.images` at once (the copies borrow the plan).
        let mut running = futures_util::stream::iter(plan.images.iter().enumerate())
            .map(|(index, transfer)| {
                let reporter = self.printer.image(transfer.ends().0);
                let registries = &registries;
                async move { (index, transfer_image(plan, transfer, registries, proxy, reporter).await) }
            })
            .buffer_unordered(plan.image_concurrency);
        let mut failures = Vec::new();
        while let Some((index, (summary, result))) = running.next().await {
            let entry = self.with_report(|report| {
                let entry = &mut report.images[index];
                entry.record(&summary);
                if let Err(error) = result {
                    entry.result = StepResult::Failed;
                    entry.error = Some(format!("{error:#}"));
                    failures.push(error.context(format!("image {} `{}` failed", entry.kind, entry.source)));
                } else if !summary.errors.is_empty() {
                    failures.push(anyhow!("image sync `{}`: {}", entry.source, summary.errors.join("; ")));
                }
                entry.clone()
            });
            self.printer.image_finished(&entry);
        }
        match failures.len() {
            0 => Ok(()),
            n => {
                let first = failures.remove(0);
                Err(first.context(format!("{n} image transfer(s) failed; the post-transfer hooks did not run")))
            }
        }
    }
}

/// What to say when the exposed internal registry refuses the service account's token.
fn refused_token(discovery: &ImageDiscovery) -> String {
    let (namespace, name) = &discovery.service_account;
    format!(
        "the source cluster's internal registry refused the token of service account `{namespace}/{name}` from the \
         TokenRequest API ({}s lifetime): it has expired (run again for a new one, or raise `images.tokenLifetime`), or \
         the account may not pull from the image's namespace (on OpenShift: `oc policy add-role-to-user \
         system:image-puller system:serviceaccount:{namespace}:{name} -n NAMESPACE`)",
        discovery.token_lifetime.as_secs()
    )
}

/// One image transfer: a copy, or a sync of the listed tags (all when none are listed). The
/// exposed internal registry is reached with its own access (the token, the cluster's CA).
async fn transfer_image(
    plan: &Plan,
    transfer: &ImageTransfer,
    registries: &Sides<RegistrySide>,
    proxy: Option<&Proxy>,
    reporter: SharedReporter,
) -> (ImageSummary, anyhow::Result<()>) {
    let session = Session::new(reporter);
    let result = async {
        let (source, destination) = transfer.ends();
        let (source, destination) = (source.parse::<ImageRef>()?, destination.parse::<ImageRef>()?);
        let max = mover_engine::image::manifest::MAX_MANIFEST_BYTES;
        let exposed = match &source {
            ImageRef::Registry { repository, .. } => plan.exposed_access(&repository.registry),
            ImageRef::Layout { .. } => None,
        };
        let from = access::endpoint_for(&source, exposed.unwrap_or(&registries.source), Side::Source, proxy, max, false)?;
        let to = access::endpoint_for(&destination, &registries.target, Side::Target, proxy, max, false)?;
        let options = mover_engine::image::CopyOptions::default();
        let outcome = match transfer {
            ImageTransfer::Copy { .. } => {
                let (version, tag) = access::versions(&source, &destination);
                mover_engine::image::copy_image(&session, &from, version.as_ref(), &to, tag.as_deref(), &options)
                    .await
                    .map(drop)
            }
            ImageTransfer::Sync { tags, .. } => {
                let tags = (!tags.is_empty())
                    .then(|| {
                        let names: Vec<String> = tags.iter().map(|t| regex::escape(t)).collect();
                        regex::Regex::new(&format!("^({})$", names.join("|")))
                    })
                    .transpose()?;
                mover_engine::image::sync_images(&session, &from, &to, &options, &tags.into(), None).await
            }
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(error) => {
                let refused = matches!(&error, ImageError::Unauthorized { registry, .. } if exposed.is_some() && plan.exposed_access(registry).is_some());
                let explained = access::explain(error, proxy).await;
                match (&plan.image_discovery, refused) {
                    (Some(discovery), true) => Err(explained.context(refused_token(discovery))),
                    _ => Err(explained),
                }
            }
        }
    }
    .await;
    (session.summary(), result)
}
