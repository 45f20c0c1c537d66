//! A checked migration plan: what moves (volumes, images), and the hooks around it. Front ends
//! build it (the CLI from a YAML file, a Kubernetes controller from a resource); paths in it are
//! already resolved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mover_engine::image::Credentials;
use mover_engine::tunnel::Proxy;
use mover_engine::{Compression, CopyOptions};
use serde::{Deserialize, Serialize};

use crate::location::Location;

/// Default time a hook may run (MTC's `activeDeadlineSeconds` default for hook Jobs).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The image a hook Job runs unless it names one: MTC's Ansible runner image.
pub const DEFAULT_HOOK_IMAGE: &str = "quay.io/konveyor/hook-runner:latest";

/// An agent among a plan's volume ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    /// Where it is exposed.
    pub addr: String,
    /// Where this machine reaches it instead (a port-forward), if not at `addr`.
    pub via: Option<String>,
    /// Whether it is the target of some volume.
    pub is_target: bool,
}

/// Every agent among volume ends `(source, target)`, in order of first use.
pub fn agents_of<'a>(ends: impl IntoIterator<Item = (&'a Location, &'a Location)>) -> Vec<AgentRef> {
    let mut agents: Vec<AgentRef> = Vec::new();
    for (source, target) in ends {
        for (location, is_target) in [(source, false), (target, true)] {
            if let Location::Agent { addr, via, .. } = location {
                match agents.iter_mut().find(|known| &known.addr == addr) {
                    Some(known) => known.is_target |= is_target,
                    None => agents.push(AgentRef { addr: addr.clone(), via: via.clone(), is_target }),
                }
            }
        }
    }
    agents
}

/// A checked plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The plan file.
    pub path: PathBuf,
    /// `name:`; hooks get it as `migplan_name` and `MIGRATION_PLAN_NAME`.
    pub name: String,
    /// `namespaces:`; hooks get them comma-joined as `migration_namespaces` and
    /// `MIGRATION_NAMESPACES`.
    pub namespaces: Vec<String>,
    /// Certificate directory.
    pub certs: Option<PathBuf>,
    /// The proxy between source and target, parsed (its password may come later, from a file).
    pub proxy: Option<Proxy>,
    /// Proxy password file.
    pub proxy_password_file: Option<PathBuf>,
    /// Volumes copied at once.
    pub volume_concurrency: usize,
    /// Images copied at once.
    pub image_concurrency: usize,
    /// How to reach the source and the target registry.
    pub registries: Sides<RegistrySide>,
    /// Volumes, in file order.
    pub volumes: Vec<VolumePlan>,
    /// Images, in file order (then the ones [`Plan::image_discovery`] found, once added).
    pub images: Vec<ImageTransfer>,
    /// `images: {fromNamespaces: true, …}`: the images of the plan's namespaces that the source
    /// cluster's internal registry holds, found when the plan runs ([`crate::ImageFinder`]).
    pub image_discovery: Option<ImageDiscovery>,
    /// How the exposed internal registry is reached once its images are found (the token and
    /// the trust the finder got from the cluster): only for references to its host.
    pub exposed_registry: Option<ExposedRegistry>,
    /// Hooks, in file order.
    pub hooks: Vec<Hook>,
    /// `clusters:`: where `k8s://` claims are, and how target claims are made.
    pub clusters: Option<Clusters>,
}

/// A plan's clusters: the contexts of its claims, and the rules for target claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clusters {
    /// Each side's kubeconfig context; `None`: the current context.
    pub contexts: Sides<Option<String>>,
    /// Source storage class -> target storage class.
    pub storage_class_map: BTreeMap<String, String>,
    /// Source namespace -> target namespace (unlisted: the same name).
    pub namespace_mapping: BTreeMap<String, String>,
    /// Claims (`namespace/name`) left out when every claim of the namespaces is copied.
    pub exclude: Vec<String>,
    /// What each claim volume's target gets (by volume name).
    pub claims: BTreeMap<String, ClaimTarget>,
    /// No volumes are listed: every Bound claim of `namespaces` (but `exclude`) is one, found
    /// when the plan runs.
    pub every_claim: bool,
    /// `strategy: node`: the node agents serve the claims (granted at run time) instead of a
    /// transfer pod per claim and end.
    pub node_strategy: bool,
    /// `exposure:`: how transfer agents are reached; `None`: the front end's default.
    pub exposure: Option<Exposure>,
    /// Each side's `routerAddress` (`IP[:PORT]`): where its router is dialled for a Route's
    /// agent, the Route's host going as TLS SNI (checked by [`check_router_address`]).
    pub router_addresses: Sides<Option<String>>,
    /// `portForward: true`: this machine reaches the agents through API-server port-forwards,
    /// not at their exposed addresses (which the agents still use between them).
    pub port_forward: bool,
}

