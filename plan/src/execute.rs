//! The executor: a plan's hooks and transfers in MTC's order (mig-controller `task.go`, Final
//! itinerary).
//!
//! 1. `PreBackup` hooks;
//! 2. in a final run, the source's applications are stopped ([`crate::Workloads::quiesce`]), and
//!    stay stopped after the run (as MTC leaves the source quiesced after a final migration);
//! 3. the volume copies (at most `concurrency.volumes` at once) and the image transfers (at most
//!    `concurrency.images` at once), at the same time;
//! 4. `PostBackup` hooks, then `PreRestore` hooks, then `PostRestore` hooks.
//!
//! Each step's start, end and outcome go into a [`RunRecord`] (the observer sees each step as it
//! ends); a final run's record is kept in the runtime's [`crate::RunLog`], and a final run that
//! stopped before its end is resumed by the next one ([`crate::record`]).
//!
//! Hooks run in final runs only, as MTC runs none in stage migrations; a hook with
//! `run_in_stage_runs` runs in stage runs too. A failing hook stops the plan before anything after
//! it runs; so does a failing transfer (no later hook runs). A dry run copies volumes only.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use mover_engine::progress::Summary;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::dispatch::{DispatchError, Peers, copy_volume};
use crate::model::{Phase, Plan, Side, VolumePlan};
use crate::record::{RunRecord, Step};
use crate::runtime::Runtime;

/// How the plan runs: a stage or final run, for real or dry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    /// A stage run: vanished files are warnings, and only hooks marked for stage runs run.
    pub stage: bool,
    /// Only list what the volume copies would change.
    pub dry_run: bool,
    /// A final run starts from the beginning even when the last one stopped before its end.
    pub restart: bool,
}

/// Runs `plan`; the error says what failed and what did not run after it.
pub async fn execute(plan: &Plan, run: Run, runtime: &Runtime<'_>) -> anyhow::Result<()> {
    let observer = &runtime.observer;
    if run.dry_run {
        // Hooks act on the applications and images write to registries: a preview runs neither.
        let (hooks, images) = (plan.hooks.len(), plan.images.len());
        if hooks + images > 0 {
            observer.notice(&format!(
                "dry run: {hooks} hooks and {images} image transfers are not run (listed as `not run` in the report)"
            ));
        }
        return transfer_volumes(plan, run, runtime).await;
    }
    let skipped = plan.hooks.iter().filter(|hook| !hook.runs_in(run.stage)).count();
    if skipped > 0 {
        observer.notice(&format!(
            "stage run: {skipped} hooks are not run (hooks run in final runs, as in MTC; `runInStageRuns: true` runs one in stage runs too)"
        ));
    }
    let mut record = start_record(plan, run, runtime).await?;
    let mut quiesced = Vec::new();
    let mut keeping = true;
    for step in Step::ALL {
        if record.is_done(step) || !applies(plan, step, run) {
            continue;
        }
        record.begin(step);
        keep_record(plan, run, runtime, (&record, &mut keeping)).await;
        let result = match step {
            Step::Quiesce => quiesce(plan, runtime).await.map(|stopped| quiesced = stopped),
            step => run_step(plan, step, run, runtime).await,
        };
        let entry = record.end(step, result.is_ok());
        keep_record(plan, run, runtime, (&record, &mut keeping)).await;
        observer.step_finished(&entry);
        result?;
    }
    record.finished = true;
    keep_record(plan, run, runtime, (&record, &mut keeping)).await;
    if !quiesced.is_empty() {
        observer.notice(&format!(
            "the source stays quiesced: {} workload(s) stopped before the final copy keep their recorded values for a rollback",
            quiesced.len()
        ));
    }
    Ok(())
}

/// The record this run adds to: a final run continues the unfinished final run the log kept
/// (its steps done then are shown as such), anything else starts a new one.
async fn start_record(plan: &Plan, run: Run, runtime: &Runtime<'_>) -> anyhow::Result<RunRecord> {
    if run.stage {
        return Ok(RunRecord::new(&plan.name, false));
    }
    let earlier = if run.restart {
        None
    } else {
        runtime.log.load(plan).await.context("cannot read what the last final run of the plan did")?
    };
    let record = RunRecord::resume_or_new(&plan.name, earlier);
    let done: Vec<String> = record.done_before().map(|step| step.to_string()).collect();
    if !done.is_empty() {
        runtime.observer.notice(&format!(
            "resuming the final run started {}, which stopped before its end: {} done then, not run again",
            record.started,
            done.join(", ")
        ));
    }
    for entry in &record.steps {
        runtime.observer.step_finished(entry);
    }
    Ok(record)
}

/// Keeps a final run's record for the next run, while `keeping`. A record that cannot be kept
/// costs a resume its shortcut, not the run: the user is told once, and the run stops trying.
async fn keep_record(plan: &Plan, run: Run, runtime: &Runtime<'_>, (record, keeping): (&RunRecord, &mut bool)) {
    if run.stage || !*keeping {
        return;
    }
    if let Err(error) = runtime.log.save(plan, record).await {
        *keeping = false;
        runtime.observer.notice(&format!(
            "warning: cannot keep what this final run did ({error}); a rerun after a failure starts from the beginning"
        ));
    }
}

