//! `mover plan run PLAN.yaml [--stage | --final]`: hooks and transfers in MTC's order.
//!
//! `PreBackup` hooks, `PreRestore` hooks, then the volume copies (in parallel, at most
//! `concurrency.volumes` at once, each through the engine's client functions), then `PostBackup`
//! and `PostRestore` hooks. A failing hook stops the plan before anything after it runs; so does a
//! failing copy (the post hooks are not run). The report is printed, and written as JSON with
//! `--report FILE`, however the plan ends: a plan that does not load, a failed preflight, a
//! failed hook or copy, or an interruption (SIGINT, SIGTERM: the report says `cancelled`, and
//! `mover` exits 130).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use mover_engine::certs::{Identity, Role};
use mover_engine::client::{self, CopyError};
use mover_engine::hooks::{self, HookCommand, HookError};
use mover_engine::progress::Summary;
use mover_engine::tunnel::Proxy;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Outcome;
use crate::args::{GlobalArgs, PlanRunArgs};
use crate::commands::copy::resolve_proxy;
use crate::commands::image;
use crate::commands::preflight::{self, Thresholds};
use crate::location::Location;
use crate::plan::report::{ImageReport, Report, StepResult};
use crate::plan::{self, HookAction, Phase, Plan, VolumePlan};
use crate::render::plan::PlanPrinter;
use mover_engine::image::{ImageRef, ImageSummary, Session};

/// Loads the coordinator's identity when the plan involves agents.
pub(crate) fn plan_identity(plan: &Plan) -> anyhow::Result<Option<Identity>> {
    match &plan.certs {
        Some(dir) if plan.uses_agents() => Identity::load(dir, Role::Coordinator)
            .with_context(|| format!("while loading the coordinator certificate from `{}`", dir.display()))
            .map(Some),
        _ => Ok(None),
    }
}

/// The plan's proxy, with its password.
pub(crate) fn plan_proxy(plan: &Plan) -> anyhow::Result<Option<Proxy>> {
    resolve_proxy(plan.proxy.as_deref(), plan.proxy_password_file.as_deref())
}

pub async fn run(args: PlanRunArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let stage = args.stage && !args.final_run;
    let printer = PlanPrinter::new(global);
    let started = Instant::now();
    let (mut report, mut executed) = (None, false);
    let (result, cancelled) = {
        let plan_run = load_and_run(&args, global, stage, &printer, &mut report, &mut executed);
        tokio::select! {
            result = plan_run => (result, false),
            () = crate::cancelled() => (Err(anyhow!("interrupted: the plan stopped where it was")), true),
        }
    };
    printer.finish();
    let mut report = report.unwrap_or_else(|| Report::unloaded(&args.plan.display().to_string(), stage));
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
    printer: &PlanPrinter,
    report: &mut Option<Report>,
    executed: &mut bool,
) -> anyhow::Result<()> {
    let plan = plan::load(&args.plan)?;
    let report = report.insert(Report::new(&plan, stage));
    if !args.skip_preflight {
        let checks = preflight::check_plan(&plan, Thresholds::from(&args.checks)).await;
        if checks.failures() > 0 {
            checks.print(global.output);
            bail!(
                "preflight: {} of {} checks failed (table above); nothing ran. Fix them, or pass `--skip-preflight` to run anyway",
                checks.failures(),
                checks.0.len()
            );
        }
    }
    let identity = plan_identity(&plan)?;
    let proxy = plan_proxy(&plan)?;
    *executed = true;
    let run = Run { stage, dry_run: args.dry_run };
    execute(&plan, run, identity.as_ref(), proxy.as_ref(), printer, report).await
}

/// How the plan runs: a stage or final run, for real or dry.
#[derive(Debug, Clone, Copy)]
struct Run {
    stage: bool,
    dry_run: bool,
}

async fn execute(
    plan: &Plan,
    run: Run,
    identity: Option<&Identity>,
    proxy: Option<&Proxy>,
    printer: &PlanPrinter,
    report: &mut Report,
) -> anyhow::Result<()> {
    if run.dry_run {
        // Hooks act on the applications and images write to registries: a preview runs neither.
        let (hooks, images) = (plan.hooks.len(), plan.images.len());
        if hooks + images > 0 {
            printer.text_line(&format!(
                "dry run: {hooks} hooks and {images} image transfers are not run (listed as `not run` in the report)"
            ));
        }
        return transfer_volumes(plan, run, identity, proxy, printer, report).await;
    }
    run_hooks(plan, Phase::PreBackup, printer, report).await?;
    run_hooks(plan, Phase::PreRestore, printer, report).await?;
    // Volumes and images move at the same time, each within its own concurrency limit.
    let (volumes, images) = tokio::join!(
        transfer_volumes(plan, run, identity, proxy, printer, report),
        transfer_images(plan, proxy, printer)
    );
    let (image_reports, images) = images;
    report.images = image_reports;
    volumes?;
    images?;
    run_hooks(plan, Phase::PostBackup, printer, report).await?;
    run_hooks(plan, Phase::PostRestore, printer, report).await
}

