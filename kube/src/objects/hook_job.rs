//! A hook as a Job, as MTC runs hooks (mig-controller `hooks.go`): one container in the hook's
//! image, in the hook's `executionNamespace` with its service account, the plan's variables in
//! both spellings, `backoffLimit` 5 (six tries) and `activeDeadlineSeconds` from the hook's
//! timeout. A playbook hook's playbook is a `ConfigMap` (key `playbook.yml`) mounted at
//! `/tmp/playbook`, run by `ansible-runner` where the image has it, else by `ansible-playbook`.
//!
//! Names are `mover-hook-<phase>-<hook>-xxxxx`: the runner picks the five characters before
//! creating (as a server's `generateName` would), so that the Job's template names its
//! `ConfigMap`. A run finds the Job of a hook again by [`hook_selector`] and the plan
//! annotation. The pod passes Pod Security `baseline` and keeps the image's user.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::labels::{MANAGED_BY, Migration, dns_name, is_dns_label};
use super::transfer::runtime_default_seccomp;

/// The hook a Job runs (see [`hook_label_value`]).
pub const HOOK_LABEL: &str = "mover.io/hook";
/// The phase a hook Job runs in: `PreBackup`, `PostBackup`, `PreRestore`, `PostRestore`.
pub const PHASE_LABEL: &str = "mover.io/phase";
/// Tries before a hook Job fails: `backoffLimit` 5 is six tries, as MTC's `HookJobFailedLimit`.
pub const BACKOFF_LIMIT: i32 = 5;
/// Where the playbook `ConfigMap` is mounted.
pub const PLAYBOOK_DIR: &str = "/tmp/playbook";
/// The playbook's key in its `ConfigMap`, hence its file name under [`PLAYBOOK_DIR`].
pub const PLAYBOOK_KEY: &str = "playbook.yml";
/// The container's name.
pub const HOOK_CONTAINER: &str = "hook";
/// The variable holding the plan's variables as one JSON object, for Ansible's extra vars.
pub const EXTRA_VARS_ENV: &str = "MOVER_EXTRA_VARS";

/// How a playbook runs: `ansible-runner` (MTC's command; through the image's `/bin/entrypoint`
/// where it has one, which gives an arbitrary user a passwd entry) where the image has it, else
/// `ansible-playbook` on localhost. Both get the plan's variables as extra vars.
pub const PLAYBOOK_SCRIPT: &str = r#"set -e
if command -v ansible-runner >/dev/null 2>&1; then
  mkdir -p /tmp/runner/env
  printf '%s\n' "$MOVER_EXTRA_VARS" > /tmp/runner/env/extravars
  if [ -x /bin/entrypoint ]; then
    exec /bin/entrypoint ansible-runner run /tmp/runner -p /tmp/playbook/playbook.yml
  fi
  exec ansible-runner run /tmp/runner -p /tmp/playbook/playbook.yml
fi
exec ansible-playbook -i localhost, -c local --extra-vars "$MOVER_EXTRA_VARS" /tmp/playbook/playbook.yml
"#;

/// What a hook Job runs.
#[derive(Debug, Clone, Copy)]
pub enum HookProgram<'a> {
    /// The playbook of the Job's `ConfigMap`.
    Playbook,
    /// A program and its arguments, in the image.
    Command(&'a [String]),
}

/// What a hook Job is made of.
#[derive(Debug, Clone)]
pub struct HookJobSpec<'a> {
    /// The migration it belongs to.
    pub migration: &'a Migration,
    /// The hook's name.
    pub hook: &'a str,
    /// Its phase (`PreBackup`, ...).
    pub phase: &'a str,
    /// The namespace it runs in.
    pub namespace: &'a str,
    /// The container image.
    pub image: &'a str,
    /// The pod's service account (`None`: the namespace's default).
    pub service_account: Option<&'a str>,
    /// What it runs.
    pub program: HookProgram<'a>,
    /// The plan's variables (`Plan::hook_environment`).
    pub env: &'a [(String, String)],
    /// Its deadline (`activeDeadlineSeconds`, whole seconds, at least one).
    pub deadline: Duration,
}

/// The value of [`HOOK_LABEL`] for `hook`: the name when it is a label value, else a DNS name
/// made from it with a hash (hook names may start with `.` or `_`).
#[must_use]
pub fn hook_label_value(hook: &str) -> String {
    let alphanumeric = |c: char| c.is_ascii_alphanumeric();
    let valid = hook.len() <= 63
        && hook.starts_with(alphanumeric)
        && hook.ends_with(alphanumeric)
        && hook.chars().all(|c| alphanumeric(c) || "-_.".contains(c));
    if valid { hook.to_owned() } else { dns_name("hook-", hook) }
}

