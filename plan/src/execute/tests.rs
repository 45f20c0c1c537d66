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
    Hook, HookAction, HookRunner, ImageTransfers, Location, Observer, VolumeOptions, Workloads, WrittenLocations,
};

/// Records each hook with whether the target already holds the copied file.
struct Recorder {
    target_file: PathBuf,
    log: Mutex<Vec<String>>,
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
        Box::pin(async { Ok(HookOutcome { elapsed: Duration::ZERO, tail: Vec::new() }) })
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

struct Silent;

impl Observer for Silent {
    fn notice(&self, _: &str) {}
    fn hook_started(&self, _: &Hook) {}
    fn hook_line(&self, _: &Hook, _: &str) {}
    fn hook_finished(&self, _: &Hook, _: &Result<HookOutcome, HookError>, _: Duration) {}
    fn volume_reporter(&self, _: usize, _: &VolumePlan, _: bool) -> SharedReporter {
        Arc::new(mover_engine::progress::NoProgress)
    }
    fn volume_finished(&self, _: usize, _: &VolumePlan, _: &anyhow::Result<Summary>) {}
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
        hooks,
        clusters: None,
    }
}

async fn run_plan(stage: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::create_dir(dir.path().join("dst")).unwrap();
    std::fs::write(dir.path().join("src/file"), b"x").unwrap();
    // File order deliberately scrambled: the phase decides, not the position.
    let plan = plan(
        dir.path(),
        vec![
            hook("post-restore", Phase::PostRestore, false),
            hook("pre-restore", Phase::PreRestore, false),
            hook("post-backup", Phase::PostBackup, true),
            hook("pre-backup", Phase::PreBackup, false),
        ],
    );
    let recorder = Recorder { target_file: dir.path().join("dst/file"), log: Mutex::default() };
    let runtime = Runtime {
        hooks: &recorder,
        volumes: &WrittenLocations,
        images: &NoImages,
        workloads: &recorder,
        observer: Arc::new(Silent),
        identity: None,
        proxy: None,
    };
    execute(&plan, Run { stage, dry_run: false }, &runtime).await.unwrap();
    assert!(dir.path().join("dst/file").exists(), "the volume was not copied");
    recorder.log.into_inner().unwrap()
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
    let source = Location::Agent { addr: "127.0.0.1:1".into(), volume: "v".into() };
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
