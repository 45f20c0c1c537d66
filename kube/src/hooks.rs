//! Hooks as Kubernetes Jobs ([`KubeHooks`], the plan executor's [`HookRunner`] for plans with
//! `clusters:`), as MTC runs them: the Job of [`crate::objects::hook_job`] in the cluster of the
//! hook's side, its pods' log lines streamed as they come (each retry's pod too), and the Job's
//! outcome as the hook's. Hooks without a Job (`local: true`) run as [`LocalHooks`] do.
//!
//! - A run first looks for a Job of the same plan, hook and phase (by [`hook_selector`] and the
//!   plan annotation): one still running is followed instead of starting a second; a finished
//!   one is deleted, with its pods and `ConfigMap`, before a new one starts.
//! - A Job that completed is deleted once its outcome is read; a failed one is kept for
//!   `kubectl logs` (the next run or `mover k8s cleanup` removes it).
//! - [`KubeHooks::cleanup`] deletes the Jobs still running (the plan was cancelled or failed
//!   while one ran), with their pods and `ConfigMaps`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use mover_engine::hooks::{HookError, HookOutcome, TAIL_LINES, format_duration};
use mover_plan::{Hook, HookAction, HookJob, HookRunner, LocalHooks, Plan, Side, Sides};

use crate::agents::pod_state;
use crate::context::{Access, Cluster, connect};
use crate::error::KubeError;
use crate::objects::Migration;
use crate::objects::hook_job::{
    HookJobSpec, HookProgram, has_playbook_config_map, hook_job, hook_job_prefix, hook_selector, playbook_config_map,
};
use crate::objects::labels::PLAN_ANNOTATION;

/// How often a Job's status and its pods are looked at.
const POLL: Duration = Duration::from_millis(500);
/// How long the last pod's log may still take to reach its end once the Job has ended.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a deleted Job's pods may take to go.
const GONE_WITHIN: Duration = Duration::from_secs(90);

/// Hooks as Jobs in the plan's clusters (and `local: true` hooks on this machine).
pub struct KubeHooks {
    access: Access,
    contexts: Sides<Option<String>>,
    migration: Migration,
    clusters: tokio::sync::Mutex<HashMap<Option<String>, Cluster>>,
    /// Jobs started or followed whose outcome is not read yet.
    running: Mutex<Vec<RunningJob>>,
}

/// A hook's Job, where it is.
#[derive(Debug, Clone)]
struct RunningJob {
    cluster: Cluster,
    namespace: String,
    name: String,
    uid: String,
    /// Selects its pods (with the others of the same hook and phase; its uid tells them apart).
    selector: String,
    /// It has a playbook `ConfigMap`.
    playbook: bool,
}

impl RunningJob {
    fn of(cluster: &Cluster, job: &Job, selector: &str) -> RunningJob {
        let meta = &job.metadata;
        RunningJob {
            cluster: cluster.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            selector: selector.to_owned(),
            playbook: has_playbook_config_map(job),
        }
    }

    /// `Job `namespace/name` (context `c`)`, for messages.
    fn shown(&self) -> String {
        format!("Job `{}/{}` (context `{}`)", self.namespace, self.name, self.cluster.context)
    }
}

impl KubeHooks {
    /// Hooks of `migration`, in the clusters of `contexts` (`None`: the current context).
    #[must_use]
    pub fn new(access: Access, contexts: Sides<Option<String>>, migration: Migration) -> Self {
        KubeHooks {
            access,
            contexts,
            migration,
            clusters: tokio::sync::Mutex::new(HashMap::new()),
            running: Mutex::new(Vec::new()),
        }
    }

    async fn cluster(&self, side: Side) -> Result<Cluster, KubeError> {
        let context = self.contexts.get(side).clone();
        let mut clusters = self.clusters.lock().await;
        if let Some(cluster) = clusters.get(&context) {
            return Ok(cluster.clone());
        }
        let cluster = connect(&self.access, context.as_deref()).await?;
        clusters.insert(context, cluster.clone());
        Ok(cluster)
    }

    /// Deletes the Jobs whose outcome was not read (the run was cancelled or failed while they
    /// ran), with their pods and `ConfigMaps`; returns what could not be removed.
    pub async fn cleanup(&self) -> Vec<KubeError> {
        let running = std::mem::take(&mut *self.running.lock().expect("not poisoned"));
        let mut errors = Vec::new();
        for job in running {
            if let Err(error) = delete_job(&job).await {
                errors.push(error);
            }
        }
        errors
    }

    fn forget(&self, job: &RunningJob) {
        self.running.lock().expect("not poisoned").retain(|j| j.uid != job.uid);
    }

