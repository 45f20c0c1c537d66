//! What an executor needs from its front end: how hooks run ([`HookRunner`]), where a volume's
//! ends are ([`VolumeResolver`]), how images move ([`ImageTransfers`]), how the applications
//! using the volumes stop for a final copy ([`Workloads`]) and who watches ([`Observer`]). The implementations for today's CLI are here too: [`LocalHooks`] (processes
//! and `ansible-playbook` on this machine) and [`WrittenLocations`] (agent URLs and local paths as
//! written). A Kubernetes front end brings Jobs and PVC lookups.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, LocalBoxFuture};
use mover_engine::certs::Identity;
use mover_engine::hooks::{self, HookCommand, HookError, HookOutcome};
use mover_engine::progress::{SharedReporter, Summary};
use mover_engine::tunnel::Proxy;

use crate::location::Location;
use crate::model::{ExposedRegistry, Hook, HookAction, ImageTransfer, Plan, Side, VolumePlan};
use crate::record::{RunLog, StepRecord};

/// Runs one hook to its end.
pub trait HookRunner: Send + Sync {
    /// Runs `hook` of `plan` with the plan's variables ([`Plan::hook_environment`]); `on_line`
    /// sees each output line.
    fn run<'a>(
        &'a self,
        plan: &'a Plan,
        hook: &'a Hook,
        on_line: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<HookOutcome, HookError>>;
}

/// Hooks as processes on this machine: a `command:` runs as given, a `playbook:` with
/// `ansible-playbook -i localhost, -c local`, both in the plan's directory. The plan's variables
/// go into the environment of both, and into a playbook's extra vars too.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalHooks;

impl HookRunner for LocalHooks {
    fn run<'a>(
        &'a self,
        plan: &'a Plan,
        hook: &'a Hook,
        on_line: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<HookOutcome, HookError>> {
        let variables = plan.hook_environment();
        let command = match &hook.action {
            HookAction::Command(argv) => HookCommand::command(argv, plan.base_dir(), hook.timeout),
            HookAction::Playbook(playbook) => {
                HookCommand::playbook(playbook, plan.base_dir(), hook.timeout).with_extra_vars(&variables)
            }
        }
        .with_env(variables);
        Box::pin(async move { hooks::run_hook(&command, on_line).await })
    }
}

/// Turns a volume's end, as the plan names it, into the place a copy connects to.
pub trait VolumeResolver: Send + Sync {
    /// Where `side` of `volume` is.
    fn resolve<'a>(&'a self, volume: &'a VolumePlan, side: Side) -> BoxFuture<'a, anyhow::Result<Location>>;
}

/// Agent URLs and local paths, as written.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrittenLocations;

impl VolumeResolver for WrittenLocations {
    fn resolve<'a>(&'a self, volume: &'a VolumePlan, side: Side) -> BoxFuture<'a, anyhow::Result<Location>> {
        let location = match side {
            Side::Source => volume.source.clone(),
            Side::Target => volume.target.clone(),
        };
        Box::pin(async move { Ok(location) })
    }
}

/// Moves a plan's images (registries are reached the front end's way: its credential lookup,
/// its error explanations). Reports each transfer to its own observer.
///
/// The future need not be `Send` (the engine's tag sync is not provably so): the executor runs
/// it in its own task, beside the volume copies, which are spawned.
pub trait ImageTransfers: Sync {
    /// Runs every image transfer of `plan`, at most `plan.image_concurrency` at once.
    fn transfer_all<'a>(&'a self, plan: &'a Plan, proxy: Option<&'a Proxy>) -> LocalBoxFuture<'a, anyhow::Result<()>>;
}

/// Finds the images a plan's namespaces use in the source cluster's internal registry
/// ([`crate::ImageDiscovery`]), and how to reach that registry.
pub trait ImageFinder: Send + Sync {
    /// The images found, the ones left out with why, and the exposed registry's access.
    fn find<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, anyhow::Result<FoundImages>>;
}

/// What an [`ImageFinder`] found.
#[derive(Debug, Clone)]
pub struct FoundImages {
    /// The images to copy, each once, in the order found.
    pub images: Vec<FoundImage>,
    /// The images left out, with why.
    pub skipped: Vec<SkippedImage>,
    /// How mover reaches the internal registry.
    pub registry: ExposedRegistry,
}

