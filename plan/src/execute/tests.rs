//! The executor's order and stage rule, with a recording hook runner and local directories.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::{BoxFuture, LocalBoxFuture};
use mover_engine::Compression;
use mover_engine::hooks::{HookError, HookOutcome};
use mover_engine::progress::{SharedReporter, Summary};
use mover_engine::tunnel::Proxy;

use super::*;
use crate::{
    Hook, HookAction, HookRunner, ImageTransfers, Location, NoRunLog, Observer, RunLog, RunRecord, Step, StepOutcome,
    StepRecord, VolumeOptions, Workloads, WrittenLocations,
};

/// Records each hook with whether the target already holds the copied file; the hooks named
/// in `failing` fail.
struct Recorder {
    target_file: PathBuf,
    log: Mutex<Vec<String>>,
    failing: Vec<&'static str>,
}

impl HookRunner for Recorder {
    fn run<'a>(
        &'a self,
        _plan: &'a Plan,
        hook: &'a Hook,
        _on_line: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<HookOutcome, HookError>> {
        let copied = self.target_file.exists();
        self.log.lock().unwrap().push(format!("{} copied={copied}", hook.name));
        let fails = self.failing.contains(&hook.name.as_str());
        Box::pin(async move {
            if fails {
                return Err(HookError::Failed {
                    status: "exited with status 1".into(),
                    code: Some(1),
                    tail: Vec::new(),
                });
            }
            Ok(HookOutcome { elapsed: Duration::ZERO, tail: Vec::new() })
        })
    }
}

/// Quiesce and unquiesce recorded in the same log as the hooks.
impl Workloads for Recorder {
    fn quiesce<'a>(
        &'a self,
        _plan: &'a Plan,
        _observer: &'a dyn Observer,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        let copied = self.target_file.exists();
        self.log.lock().unwrap().push(format!("quiesce copied={copied}"));
        Box::pin(async { Ok(vec!["Deployment a/web: replicas 1 -> 0".to_owned()]) })
    }

    fn unquiesce<'a>(
        &'a self,
        _plan: &'a Plan,
        _observer: &'a dyn Observer,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        self.log.lock().unwrap().push("unquiesce".to_owned());
        Box::pin(async { Ok(Vec::new()) })
    }
}

struct NoImages;

impl ImageTransfers for NoImages {
    fn transfer_all<'a>(&'a self, _: &'a Plan, _: Option<&'a Proxy>) -> LocalBoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Cannot keep anything (a cluster without mover's namespace).
struct Unkept;

impl RunLog for Unkept {
    fn load<'a>(&'a self, _: &'a Plan) -> BoxFuture<'a, anyhow::Result<Option<RunRecord>>> {
        Box::pin(async { Ok(None) })
    }

    fn save<'a>(&'a self, _: &'a Plan, _: &'a RunRecord) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Err(anyhow::anyhow!("no namespace for it")) })
    }
}

/// Keeps the last record in memory, as a cluster keeps it in a `ConfigMap`.
#[derive(Default)]
struct Kept(Mutex<Option<RunRecord>>);

impl RunLog for Kept {
    fn load<'a>(&'a self, _: &'a Plan) -> BoxFuture<'a, anyhow::Result<Option<RunRecord>>> {
        let kept = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(kept) })
    }

    fn save<'a>(&'a self, _: &'a Plan, record: &'a RunRecord) -> BoxFuture<'a, anyhow::Result<()>> {
        *self.0.lock().unwrap() = Some(record.clone());
        Box::pin(async { Ok(()) })
    }
}

/// Sees nothing but the steps and the notices.
#[derive(Default)]
struct Silent(Mutex<Vec<StepRecord>>, Mutex<Vec<String>>);