/// The labels of a hook's Job and its pods: the migration's, the hook's and the phase's.
fn hook_labels(spec: &HookJobSpec) -> BTreeMap<String, String> {
    let mut labels = spec.migration.labels();
    labels.insert(HOOK_LABEL.to_owned(), hook_label_value(spec.hook));
    labels.insert(PHASE_LABEL.to_owned(), spec.phase.to_owned());
    labels
}

/// The selector of every Job of hook `hook` in `phase`, whichever migration ran it (a plan's
/// runs have different migration ids; the plan annotation tells plans apart).
#[must_use]
pub fn hook_selector(hook: &str, phase: &str) -> String {
    format!("{}={},{HOOK_LABEL}={},{PHASE_LABEL}={phase}", MANAGED_BY.0, MANAGED_BY.1, hook_label_value(hook))
}

/// The start of a hook Job's name: `mover-hook-<phase>-<hook>-`, short enough that five more
/// characters keep the name a 63-character label.
#[must_use]
pub fn hook_job_prefix(phase: &str, hook: &str) -> String {
    let part = format!("{phase}-{hook}").to_lowercase();
    let mut name = dns_name("mover-hook-", &part);
    name.truncate(57);
    let stem = name.trim_end_matches('-');
    debug_assert!(is_dns_label(stem));
    format!("{stem}-")
}

fn env(spec: &HookJobSpec) -> Vec<EnvVar> {
    let var =
        |name: &str, value: &str| EnvVar { name: name.to_owned(), value: Some(value.to_owned()), value_from: None };
    let mut env: Vec<EnvVar> = spec.env.iter().map(|(name, value)| var(name, value)).collect();
    if matches!(spec.program, HookProgram::Playbook) {
        let vars: serde_json::Map<String, serde_json::Value> =
            spec.env.iter().map(|(name, value)| (name.clone(), serde_json::Value::String(value.clone()))).collect();
        env.push(var(EXTRA_VARS_ENV, &serde_json::Value::Object(vars).to_string()));
    }
    env
}