/// One image to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundImage {
    /// The reference as the cluster names it (the internal registry's host).
    pub reference: String,
    /// Who uses it: `Deployment shop/web`, `ImageStream shop/web:v1`.
    pub used_by: Vec<String>,
    /// The copy: from the exposed registry to the target registry.
    pub transfer: ImageTransfer,
}

/// One image left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedImage {
    /// The reference as the cluster names it.
    pub reference: String,
    /// Who uses it.
    pub used_by: Vec<String>,
    /// Why it is not copied.
    pub reason: String,
}

impl Plan {
    /// Adds what `found` found: its copies after the plan's own, and the exposed registry's
    /// access.
    pub fn add_found_images(&mut self, found: &FoundImages) {
        self.images.extend(found.images.iter().map(|image| image.transfer.clone()));
        self.exposed_registry = Some(found.registry.clone());
    }
}

/// Stops the applications that use a plan's source volumes before a final copy (MTC's
/// quiesce), and starts them again on a rollback.
pub trait Workloads: Send + Sync {
    /// Stops every workload that uses one of `plan`'s source volumes, recording what it changed
    /// where it can be restored from, and returns once none of their pods uses a volume.
    /// Returns one line per workload (what was changed). What it waits for goes to `observer`.
    fn quiesce<'a>(&'a self, plan: &'a Plan, observer: &'a dyn Observer) -> BoxFuture<'a, anyhow::Result<Vec<String>>>;
    /// Restores what [`Workloads::quiesce`] recorded for `plan` (a value changed since by
    /// someone else stays as they left it). Returns one line per workload.
    fn unquiesce<'a>(
        &'a self,
        plan: &'a Plan,
        observer: &'a dyn Observer,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>>;
}

/// No workloads to stop: plans whose volumes are agent URLs and local paths.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWorkloads;

impl Workloads for NoWorkloads {
    fn quiesce<'a>(
        &'a self,
        _plan: &'a Plan,
        _observer: &'a dyn Observer,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn unquiesce<'a>(
        &'a self,
        _plan: &'a Plan,
        _observer: &'a dyn Observer,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Sees what an execution does, as it happens (for live lines and the report).
pub trait Observer: Send + Sync {
    /// A line for the user (a dry run's or a stage run's note).
    fn notice(&self, text: &str);
    /// The workloads a final run stopped before its copies ([`Workloads::quiesce`]'s lines);
    /// called once, also when there were none.
    fn quiesced(&self, workloads: &[String]) {
        let _ = workloads;
    }
    /// A hook starts.
    fn hook_started(&self, hook: &Hook);
    /// One line of a hook's output.
    fn hook_line(&self, hook: &Hook, line: &str);
    /// A hook ended.
    fn hook_finished(&self, hook: &Hook, result: &Result<HookOutcome, HookError>, elapsed: Duration);
    /// The reporter of volume `index`'s copy, asked for when the copy starts.
    fn volume_reporter(&self, index: usize, volume: &VolumePlan, dry_run: bool) -> SharedReporter;
    /// Volume `index`'s copy ended.
    fn volume_finished(&self, index: usize, volume: &VolumePlan, result: &anyhow::Result<Summary>);
    /// A step of the run ended, or was found done by an earlier run of the same final run.
    fn step_finished(&self, record: &StepRecord);
}

/// Everything [`crate::execute`] runs with.
pub struct Runtime<'a> {
    /// Runs hooks.
    pub hooks: &'a dyn HookRunner,
    /// Places volumes.
    pub volumes: &'a dyn VolumeResolver,
    /// Moves images.
    pub images: &'a dyn ImageTransfers,
    /// Stops the source's applications for a final run.
    pub workloads: &'a dyn Workloads,
    /// Watches.
    pub observer: Arc<dyn Observer>,
    /// Keeps what final runs did, for the next run.
    pub log: &'a dyn RunLog,
    /// The coordinator's identity, when the plan involves agents.
    pub identity: Option<Identity>,
    /// The proxy, with its password.
    pub proxy: Option<Proxy>,
}