/// How a plan's transfer agents are reached (`clusters.exposure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// A `LoadBalancer` Service.
    LoadBalancer,
    /// A `NodePort` Service.
    NodePort,
    /// A `ClusterIP` Service.
    ClusterIp,
    /// An OpenShift Route with TLS passthrough.
    Route,
}

/// Checks a router address: `IP` or `IP:PORT` (`[IPv6]:PORT`). A host name is refused: the
/// address stands in for the DNS answer the Route's host does not get here.
pub fn check_router_address(text: &str) -> Result<(), String> {
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    if text.parse::<std::net::SocketAddr>().is_ok() || bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    Err(format!(
        "`{text}` is not a router address: write its IP, with a port when it is not 443 (`10.0.0.5`, `10.0.0.5:8443`, \
         `[fd00::5]:443`)"
    ))
}

/// What one claim's target claim gets beyond the source claim's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimTarget {
    /// Its storage class, over the map.
    pub storage_class: Option<String>,
    /// Its access modes, over the source's.
    pub access_modes: Option<Vec<String>>,
}

impl Clusters {
    /// The target namespace of source namespace `namespace`.
    #[must_use]
    pub fn target_namespace<'a>(&'a self, namespace: &'a str) -> &'a str {
        self.namespace_mapping.get(namespace).map_or(namespace, String::as_str)
    }
}

/// One value per side of a migration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sides<T> {
    /// The source cluster's.
    pub source: T,
    /// The target cluster's.
    pub target: T,
}

impl<T> Sides<T> {
    /// The value of one side.
    pub fn get(&self, side: Side) -> &T {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// Both values, each turned by `f` (which learns its side).
    pub fn map<U>(&self, mut f: impl FnMut(Side, &T) -> U) -> Sides<U> {
        Sides { source: f(Side::Source, &self.source), target: f(Side::Target, &self.target) }
    }

    /// Both values turned by `f`, or the first error.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(Side, &T) -> Result<U, E>) -> Result<Sides<U>, E> {
        Ok(Sides { source: f(Side::Source, &self.source)?, target: f(Side::Target, &self.target)? })
    }
}

/// One volume of a plan.
#[derive(Debug, Clone)]
pub struct VolumePlan {
    /// Name in progress lines, reports and events.
    pub name: String,
    /// Where from, as written (a [`crate::VolumeResolver`] turns it into where to connect).
    pub source: Location,
    /// Where to, as written.
    pub target: Location,
    /// Its options.
    pub options: VolumeOptions,
}

/// Per-volume options; the same meaning as `mover copy`'s flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeOptions {
    /// Always a stage run for this volume (vanished files are warnings), even in a final run.
    pub stage: bool,
    /// Delete target entries the source lacks.
    pub delete: bool,
    /// Allow deleting more than half of the target's entries.
    pub allow_mass_delete: bool,
    /// Compare contents, not size and mtime.
    pub checksum: bool,
    /// Bytes per second on the tunnel; none when `None`.
    pub bwlimit: Option<u64>,
    /// Compression on the wire.
    pub compression: Compression,
    /// Copy `security.selinux` labels.
    pub selinux: bool,
    /// Recreate device nodes.
    pub devices: bool,
    /// fsync every file.
    pub fsync: bool,
    /// Update changed files in place.
    pub inplace: bool,
    /// Connections for the volume's content.
    pub streams: u32,
    /// Also copy file systems mounted inside the source.
    pub cross_mounts: bool,
    /// Patterns to leave out, with rsync's rules.
    pub excludes: Vec<Vec<u8>>,
}