async fn run_hooks(plan: &Plan, phase: Phase, printer: &PlanPrinter, report: &mut Report) -> anyhow::Result<()> {
    for hook in plan.hooks_of(phase) {
        let command = match &hook.action {
            HookAction::Command(argv) => HookCommand::command(argv, plan.base_dir(), hook.timeout),
            HookAction::Playbook(playbook) => HookCommand::playbook(playbook, plan.base_dir(), hook.timeout),
        }
        .with_env(plan.hook_environment());
        printer.hook_started(hook);
        let started = Instant::now();
        let result = hooks::run_hook(&command, &|line| printer.hook_line(hook, line)).await;
        let entry = report.hook_mut(&hook.name);
        entry.elapsed_s = started.elapsed().as_secs_f64();
        entry.result = match &result {
            Ok(_) => StepResult::Succeeded,
            Err(HookError::TimedOut { .. }) => StepResult::TimedOut,
            Err(_) => StepResult::Failed,
        };
        if let Err(HookError::Failed { code, .. }) = &result {
            entry.exit_code = *code;
        } else if result.is_ok() {
            entry.exit_code = Some(0);
        }
        printer.hook_finished(hook, &entry.result.to_string(), started.elapsed());
        result.map_err(|error| {
            anyhow::Error::new(error).context(format!(
                "hook `{}` ({} phase, {} side) failed; the plan stopped there and nothing after it ran",
                hook.name, hook.phase, hook.side
            ))
        })?;
    }
    Ok(())
}

/// Copies one volume with the engine's client function for its form.
async fn copy_volume(
    volume: VolumePlan,
    run: Run,
    identity: Option<Identity>,
    proxy: Option<Proxy>,
    reporter: Arc<dyn mover_engine::progress::Reporter>,
) -> anyhow::Result<Summary> {
    let options = volume.sync_options(run.stage, run.dry_run);
    let identity = || identity.as_ref().context("the plan has no `certs:` directory");
    let result: Result<Summary, CopyError> = match (&volume.source, &volume.target) {
        (Location::Local(from), Location::Local(to)) => {
            if run.dry_run && !to.is_dir() {
                bail!("{}", super::copy::missing_target_in_dry_run(to));
            }
            client::copy_local(from, to, options, reporter).await
        }
        (Location::Local(from), Location::Agent { addr, volume }) => {
            client::copy_to_agent(identity()?, from, (addr, volume), proxy.as_ref(), options, reporter).await
        }
        (Location::Agent { addr: from, volume: from_volume }, Location::Agent { addr: to, volume: to_volume }) => {
            client::push_between_agents(
                identity()?,
                (from, from_volume),
                (to, to_volume),
                proxy.as_ref(),
                options,
                reporter,
            )
            .await
        }
        (Location::Agent { .. }, Location::Local(_)) => {
            bail!("copying from an agent into a local directory is not supported")
        }
    };
    Ok(result?)
}

async fn transfer_volumes(
    plan: &Plan,
    run: Run,
    identity: Option<&Identity>,
    proxy: Option<&Proxy>,
    printer: &PlanPrinter,
    report: &mut Report,
) -> anyhow::Result<()> {
    let limit = Arc::new(Semaphore::new(plan.volume_concurrency));
    let mut tasks = JoinSet::new();
    for (index, volume) in plan.volumes.iter().enumerate() {
        let (limit, volume) = (limit.clone(), volume.clone());
        let (identity, proxy) = (identity.cloned(), proxy.cloned());
        let printer = printer.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("the semaphore is never closed");
            let reporter = printer.volume(&volume.name, run.dry_run);
            (index, copy_volume(volume, run, identity, proxy, reporter).await)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined.context("a volume copy task failed")?;
        let entry = &mut report.volumes[index];
        match result {
            Ok(summary) => {
                entry.record(&summary);
                if !printer.is_json() {
                    for error in &summary.errors {
                        crate::output::eprintln(&format!("error: volume `{}`: {error}", entry.name));
                    }
                }
                if !summary.is_success() {
                    failures.push((
                        entry.name.clone(),
                        anyhow::anyhow!(
                            "{} file(s) could not be copied: {}",
                            summary.errors.len(),
                            summary.errors.join("; ")
                        ),
                    ));
                }
            }
            Err(error) => {
                entry.result = StepResult::Failed;
                entry.error = Some(format!("{error:#}"));
                failures.push((entry.name.clone(), error));
            }
        }
        printer.volume_finished(&report.volumes[index]);
    }
    failures.sort_by(|a, b| a.0.cmp(&b.0));
    match failures.len() {
        0 => Ok(()),
        1 => {
            let (name, error) = failures.remove(0);
            Err(error.context(format!("volume `{name}` failed; the post-transfer hooks did not run")))
        }
        n => {
            let names: Vec<String> = failures.iter().map(|(name, _)| format!("`{name}`")).collect();
            let (_, first) = failures.remove(0);
            Err(first.context(format!(
                "{n} volumes failed ({}); the post-transfer hooks did not run; the first failure follows",
                names.join(", ")
            )))
        }
    }
}