impl Observer for Silent {
    fn notice(&self, text: &str) {
        self.1.lock().unwrap().push(text.to_owned());
    }
    fn hook_started(&self, _: &Hook) {}
    fn hook_line(&self, _: &Hook, _: &str) {}
    fn hook_finished(&self, _: &Hook, _: &Result<HookOutcome, HookError>, _: Duration) {}
    fn volume_reporter(&self, _: usize, _: &VolumePlan, _: bool) -> SharedReporter {
        Arc::new(mover_engine::progress::NoProgress)
    }
    fn volume_finished(&self, _: usize, _: &VolumePlan, _: &anyhow::Result<Summary>) {}
    fn step_finished(&self, record: &StepRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

fn hook(name: &str, phase: Phase, run_in_stage_runs: bool) -> Hook {
    Hook {
        name: name.into(),
        phase,
        side: phase.default_side(),
        timeout: Duration::from_secs(5),
        action: HookAction::Command(vec!["true".into()]),
        run_in_stage_runs,
        job: None,
    }
}

fn plan(dir: &Path, hooks: Vec<Hook>) -> Plan {
    let options = VolumeOptions {
        stage: false,
        delete: true,
        allow_mass_delete: false,
        checksum: false,
        bwlimit: None,
        compression: Compression::Off,
        selinux: false,
        devices: false,
        fsync: false,
        inplace: false,
        streams: 1,
        cross_mounts: false,
        excludes: Vec::new(),
    };
    Plan {
        path: dir.join("plan.yaml"),
        name: "p".into(),
        namespaces: vec!["a".into()],
        certs: None,
        proxy: None,
        proxy_password_file: None,
        volume_concurrency: 1,
        image_concurrency: 1,
        registries: crate::Sides::default(),
        volumes: vec![VolumePlan {
            name: "v".into(),
            source: Location::Local(dir.join("src")),
            target: Location::Local(dir.join("dst")),
            options,
        }],
        images: Vec::new(),
        image_discovery: None,
        exposed_registry: None,
        hooks,
        clusters: None,
    }
}

async fn run_plan(stage: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder { target_file: dir.path().join("dst/file"), log: Mutex::default(), failing: Vec::new() };
    let runs = run_with(dir.path(), (stage, false), &recorder, &NoRunLog).await;
    runs.unwrap();
    assert!(dir.path().join("dst/file").exists(), "the volume was not copied");
    recorder.log.into_inner().unwrap()
}

/// Runs the test plan in `dir` (made on the first call); the steps and notices the observer saw.
async fn run_with(
    dir: &Path,
    (stage, restart): (bool, bool),
    hooks: &Recorder,
    log: &dyn RunLog,
) -> anyhow::Result<(Vec<StepRecord>, Vec<String>)> {
    if !dir.join("src").exists() {
        std::fs::create_dir(dir.join("src")).unwrap();
        std::fs::create_dir(dir.join("dst")).unwrap();
        std::fs::write(dir.join("src/file"), b"x").unwrap();
    }
    // File order deliberately scrambled: the phase decides, not the position.
    let mut plan = plan(
        dir,
        vec![
            hook("post-restore", Phase::PostRestore, false),
            hook("pre-restore", Phase::PreRestore, false),
            hook("post-backup", Phase::PostBackup, true),
            hook("pre-backup", Phase::PreBackup, false),
        ],
    );
    // Clusters (that the test's runtime stands in for): final runs quiesce.
    plan.clusters = Some(crate::Clusters::default());
    let observer = Arc::new(Silent::default());
    let runtime = Runtime {
        hooks,
        volumes: &WrittenLocations,
        images: &NoImages,
        workloads: hooks,
        observer: observer.clone(),
        log,
        identity: None,
        proxy: None,
    };
    execute(&plan, Run { stage, dry_run: false, restart }, &runtime).await?;
    let steps = std::mem::take(&mut *observer.0.lock().unwrap());
    Ok((steps, std::mem::take(&mut *observer.1.lock().unwrap())))
}

/// A record that cannot be kept costs the resume, not the run; the user is told once.
#[tokio::test]
async fn a_record_that_cannot_be_kept_is_one_warning_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = Recorder { target_file: dir.path().join("dst/file"), log: Mutex::default(), failing: Vec::new() };
    let (seen, notices) = run_with(dir.path(), (false, false), &hooks, &Unkept).await.unwrap();
    let warnings: Vec<_> = notices.iter().filter(|notice| notice.starts_with("warning: cannot keep")).collect();
    assert_eq!(warnings.len(), 1, "{notices:?}");
    assert!(warnings[0].contains("no namespace for it"), "{warnings:?}");
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(hooks.log.lock().unwrap().len(), 5);
}

/// A final run that failed at `PreRestore` is resumed by the next: its `PreBackup` and
/// `PostBackup` hooks do not run again, nor does the quiesce, the copy does, and the record ends
/// finished. A final
/// run after that one starts from the beginning.
#[tokio::test]
async fn a_final_run_that_failed_is_resumed_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let log = Kept::default();
    let failing =
        Recorder { target_file: dir.path().join("dst/file"), log: Mutex::default(), failing: vec!["pre-restore"] };
    let error = run_with(dir.path(), (false, false), &failing, &log).await.unwrap_err();
    assert!(format!("{error:#}").contains("hook `pre-restore` (PreRestore phase"), "{error:#}");
    let kept = log.0.lock().unwrap().clone().unwrap();
    let outcomes: Vec<_> = kept.steps.iter().map(|record| (record.step, record.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            (Step::PreBackup, StepOutcome::Succeeded),
            (Step::Quiesce, StepOutcome::Succeeded),
            (Step::Transfers, StepOutcome::Succeeded),
            (Step::PostBackup, StepOutcome::Succeeded),
            (Step::PreRestore, StepOutcome::Failed),
        ]
    );
    assert!(!kept.finished);