    /// Follows the running Job of this plan's `hook` if there is one (deleting finished ones),
    /// else starts one.
    async fn start_or_follow(
        &self,
        cluster: &Cluster,
        plan: &Plan,
        hook: &Hook,
        place: &HookJob,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<RunningJob, KubeError> {
        let (namespace, phase) = (place.namespace.as_str(), hook.phase.to_string());
        let selector = hook_selector(&hook.name, &phase);
        let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), namespace);
        let doing = format!("listing the Jobs of hook `{}` in namespace `{namespace}`", hook.name);
        let found = jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(KubeError::api(&cluster.context, doing))?;
        let of_plan =
            |job: &Job| job.metadata.annotations.as_ref().and_then(|a| a.get(PLAN_ANNOTATION)) == Some(&plan.name);
        let mut follow = None;
        for existing in found.items.into_iter().filter(of_plan) {
            let existing = RunningJob::of(cluster, &existing, &selector).with_state(&existing);
            match existing {
                (job, None) if follow.is_none() => follow = Some(job),
                (job, _) => delete_job(&job).await?,
            }
        }
        if let Some(job) = follow {
            on_line(&format!("{} of an earlier run of this plan is still running: following it", job.shown()));
            self.running.lock().expect("not poisoned").push(job.clone());
            return Ok(job);
        }
        let env = plan.hook_environment();
        let (program, playbook) = match &hook.action {
            HookAction::Command(argv) => (HookProgram::Command(argv), None),
            HookAction::Playbook(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    KubeError::Config(format!(
                        "cannot read the playbook `{}` of hook `{}`: {e}",
                        path.display(),
                        hook.name
                    ))
                })?;
                (HookProgram::Playbook, Some(text))
            }
        };
        let spec = HookJobSpec {
            migration: &self.migration,
            hook: &hook.name,
            phase: &phase,
            namespace,
            image: &place.image,
            service_account: place.service_account.as_deref(),
            program,
            env: &env,
            deadline: hook.timeout,
        };
        let name = format!("{}{}", hook_job_prefix(&phase, &hook.name), random_suffix());
        let doing = format!("creating Job `{namespace}/{name}` for hook `{}`", hook.name);
        let created = jobs
            .create(&PostParams::default(), &hook_job(&spec, &name))
            .await
            .map_err(KubeError::api(&cluster.context, doing))?;
        let job = RunningJob::of(cluster, &created, &selector);
        self.running.lock().expect("not poisoned").push(job.clone());
        if let Some(text) = playbook {
            // After the Job, so that it owns the ConfigMap (its pod waits for the mount meanwhile).
            let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
            let doing = format!("creating the playbook ConfigMap `{namespace}/{name}` of hook `{}`", hook.name);
            maps.create(&PostParams::default(), &playbook_config_map(&spec, &name, &job.uid, &text))
                .await
                .map_err(KubeError::api(&cluster.context, doing))?;
        }
        Ok(job)
    }

    async fn run_job(
        &self,
        plan: &Plan,
        hook: &Hook,
        place: &HookJob,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<HookOutcome, HookError> {
        let started = Instant::now();
        let not_started =
            |error: KubeError| remote(format!("the hook's Job could not be started: {error}"), false, None, Vec::new());
        let cluster = self.cluster(hook.side).await.map_err(not_started)?;
        let job = self.start_or_follow(&cluster, plan, hook, place, on_line).await.map_err(not_started)?;
        let tail = Mutex::new(VecDeque::with_capacity(TAIL_LINES));
        let sink = |line: &str| {
            on_line(line);
            let mut tail = tail.lock().expect("not poisoned");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_owned());
        };
        // An error here leaves the Job to `cleanup`.
        let ended = follow(&job, &sink, on_line)
            .await
            .map_err(|error| remote(format!("lost track of {}: {error}", job.shown()), false, None, Vec::new()))?;
        let tail: Vec<String> = tail.into_inner().expect("not poisoned").into();
        match end_of(&ended) {
            Some(JobEnd::Complete) => {
                // Its outcome is read: the Job goes, with its pods and ConfigMap.
                let deleted = delete_job(&job).await;
                self.forget(&job);
                deleted.map_err(|error| {
                    remote(
                        format!("{} succeeded but could not be deleted: {error}", job.shown()),
                        false,
                        None,
                        Vec::new(),
                    )
                })?;
                Ok(HookOutcome { elapsed: started.elapsed(), tail })
            }
            Some(JobEnd::Failed { reason }) => {
                // Kept for `kubectl logs`; the next run or `mover k8s cleanup` removes it.
                self.forget(&job);
                Err(failure(&job, &ended, &reason, hook.timeout, tail).await)
            }
            None => Err(remote(format!("{} ended in no known state", job.shown()), false, None, tail)),
        }
    }
}