/// How to reach one side's registry, from the plan (token files read now).
pub(crate) fn registry_access(side: &plan::RegistrySide) -> anyhow::Result<image::Access> {
    let token = side
        .token_file
        .as_deref()
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|token| token.trim().to_owned())
                .with_context(|| format!("while reading the registry token file `{}`", path.display()))
        })
        .transpose()?;
    Ok(image::Access {
        credentials: None,
        token,
        ca_bundle: side.ca_bundle.clone(),
        tls_verify: side.tls_verify,
        plain_http: side.plain_http,
        authfile: side.auth_file.clone(),
    })
}

/// The plan's proxy as a URL for the registries' HTTP client (the password from the file
/// included).
pub(crate) fn proxy_url(proxy: Option<&Proxy>) -> Option<String> {
    let proxy = proxy?;
    let host = if proxy.host.contains(':') { format!("[{}]", proxy.host) } else { proxy.host.clone() };
    Some(match (&proxy.user, &proxy.password) {
        (Some(user), Some(password)) => format!("http://{user}:{password}@{host}:{}", proxy.port),
        (Some(user), None) => format!("http://{user}@{host}:{}", proxy.port),
        _ => format!("http://{host}:{}", proxy.port),
    })
}

/// One image transfer: a copy, or a sync of the listed tags (all when none are listed).
async fn transfer_image(
    transfer: &plan::ImageTransfer,
    access: &[image::Access; 2],
    proxy: Option<&str>,
    reporter: Arc<dyn mover_engine::progress::Reporter>,
) -> (ImageSummary, anyhow::Result<()>) {
    let session = Session::new(reporter);
    let result = async {
        let (source, destination) = match transfer {
            plan::ImageTransfer::Copy { source, destination }
            | plan::ImageTransfer::Sync { source, destination, .. } => {
                (source.parse::<ImageRef>()?, destination.parse::<ImageRef>()?)
            }
        };
        let max = mover_engine::image::manifest::MAX_MANIFEST_BYTES;
        let from = image::endpoint_for(&source, &access[0], image::Side::Source, proxy, max, false)?;
        let to = image::endpoint_for(&destination, &access[1], image::Side::Target, proxy, max, false)?;
        let options = mover_engine::image::CopyOptions::default();
        let outcome = match transfer {
            plan::ImageTransfer::Copy { .. } => {
                let (version, tag) = image::versions(&source, &destination);
                mover_engine::image::copy_image(&session, &from, version.as_ref(), &to, tag.as_deref(), &options)
                    .await
                    .map(drop)
            }
            plan::ImageTransfer::Sync { tags, .. } => {
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
            Err(error) => Err(image::explain(error, proxy).await),
        }
    }
    .await;
    (session.summary(), result)
}

async fn transfer_images(
    plan: &Plan,
    proxy: Option<&Proxy>,
    printer: &PlanPrinter,
) -> (Vec<ImageReport>, anyhow::Result<()>) {
    let mut reports: Vec<ImageReport> = plan.images.iter().map(ImageReport::not_run).collect();
    if plan.images.is_empty() {
        return (reports, Ok(()));
    }
    let access = match (registry_access(&plan.registries[0]), registry_access(&plan.registries[1])) {
        (Ok(source), Ok(target)) => [source, target],
        (Err(error), _) | (_, Err(error)) => return (reports, Err(error)),
    };
    let proxy = proxy_url(proxy);
    // Run in this task, at most `concurrency.images` at once (the copies borrow the plan).
    let names: Vec<String> = reports.iter().map(|r| r.source.clone()).collect();
    let mut running = futures_util::stream::iter(plan.images.iter().enumerate())
        .map(|(index, transfer)| {
            let reporter = printer.image(&names[index]);
            let (access, proxy) = (&access, proxy.as_deref());
            async move { (index, transfer_image(transfer, access, proxy, reporter).await) }
        })
        .buffer_unordered(plan.image_concurrency);
    let mut failures = Vec::new();
    while let Some((index, (summary, result))) = running.next().await {
        let entry = &mut reports[index];
        entry.record(&summary);
        if let Err(error) = result {
            entry.result = StepResult::Failed;
            entry.error = Some(format!("{error:#}"));
            failures.push(error.context(format!("image {} `{}` failed", entry.kind, entry.source)));
        } else if !summary.errors.is_empty() {
            failures.push(anyhow::anyhow!("image sync `{}`: {}", entry.source, summary.errors.join("; ")));
        }
        printer.image_finished(&reports[index]);
    }
    let result = match failures.len() {
        0 => Ok(()),
        n => {
            let first = failures.remove(0);
            Err(first.context(format!("{n} image transfer(s) failed; the post-transfer hooks did not run")))
        }
    };
    (reports, result)
}