impl VolumePlan {
    /// The engine options of this volume's copy; `stage` is the run's mode.
    #[must_use]
    pub fn copy_options(&self, stage: bool, dry_run: bool) -> CopyOptions {
        let options = &self.options;
        CopyOptions {
            selinux: options.selinux,
            devices: options.devices,
            fsync: options.fsync,
            compression: options.compression,
            stage: stage || options.stage,
            delete: options.delete,
            allow_mass_delete: options.allow_mass_delete,
            checksum: options.checksum,
            bwlimit: options.bwlimit.unwrap_or(0),
            inplace: options.inplace,
            streams: options.streams,
            cross_mounts: options.cross_mounts,
            itemize: false,
            dry_run,
            excludes: options.excludes.clone(),
        }
    }
}

/// How to reach one side's registry (paths resolved against the plan's directory). The one
/// shape of "registry access": `mover image`'s flags fill the same struct.
#[derive(Debug, Clone)]
pub struct RegistrySide {
    /// Plain HTTP.
    pub plain_http: bool,
    /// Verify certificates.
    pub tls_verify: bool,
    /// CA bundle.
    pub ca_bundle: Option<PathBuf>,
    /// More trusted certificates, PEM, read from a cluster (its ingress CA).
    pub ca_pem: Option<String>,
    /// Auth file (docker `config.json` format); the usual places when `None`.
    pub auth_file: Option<PathBuf>,
    /// Credentials given directly (`USER:PASSWORD` or a token); before the auth file.
    pub credentials: Option<Credentials>,
    /// A file holding a bearer token, read when the registry is first reached.
    pub token_file: Option<PathBuf>,
}

impl Default for RegistrySide {
    fn default() -> Self {
        RegistrySide {
            plain_http: false,
            tls_verify: true,
            ca_bundle: None,
            ca_pem: None,
            auth_file: None,
            credentials: None,
            token_file: None,
        }
    }
}

/// Where a plan's images are found and copied to (`images: {fromNamespaces: true, …}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDiscovery {
    /// The registry host (and port) pods name for the internal registry; `None`: `OpenShift`'s,
    /// [`OPENSHIFT_INTERNAL_REGISTRY`] (an error elsewhere).
    pub internal_registry: Option<String>,
    /// The host (and port) mover reaches the internal registry at; `None`: on `OpenShift`, the
    /// registry's default route.
    pub source_registry: Option<String>,
    /// The target registry host (and port) images go to, under their mapped namespace.
    pub target_registry: String,
    /// The service account whose short-lived token (`TokenRequest` API) pulls from the source
    /// registry: `(namespace, name)`.
    pub service_account: (String, String),
    /// How long that token lives.
    pub token_lifetime: Duration,
}

/// `OpenShift`'s internal registry, as its pods name it.
pub const OPENSHIFT_INTERNAL_REGISTRY: &str = "image-registry.openshift-image-registry.svc:5000";

/// The token's lifetime unless the plan says otherwise (the Kubernetes API's own default).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The shortest token lifetime a Kubernetes API server issues.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// The exposed internal registry, and how to reach it.
#[derive(Debug, Clone)]
pub struct ExposedRegistry {
    /// Its host (and port), as in the found images' source references.
    pub host: String,
    /// How to reach it: the token as credentials, the cluster's ingress CA.
    pub access: RegistrySide,
}

/// One entry of `images:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageTransfer {
    /// Copy one image.
    Copy {
        /// Source reference.
        source: String,
        /// Target reference.
        destination: String,
    },
    /// Copy the tags of a repository.
    Sync {
        /// Source repository.
        source: String,
        /// Target repository.
        destination: String,
        /// Tags; empty means all.
        tags: Vec<String>,
    },
}

impl ImageTransfer {
    /// Its source and destination references.
    #[must_use]
    pub fn ends(&self) -> (&str, &str) {
        match self {
            ImageTransfer::Copy { source, destination } | ImageTransfer::Sync { source, destination, .. } => {
                (source, destination)
            }
        }
    }
}