impl RunningJob {
    /// With whether `job` has ended (and how), or `None` while it runs.
    fn with_state(self, job: &Job) -> (RunningJob, Option<JobEnd>) {
        let end = end_of(job).or_else(|| {
            job.metadata.deletion_timestamp.as_ref().map(|_| JobEnd::Failed { reason: "Deleting".to_owned() })
        });
        (self, end)
    }
}

impl HookRunner for KubeHooks {
    fn run<'a>(
        &'a self,
        plan: &'a Plan,
        hook: &'a Hook,
        on_line: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<HookOutcome, HookError>> {
        match &hook.job {
            None => LocalHooks.run(plan, hook, on_line),
            Some(place) => Box::pin(self.run_job(plan, hook, place, on_line)),
        }
    }
}

fn remote(message: String, timed_out: bool, code: Option<i32>, tail: Vec<String>) -> HookError {
    HookError::Remote { message, timed_out, code, tail }
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JobEnd {
    Complete,
    Failed { reason: String },
}

fn end_of(job: &Job) -> Option<JobEnd> {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref())?;
    let holds = |kind: &str| conditions.iter().find(|c| c.type_ == kind && c.status == "True");
    if holds("Complete").is_some() {
        return Some(JobEnd::Complete);
    }
    holds("Failed").map(|c| JobEnd::Failed { reason: c.reason.clone().unwrap_or_else(|| "Failed".to_owned()) })
}

/// The hook's error for a failed Job: its tries, the last pod's exit status, a deadline.
async fn failure(job: &RunningJob, ended: &Job, reason: &str, timeout: Duration, tail: Vec<String>) -> HookError {
    let printed = if tail.is_empty() { "; it printed nothing" } else { "" };
    let kept = format!(
        "it is kept for `kubectl --context {} -n {} logs job/{}` (the next run or `mover k8s cleanup` removes it)",
        job.cluster.context, job.namespace, job.name
    );
    if reason == "DeadlineExceeded" {
        let message = format!(
            "{} ran past its deadline of {} (the hook's `timeout`, its activeDeadlineSeconds): Kubernetes stopped it \
             (DeadlineExceeded); {kept}{printed}",
            job.shown(),
            format_duration(timeout)
        );
        return remote(message, true, None, tail);
    }
    let tries = ended.status.as_ref().and_then(|s| s.failed).unwrap_or(0);
    let code = last_exit_code(job).await;
    let status = code.map_or_else(String::new, |code| format!(", its last pod exited with status {code}"));
    let message = format!("{} failed ({reason}) after {tries} tries{status}; {kept}{printed}", job.shown());
    remote(message, false, code, tail)
}

/// The exit code of the Job's newest pod that ended.
async fn last_exit_code(job: &RunningJob) -> Option<i32> {
    let pods = job_pods(job).await.ok()?;
    pods.iter().rev().find_map(|pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|s| s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
    })
}

/// The Job's pods, oldest first.
async fn job_pods(job: &RunningJob) -> Result<Vec<Pod>, KubeError> {
    let pods: Api<Pod> = Api::namespaced(job.cluster.client.clone(), &job.namespace);
    let doing = format!("listing the pods of {}", job.shown());
    let list = pods
        .list(&ListParams::default().labels(&job.selector))
        .await
        .map_err(KubeError::api(&job.cluster.context, doing))?;
    let mut mine: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|pod| pod.metadata.owner_references.iter().flatten().any(|owner| owner.uid == job.uid))
        .collect();
    mine.sort_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref().map(|t| t.0), &a.metadata.name)
            .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), &b.metadata.name))
    });
    Ok(mine)
}

/// Waits for the Job to end, its pods' log lines going to `sink` meanwhile (and their waiting
/// states to `on_state`); returns the ended Job.
async fn follow(
    job: &RunningJob,
    sink: &(dyn Fn(&str) + Send + Sync),
    on_state: &(dyn Fn(&str) + Send + Sync),
) -> Result<Job, KubeError> {
    let finished = AtomicBool::new(false);
    let logs = stream_logs(job, sink, on_state, &finished);
    tokio::pin!(logs);
    let wait = wait_end(job);
    tokio::pin!(wait);
    let ended = tokio::select! {
        ended = &mut wait => Some(ended),
        () = &mut logs => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => wait.await,
    }?;
    finished.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(DRAIN, logs).await;
    Ok(ended)
}