/// Whether `step` has anything to do in this run: a hook phase with hooks that run, the
/// quiesce in a final run of a plan with clusters, the transfers always.
fn applies(plan: &Plan, step: Step, run: Run) -> bool {
    match step {
        Step::Quiesce => !run.stage && plan.clusters.is_some(),
        Step::Transfers => true,
        step => step.phase().is_some_and(|phase| plan.hooks_of(phase).any(|hook| hook.runs_in(run.stage))),
    }
}

async fn run_step(plan: &Plan, step: Step, run: Run, runtime: &Runtime<'_>) -> anyhow::Result<()> {
    if let Some(phase) = step.phase() {
        return run_hooks(plan, phase, run, runtime).await;
    }
    // Volumes and images move at the same time, each within its own concurrency limit.
    let (volumes, images) =
        tokio::join!(transfer_volumes(plan, run, runtime), runtime.images.transfer_all(plan, runtime.proxy.as_ref()));
    volumes?;
    images
}

/// Stops the source's workloads before a final run's copies; says what it stopped.
async fn quiesce(plan: &Plan, runtime: &Runtime<'_>) -> anyhow::Result<Vec<String>> {
    let observer = &*runtime.observer;
    let quiesced = runtime
        .workloads
        .quiesce(plan, observer)
        .await
        .context("quiescing the source's workloads failed; no volume was copied and no later hook ran")?;
    for line in &quiesced {
        observer.notice(&format!("quiesced {line}"));
    }
    observer.quiesced(&quiesced);
    Ok(quiesced)
}

async fn run_hooks(plan: &Plan, phase: Phase, run: Run, runtime: &Runtime<'_>) -> anyhow::Result<()> {
    let observer = &runtime.observer;
    for hook in plan.hooks_of(phase).filter(|hook| hook.runs_in(run.stage)) {
        observer.hook_started(hook);
        let started = Instant::now();
        let on_line = |line: &str| observer.hook_line(hook, line);
        let result = runtime.hooks.run(plan, hook, &on_line).await;
        observer.hook_finished(hook, &result, started.elapsed());
        result.map_err(|error| {
            anyhow::Error::new(error).context(format!(
                "hook `{}` ({} phase, {} side) failed; the plan stopped there and nothing after it ran",
                hook.name, hook.phase, hook.side
            ))
        })?;
    }
    Ok(())
}

/// Copies one volume: its ends resolved, then the dispatch.
async fn transfer_volume(volume: &VolumePlan, run: Run, runtime: &Runtime<'_>, index: usize) -> Task {
    let ends = async {
        let source = runtime.volumes.resolve(volume, Side::Source).await?;
        let target = runtime.volumes.resolve(volume, Side::Target).await?;
        anyhow::Ok((source, target))
    };
    let (source, target) = match ends.await {
        Ok(ends) => ends,
        Err(error) => return Task::Ready(Err(error)),
    };
    let (identity, proxy) = (runtime.identity.clone(), runtime.proxy.clone());
    let options = volume.copy_options(run.stage, run.dry_run);
    let observer = runtime.observer.clone();
    let volume = volume.clone();
    Task::Copy(Box::pin(async move {
        let reporter = observer.volume_reporter(index, &volume, run.dry_run);
        // Plans refuse agent-to-local volumes when they are read: no local receiver here.
        let peers = Peers { identity: identity.as_ref(), proxy: proxy.as_ref(), receiver: None };
        copy_volume(&source, &target, options, peers, reporter).await.map_err(|error| match error {
            // The engine's error itself, so that front ends find it by type for their hints.
            DispatchError::Copy(error) => anyhow::Error::new(error),
            DispatchError::NoIdentity => anyhow::anyhow!("the plan has no `certs:` directory"),
            other => anyhow::Error::new(other),
        })
    }))
}

/// A volume's copy, or why it cannot start.
enum Task {
    Ready(anyhow::Result<Summary>),
    Copy(futures_util::future::BoxFuture<'static, anyhow::Result<Summary>>),
}

async fn transfer_volumes(plan: &Plan, run: Run, runtime: &Runtime<'_>) -> anyhow::Result<()> {
    let limit = Arc::new(Semaphore::new(plan.volume_concurrency));
    let mut tasks = JoinSet::new();
    for (index, volume) in plan.volumes.iter().enumerate() {
        let task = transfer_volume(volume, run, runtime, index).await;
        let limit = limit.clone();
        tasks.spawn(async move {
            let result = match task {
                Task::Ready(result) => result,
                Task::Copy(copy) => {
                    let _permit = limit.acquire_owned().await.expect("the semaphore is never closed");
                    copy.await
                }
            };
            (index, result)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined.context("a volume copy task failed")?;
        let volume = &plan.volumes[index];
        runtime.observer.volume_finished(index, volume, &result);
        match result {
            Ok(summary) if summary.is_success() => {}
            Ok(summary) => failures.push((
                volume.name.clone(),
                anyhow::anyhow!("{} file(s) could not be copied: {}", summary.errors.len(), summary.errors.join("; ")),
            )),
            Err(error) => failures.push((volume.name.clone(), error)),
        }
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

#[cfg(test)]
mod tests;