/// MTC's hook phases, in the order a final run runs them (mig-controller's `task.go`, Final
/// itinerary): `PreBackup`, the transfers, `PostBackup`, `PreRestore`, `PostRestore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub enum Phase {
    /// Before anything moves, on the source side.
    PreBackup,
    /// After the transfers, on the source side.
    PostBackup,
    /// After `PostBackup`, on the target side (MTC: before its restore).
    PreRestore,
    /// Last, on the target side.
    PostRestore,
}

impl Phase {
    /// The side a hook of this phase belongs to unless it says otherwise.
    #[must_use]
    pub fn default_side(self) -> Side {
        match self {
            Phase::PreBackup | Phase::PostBackup => Side::Source,
            Phase::PreRestore | Phase::PostRestore => Side::Target,
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Which cluster something belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The source cluster.
    Source,
    /// The target cluster.
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// What a hook runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    /// A program and its arguments.
    Command(Vec<String>),
    /// An Ansible playbook (resolved path).
    Playbook(PathBuf),
}

/// One hook.
#[derive(Debug, Clone)]
pub struct Hook {
    /// Its name.
    pub name: String,
    /// When it runs.
    pub phase: Phase,
    /// Which side it belongs to.
    pub side: Side,
    /// How long it may run.
    pub timeout: Duration,
    /// What it runs.
    pub action: HookAction,
    /// Also run in stage runs (MTC runs hooks in final migrations only; so does mover unless
    /// this is set).
    pub run_in_stage_runs: bool,
    /// Where it runs as a Kubernetes Job, in the cluster of [`Hook::side`]; `None`: as a
    /// process on this machine.
    pub job: Option<HookJob>,
}

/// How a hook runs as a Kubernetes Job (MTC's `MigHook` with the plan entry's
/// `executionNamespace` and `serviceAccount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookJob {
    /// The container image: a playbook's runner, or the program of a `command:`.
    pub image: String,
    /// The namespace the Job runs in.
    pub namespace: String,
    /// The pod's service account; `None`: the namespace's `default`.
    pub service_account: Option<String>,
}

impl Hook {
    /// Whether it runs in a run of this kind.
    #[must_use]
    pub fn runs_in(&self, stage: bool) -> bool {
        !stage || self.run_in_stage_runs
    }
}

impl Plan {
    /// The directory relative paths of the plan are resolved against, and hooks run in.
    #[must_use]
    pub fn base_dir(&self) -> &Path {
        match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        }
    }

    /// The variables every hook gets, in both spellings MTC users meet: the documented
    /// `migplan_name` and `migration_namespaces` (what the playbooks users copy read), and the
    /// `MIGRATION_PLAN_NAME` and `MIGRATION_NAMESPACES` of MTC's hook Job code.
    #[must_use]
    pub fn hook_environment(&self) -> Vec<(String, String)> {
        let namespaces = self.namespaces.join(",");
        vec![
            ("migplan_name".to_owned(), self.name.clone()),
            ("migration_namespaces".to_owned(), namespaces.clone()),
            ("MIGRATION_PLAN_NAME".to_owned(), self.name.clone()),
            ("MIGRATION_NAMESPACES".to_owned(), namespaces),
        ]
    }

    /// Hooks of one phase, in file order.
    pub fn hooks_of(&self, phase: Phase) -> impl Iterator<Item = &Hook> {
        self.hooks.iter().filter(move |hook| hook.phase == phase)
    }

    /// The access to source registry `host` when it is the exposed internal registry (its token,
    /// the cluster's CA); `None` for any other host, which the plan's `registries:` reach.
    #[must_use]
    pub fn exposed_access(&self, host: &str) -> Option<&RegistrySide> {
        self.exposed_registry.as_ref().filter(|exposed| exposed.host == host).map(|exposed| &exposed.access)
    }

    /// True when some volume involves an agent.
    #[must_use]
    pub fn uses_agents(&self) -> bool {
        self.volumes.iter().any(|v| v.source.is_agent() || v.target.is_agent())
    }
}