/// The Job of `spec`, named `name` (see [`hook_job_prefix`]); a playbook's `ConfigMap` has the
/// Job's name.
#[must_use]
pub fn hook_job(spec: &HookJobSpec, name: &str) -> Job {
    let labels = hook_labels(spec);
    let (command, mounts, volumes) = match spec.program {
        HookProgram::Playbook => (
            vec!["/bin/sh".to_owned(), "-c".to_owned(), PLAYBOOK_SCRIPT.to_owned()],
            Some(vec![VolumeMount {
                name: "playbook".to_owned(),
                mount_path: PLAYBOOK_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
            Some(vec![Volume {
                name: "playbook".to_owned(),
                config_map: Some(ConfigMapVolumeSource { name: name.to_owned(), ..ConfigMapVolumeSource::default() }),
                ..Volume::default()
            }]),
        ),
        HookProgram::Command(argv) => (argv.to_vec(), None, None),
    };
    let container = Container {
        name: HOOK_CONTAINER.to_owned(),
        image: Some(spec.image.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(command),
        env: Some(env(spec)),
        volume_mounts: mounts,
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let deadline = i64::try_from(spec.deadline.as_secs().max(1)).unwrap_or(i64::MAX);
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(spec.namespace.to_owned()),
            labels: Some(labels.clone()),
            annotations: Some(spec.migration.annotations()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            active_deadline_seconds: Some(deadline),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(spec.migration.annotations()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes,
                    restart_policy: Some("Never".to_owned()),
                    service_account_name: spec.service_account.map(str::to_owned),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The `ConfigMap` holding `playbook` for the Job `job` (same name, labels and namespace), owned
/// by the Job: deleting the Job deletes it.
#[must_use]
pub fn playbook_config_map(spec: &HookJobSpec, job: &str, job_uid: &str, playbook: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(job.to_owned()),
            namespace: Some(spec.namespace.to_owned()),
            labels: Some(hook_labels(spec)),
            annotations: Some(spec.migration.annotations()),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".to_owned(),
                kind: "Job".to_owned(),
                name: job.to_owned(),
                uid: job_uid.to_owned(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(PLAYBOOK_KEY.to_owned(), playbook.to_owned())])),
        ..ConfigMap::default()
    }
}

/// Whether hook Job `job` mounts its own playbook `ConfigMap` (named as the Job, see
/// [`playbook_config_map`]): whoever deletes the Job deletes that `ConfigMap` by name too,
/// rather than leave it to the garbage collector's own time.
#[must_use]
pub fn has_playbook_config_map(job: &Job) -> bool {
    let name = job.metadata.name.as_deref();
    let volumes = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|pod| pod.volumes.as_ref());
    volumes.into_iter().flatten().any(|v| v.config_map.as_ref().is_some_and(|map| Some(map.name.as_str()) == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(migration: &'a Migration, program: HookProgram<'a>, env: &'a [(String, String)]) -> HookJobSpec<'a> {
        HookJobSpec {
            migration,
            hook: "show_plan",
            phase: "PreBackup",
            namespace: "shop",
            image: "quay.io/konveyor/hook-runner:latest",
            service_account: Some("hooks"),
            program,
            env,
            deadline: Duration::from_secs(90),
        }
    }

    #[test]
    fn a_playbook_job_mounts_its_config_map_and_gets_both_spellings() {
        let migration = Migration::new("m1", "shop migration").unwrap();
        let env =
            [("migplan_name".to_owned(), "shop".to_owned()), ("MIGRATION_PLAN_NAME".to_owned(), "shop".to_owned())];
        let spec = spec(&migration, HookProgram::Playbook, &env);
        let job = hook_job(&spec, "mover-hook-prebackup-show-plan-abcde");
        let job_spec = job.spec.as_ref().unwrap();
        assert_eq!(job_spec.backoff_limit, Some(5));
        assert_eq!(job_spec.active_deadline_seconds, Some(90));
        let pod = job_spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name.as_deref(), Some("hooks"));
        let container = &pod.containers[0];
        let vars: BTreeMap<&str, &str> =
            container.env.iter().flatten().map(|v| (v.name.as_str(), v.value.as_deref().unwrap_or_default())).collect();
        assert_eq!(vars["migplan_name"], "shop");
        assert_eq!(vars["MIGRATION_PLAN_NAME"], "shop");
        assert_eq!(vars[EXTRA_VARS_ENV], r#"{"MIGRATION_PLAN_NAME":"shop","migplan_name":"shop"}"#);
        let mount = &container.volume_mounts.as_ref().unwrap()[0];
        assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/tmp/playbook", Some(true)));
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(volume.name, mount.name);
        assert_eq!(volume.config_map.as_ref().unwrap().name, "mover-hook-prebackup-show-plan-abcde");
        let script = &container.command.as_ref().unwrap()[2];
        assert!(script.contains("ansible-runner run /tmp/runner -p /tmp/playbook/playbook.yml"), "{script}");
        assert!(script.contains("ansible-playbook -i localhost, -c local"), "{script}");
        // The Job and its pods carry the migration's, the hook's and the phase's labels.
        for labels in [
            job.metadata.labels.as_ref().unwrap(),
            job_spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap(),
        ] {
            assert_eq!(labels["mover.io/migration"], "m1");
            assert_eq!(labels[HOOK_LABEL], "show_plan");
            assert_eq!(labels[PHASE_LABEL], "PreBackup");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "mover");
        }
        assert_eq!(job.metadata.annotations.as_ref().unwrap()["mover.io/plan"], "shop migration");
        let map = playbook_config_map(&spec, "mover-hook-prebackup-show-plan-abcde", "uid-1", "- hosts: localhost\n");
        assert_eq!(map.data.unwrap()[PLAYBOOK_KEY], "- hosts: localhost\n");
        assert_eq!(map.metadata.owner_references.unwrap()[0].uid, "uid-1");
        assert!(has_playbook_config_map(&job));
    }

    #[test]
    fn a_command_job_runs_its_program_without_a_playbook() {
        let migration = Migration::new("m1", "plan").unwrap();
        let argv = ["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        let job = hook_job(&spec(&migration, HookProgram::Command(&argv), &[]), "mover-hook-prebackup-show-plan-abcde");
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.containers[0].command.as_deref(), Some(&argv[..]));
        assert!(pod.volumes.is_none() && pod.containers[0].volume_mounts.is_none());
        assert!(pod.containers[0].env.as_ref().unwrap().is_empty());
        assert!(!has_playbook_config_map(&job));
        assert!(hook_job_prefix("PreBackup", "show_plan").starts_with("mover-hook-prebackup-show-plan-"));
    }

    #[test]
    fn names_and_label_values_fit_whatever_the_hook_is_called() {
        for hook in ["x", "_private", "a.b", &"h".repeat(63), "Upper-Case"] {
            let prefix = hook_job_prefix("PostRestore", hook);
            assert!(prefix.len() + 5 <= 63 && is_dns_label(&format!("{prefix}abcde")), "{prefix}");
            let value = hook_label_value(hook);
            assert!(value.len() <= 63 && value.starts_with(|c: char| c.is_ascii_alphanumeric()), "{value}");
        }
        assert_ne!(hook_label_value("_a"), hook_label_value("-a"));
        assert_eq!(
            hook_selector("h", "PreBackup"),
            "app.kubernetes.io/managed-by=mover,mover.io/hook=h,mover.io/phase=PreBackup"
        );
    }
}