async fn wait_end(job: &RunningJob) -> Result<Job, KubeError> {
    let jobs: Api<Job> = Api::namespaced(job.cluster.client.clone(), &job.namespace);
    loop {
        let current = jobs
            .get(&job.name)
            .await
            .map_err(KubeError::api(&job.cluster.context, format!("reading {}", job.shown())))?;
        if end_of(&current).is_some() {
            return Ok(current);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether a pod's container has started (its log can be read).
fn has_started(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    matches!(status.and_then(|s| s.phase.as_deref()), Some("Running" | "Succeeded" | "Failed"))
        || status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.state.as_ref().is_some_and(|state| state.running.is_some() || state.terminated.is_some()))
}

/// Follows the log of each pod of the Job, in the order they were made, until `finished` is set
/// and every pod that started was read to its end.
async fn stream_logs(
    job: &RunningJob,
    sink: &(dyn Fn(&str) + Send + Sync),
    on_state: &(dyn Fn(&str) + Send + Sync),
    finished: &AtomicBool,
) {
    let pods: Api<Pod> = Api::namespaced(job.cluster.client.clone(), &job.namespace);
    let mut done = HashSet::new();
    let mut states: HashMap<String, String> = HashMap::new();
    loop {
        // Read first: the pods listed after it include every pod the ended Job had.
        let was_finished = finished.load(Ordering::SeqCst);
        if let Ok(list) = job_pods(job).await {
            for pod in list {
                let (Some(uid), Some(name)) = (pod.metadata.uid.clone(), pod.metadata.name.clone()) else { continue };
                if done.contains(&uid) {
                    continue;
                }
                if !has_started(&pod) {
                    let state = pod_state(&pod);
                    let worth_saying = state != "Pending" && !state.contains("ContainerCreating");
                    if worth_saying && states.get(&uid) != Some(&state) {
                        on_state(&format!("pod `{}/{name}`: {state}", job.namespace));
                        states.insert(uid, state);
                    }
                    continue;
                }
                if follow_pod(&pods, &name, sink).await {
                    done.insert(uid);
                }
            }
        }
        if was_finished {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Streams pod `name`'s log to `sink` until it ends; false when it cannot be read (yet).
async fn follow_pod(pods: &Api<Pod>, name: &str, sink: &(dyn Fn(&str) + Send + Sync)) -> bool {
    let params = LogParams { follow: true, ..LogParams::default() };
    let Ok(stream) = pods.log_stream(name, &params).await else { return false };
    let mut lines = stream.lines();
    while let Ok(Some(line)) = lines.try_next().await {
        sink(line.trim_end_matches('\r'));
    }
    true
}

/// Deletes a hook's Job (its pods go with it) and its `ConfigMap`, and waits until its pods are
/// gone.
async fn delete_job(job: &RunningJob) -> Result<(), KubeError> {
    delete_job_objects(&job.cluster, &job.namespace, &job.name, job.playbook).await?;
    let deadline = Instant::now() + GONE_WITHIN;
    loop {
        let left = job_pods(job).await?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let names: Vec<String> = left.iter().filter_map(|p| p.metadata.name.clone()).collect();
            return Err(KubeError::Timeout(format!(
                "the pods of {} ({}) are still there {} after it was deleted",
                job.shown(),
                names.join(", "),
                format_duration(GONE_WITHIN)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes hook Job `namespace/name` and, with `playbook`, its playbook `ConfigMap` of the same
/// name (its owner reference would have the garbage collector take it too, but in its own time:
/// a cleanup that returned would leave it behind a while); false when the Job was gone already.
pub(crate) async fn delete_job_objects(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    playbook: bool,
) -> Result<bool, KubeError> {
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), namespace);
    // Background: the Job goes now, the garbage collector takes its pods (a Job's own default
    // would orphan them).
    let deleted = match jobs.delete(name, &DeleteParams::background()).await {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(error) => {
            let doing = format!("deleting hook Job `{namespace}/{name}`");
            return Err(KubeError::api(&cluster.context, doing)(error));
        }
    };
    if playbook {
        let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
        match maps.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                let doing = format!("deleting the playbook ConfigMap `{namespace}/{name}`");
                return Err(KubeError::api(&cluster.context, doing)(error));
            }
        }
    }
    Ok(deleted)
}

/// Five characters of the alphabet a server's `generateName` uses, random per call.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    let mut bits = hasher.finish();
    (0..5)
        .map(|_| {
            let index = usize::try_from(bits % ALPHABET.len() as u64).unwrap_or(0);
            bits /= ALPHABET.len() as u64;
            char::from(ALPHABET[index])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_name_characters_and_differ() {
        let (a, b) = (random_suffix(), random_suffix());
        assert_eq!(a.len(), 5);
        assert!(a.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{a}");
        assert_ne!(a, b);
    }
}