    std::fs::remove_file(dir.path().join("dst/file")).unwrap();
    let fixed = Recorder { target_file: dir.path().join("dst/file"), log: Mutex::default(), failing: Vec::new() };
    let (seen, _) = run_with(dir.path(), (false, false), &fixed, &log).await.unwrap();
    assert_eq!(fixed.log.lock().unwrap().clone(), ["pre-restore copied=true", "post-restore copied=true"]);
    let seen: Vec<_> = seen.iter().map(|record| (record.step, record.outcome)).collect();
    assert_eq!(
        seen,
        [
            (Step::PreBackup, StepOutcome::DoneBefore),
            (Step::Quiesce, StepOutcome::DoneBefore),
            (Step::PostBackup, StepOutcome::DoneBefore),
            (Step::Transfers, StepOutcome::Succeeded),
            (Step::PreRestore, StepOutcome::Succeeded),
            (Step::PostRestore, StepOutcome::Succeeded),
        ]
    );
    let kept = log.0.lock().unwrap().clone().unwrap();
    assert!(kept.finished);

    let again = Recorder { target_file: dir.path().join("dst/file"), log: Mutex::default(), failing: Vec::new() };
    run_with(dir.path(), (false, false), &again, &log).await.unwrap();
    assert_eq!(again.log.lock().unwrap().len(), 5, "a finished final run is not resumed");
}

/// `--restart`: a final run that stopped before its end is not resumed; every hook runs again.
#[tokio::test]
async fn a_restarted_final_run_starts_from_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let log = Kept::default();
    let target_file = dir.path().join("dst/file");
    let failing = Recorder { target_file: target_file.clone(), log: Mutex::default(), failing: vec!["post-restore"] };
    run_with(dir.path(), (false, false), &failing, &log).await.unwrap_err();
    let restarted = Recorder { target_file, log: Mutex::default(), failing: Vec::new() };
    let (seen, _) = run_with(dir.path(), (false, true), &restarted, &log).await.unwrap();
    assert_eq!(restarted.log.lock().unwrap().len(), 5, "every hook runs again, and the quiesce");
    assert!(seen.iter().all(|record| record.outcome == StepOutcome::Succeeded), "{seen:?}");
}

#[tokio::test]
async fn a_final_run_follows_mtcs_final_itinerary() {
    assert_eq!(
        run_plan(false).await,
        [
            "pre-backup copied=false",
            "quiesce copied=false",
            "post-backup copied=true",
            "pre-restore copied=true",
            "post-restore copied=true"
        ]
    );
}

#[tokio::test]
async fn a_stage_run_runs_only_hooks_marked_for_it_and_quiesces_nothing() {
    assert_eq!(run_plan(true).await, ["post-backup copied=true"]);
}

#[test]
fn hook_variables_come_in_both_spellings() {
    let plan = plan(Path::new("/x"), Vec::new());
    let variables = plan.hook_environment();
    for name in ["migplan_name", "MIGRATION_PLAN_NAME"] {
        assert!(variables.contains(&(name.to_owned(), "p".to_owned())), "{variables:?}");
    }
    for name in ["migration_namespaces", "MIGRATION_NAMESPACES"] {
        assert!(variables.contains(&(name.to_owned(), "a".to_owned())), "{variables:?}");
    }
}

#[tokio::test]
async fn agent_to_local_without_a_receiver_is_refused_by_the_dispatch() {
    let source = Location::Agent { addr: "127.0.0.1:1".into(), volume: "v".into(), via: None };
    let target = Location::Local("/nonexistent".into());
    let options = plan(Path::new("/x"), Vec::new()).volumes[0].copy_options(false, false);
    let error = crate::copy_volume(
        &source,
        &target,
        options,
        crate::Peers::default(),
        Arc::new(mover_engine::progress::NoProgress),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, crate::DispatchError::NoReceiver), "{error}");
}
