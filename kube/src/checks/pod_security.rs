//! Pod Security levels: what a namespace enforces (its `pod-security.kubernetes.io/enforce`
//! label) and what a pod mover builds needs (the lowest level whose checks its spec passes).
//!
//! The levels are the Pod Security Standards'. A pod is judged by the checks that concern what
//! mover builds: host namespaces, `privileged`, added capabilities, hostPath volumes, host ports
//! and an `Unconfined` seccomp profile (baseline); volume types, privilege escalation, running as
//! non-root, the seccomp profile and dropping every capability (restricted).
//!
//! A namespace without the label gets the cluster's default, which is `privileged` unless the API
//! server's admission configuration sets another (mover cannot read that configuration). A label
//! that is not a level counts as `restricted`, the most careful reading.

use std::fmt;

use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, SecurityContext};

/// The label whose level Pod Security admission enforces.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// A Pod Security level, from the most careful to the most permissive: a namespace at a level
/// admits the pods that need that level or a more careful one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `restricted`.
    Restricted,
    /// `baseline`.
    Baseline,
    /// `privileged`.
    Privileged,
}

impl Level {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Restricted => "restricted",
            Level::Baseline => "baseline",
            Level::Privileged => "privileged",
        }
    }

    /// The level of label value `value`.
    #[must_use]
    pub fn parse(value: &str) -> Option<Level> {
        [Level::Restricted, Level::Baseline, Level::Privileged].into_iter().find(|level| level.as_str() == value)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a namespace's level comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Its enforce label.
    Label,
    /// It has no enforce label: the cluster's default.
    Unlabelled,
    /// It does not exist yet: mover creates it without the label, so the cluster's default.
    Missing,
    /// Its enforce label holds this, which is not a level.
    Invalid(String),
}

/// The level a namespace enforces, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforced {
    /// The level.
    pub level: Level,
    /// Where it comes from.
    pub source: Source,
}

impl Enforced {
    /// Whether a pod that needs `needed` is admitted.
    #[must_use]
    pub fn admits(&self, needed: Level) -> bool {
        needed <= self.level
    }
}

impl fmt::Display for Enforced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Label => write!(f, "enforces `{}`", self.level),
            Source::Unlabelled => write!(
                f,
                "has no `{ENFORCE_LABEL}` label: the cluster's default, `{}` unless the API server's admission configuration sets another",
                self.level
            ),
            Source::Missing => write!(
                f,
                "does not exist yet; mover creates it without a Pod Security label: the cluster's default, `{}` unless the API server's admission configuration sets another",
                self.level
            ),
            Source::Invalid(value) => {
                write!(f, "has `{ENFORCE_LABEL}: {value}`, not a level: taken as `{}`", self.level)
            }
        }
    }
}

/// The level `namespace` enforces (`None`: it does not exist).
#[must_use]
pub fn enforced(namespace: Option<&Namespace>) -> Enforced {
    let Some(namespace) = namespace else {
        return Enforced { level: Level::Privileged, source: Source::Missing };
    };
    match namespace.metadata.labels.as_ref().and_then(|labels| labels.get(ENFORCE_LABEL)) {
        None => Enforced { level: Level::Privileged, source: Source::Unlabelled },
        Some(value) => match Level::parse(value) {
            Some(level) => Enforced { level, source: Source::Label },
            None => Enforced { level: Level::Restricted, source: Source::Invalid(value.clone()) },
        },
    }
}

/// Capabilities the baseline level lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The most careful level whose checks `spec` passes.
#[must_use]
pub fn needed_level(spec: &PodSpec) -> Level {
    if !passes_baseline(spec) {
        Level::Privileged
    } else if passes_restricted(spec) {
        Level::Restricted
    } else {
        Level::Baseline
    }
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers.iter().chain(spec.init_containers.iter().flatten())
}

fn added(context: Option<&SecurityContext>) -> impl Iterator<Item = &String> {
    context.and_then(|c| c.capabilities.as_ref()).and_then(|c| c.add.as_ref()).into_iter().flatten()
}

fn passes_baseline(spec: &PodSpec) -> bool {
    let host = [spec.host_network, spec.host_pid, spec.host_ipc].contains(&Some(true));
    let host_path = spec.volumes.iter().flatten().any(|volume| volume.host_path.is_some());
    let unconfined = |profile: Option<&k8s_openapi::api::core::v1::SeccompProfile>| {
        profile.is_some_and(|profile| profile.type_ == "Unconfined")
    };
    let pod_unconfined =
        unconfined(spec.security_context.as_ref().and_then(|context| context.seccomp_profile.as_ref()));
    let container_fails = containers(spec).any(|container| {
        let context = container.security_context.as_ref();
        context.and_then(|c| c.privileged) == Some(true)
            || added(context).any(|capability| !BASELINE_CAPABILITIES.contains(&capability.as_str()))
            || unconfined(context.and_then(|c| c.seccomp_profile.as_ref()))
            || container.ports.iter().flatten().any(|port| port.host_port.is_some_and(|port| port != 0))
    });
    !(host || host_path || pod_unconfined || container_fails)
}

fn passes_restricted(spec: &PodSpec) -> bool {
    let allowed_volume = |v: &k8s_openapi::api::core::v1::Volume| {
        v.config_map.is_some()
            || v.csi.is_some()
            || v.downward_api.is_some()
            || v.empty_dir.is_some()
            || v.ephemeral.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.secret.is_some()
    };
    let pod = spec.security_context.as_ref();
    let container_passes = |container: &Container| {
        let context = container.security_context.as_ref();
        let non_root = context.and_then(|c| c.run_as_non_root).or(pod.and_then(|p| p.run_as_non_root)) == Some(true);
        let user = context.and_then(|c| c.run_as_user).or(pod.and_then(|p| p.run_as_user));
        let seccomp = context.and_then(|c| c.seccomp_profile.as_ref()).or(pod.and_then(|p| p.seccomp_profile.as_ref()));
        let drops_all = context
            .and_then(|c| c.capabilities.as_ref())
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|drop| drop.iter().any(|capability| capability == "ALL"));
        context.and_then(|c| c.allow_privilege_escalation) == Some(false)
            && non_root
            && user != Some(0)
            && seccomp.is_some_and(|profile| profile.type_ == "RuntimeDefault" || profile.type_ == "Localhost")
            && drops_all
            && added(context).all(|capability| capability == "NET_BIND_SERVICE")
    };
    spec.volumes.iter().flatten().all(allowed_volume) && containers(spec).all(container_passes)
}
