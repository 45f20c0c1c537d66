//! The plan file as written: `apiVersion: mover/v1alpha1`, `kind: MigrationPlan`. Every
//! struct refuses unknown fields, so a misspelt key is an error with its line, not a silently
//! ignored setting. See `examples/plan.yaml` for an annotated example.

use std::path::PathBuf;

use mover_plan::{Phase, Side};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::values::{
    CompressSetting, ExcludeRule, ImageRef, Name, Namespace, ProxyUrl, Rate, RegistryHost, RepositoryRef, Streams,
    TimeoutSetting, VolumeEnd,
};

/// The only `apiVersion` this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ApiVersion {
    /// `mover/v1alpha1`.
    #[serde(rename = "mover/v1alpha1")]
    V1Alpha1,
}

/// The only `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Kind {
    /// `MigrationPlan`.
    MigrationPlan,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlanFile {
    #[expect(dead_code, reason = "deserialising it is the check: only `mover/v1alpha1` parses")]
    pub api_version: ApiVersion,
    #[expect(dead_code, reason = "deserialising it is the check: only `MigrationPlan` parses")]
    pub kind: Kind,
    /// The plan's name: hooks see it as `migplan_name`.
    pub name: Name,
    /// The application's namespaces: hooks see them as `migration_namespaces`.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// The directory `mover certs init` wrote; needed when an agent is involved.
    #[serde(default)]
    pub certs: Option<PathBuf>,
    /// The HTTP CONNECT proxy between source and target (one, as MTC's `stunnel_tcp_proxy`).
    #[serde(default)]
    pub proxy: Option<ProxyUrl>,
    /// A file holding the proxy's password, when the URL has none.
    #[serde(default)]
    pub proxy_password_file: Option<PathBuf>,
    /// CA bundles of the source and target registries.
    #[serde(default)]
    pub ca_bundles: CaBundles,
    /// How to reach the source and target registries (images).
    #[serde(default)]
    pub registries: Registries,
    /// How many transfers run at once.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Volumes to copy.
    #[serde(default)]
    pub volumes: Vec<VolumeEntry>,
    /// Images to copy: a list of copies, or the images of the plan's namespaces
    /// (`{fromNamespaces: true, …}`).
    #[serde(default)]
    pub images: Option<Spanned<ImagesSection>>,
    /// Hooks around the transfers.
    #[serde(default)]
    pub hooks: Vec<HookEntry>,
    /// Where `k8s://` claims are (kubeconfig contexts), and how target claims are made.
    #[serde(default)]
    pub clusters: Option<Spanned<ClustersEntry>>,
}

/// `clusters:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClustersEntry {
    /// The source cluster.
    #[serde(default)]
    pub source: ClusterEntry,
    /// The target cluster.
    #[serde(default)]
    pub target: ClusterEntry,
    /// Source storage class -> target storage class.
    #[serde(default)]
    pub storage_class_map: std::collections::BTreeMap<String, String>,
    /// Source namespace -> target namespace.
    #[serde(default)]
    pub namespace_mapping: std::collections::BTreeMap<Namespace, Namespace>,
    /// Claims (`namespace/name`) left out when every claim of `namespaces` is copied.
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    /// How agents reach the claims: `pod` (the default) or `node`.
    #[serde(default)]
    pub strategy: StrategyEntry,
    /// How transfer agents are reached: `loadBalancer` (the default), `nodePort`, `clusterIP`
    /// or `route`.
    #[serde(default)]
    pub exposure: Option<ExposureEntry>,
    /// Whether mover reaches the agents through API-server port-forwards (it cannot reach the
    /// pod network or the agents' exposed addresses); the agents still dial each other at
    /// their exposed addresses.
    #[serde(default)]
    pub port_forward: bool,
}

/// `clusters.exposure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ExposureEntry {
    /// A `LoadBalancer` Service.
    #[serde(rename = "loadBalancer")]
    LoadBalancer,
    /// A `NodePort` Service.
    #[serde(rename = "nodePort")]
    NodePort,
    /// A `ClusterIP` Service.
    #[serde(rename = "clusterIP")]
    ClusterIp,
    /// An OpenShift Route with TLS passthrough.
    #[serde(rename = "route")]
    Route,
}

/// `clusters.strategy`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyEntry {
    /// A transfer pod per claim and end.
    #[default]
    Pod,
    /// The node agents' `DaemonSet`.
    Node,
}

/// One side of `clusters:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterEntry {
    /// The kubeconfig context; the current one when left out.
    #[serde(default)]
    pub context: Option<String>,
    /// With `exposure: route`: where this cluster's router is dialled (`IP[:PORT]`), the
    /// Route's host going as TLS SNI.
    #[serde(default, rename = "routerAddress")]
    pub router_address: Option<serde_saphyr::Spanned<String>>,
}

/// `caBundles:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaBundles {
    /// PEM bundle that the source registry's certificate chains to.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// PEM bundle that the target registry's certificate chains to.
    #[serde(default)]
    pub target: Option<PathBuf>,
}

/// `registries:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    /// The source cluster's registry.
    #[serde(default)]
    pub source: RegistryAccess,
    /// The target cluster's registry.
    #[serde(default)]
    pub target: RegistryAccess,
}

/// How to reach one side's registry. Secrets stay in files, never in the plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryAccess {
    /// Talk plain HTTP.
    #[serde(default)]
    pub plain_http: bool,
    /// Verify the registry's certificate (against the system roots and the side's CA bundle).
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// A docker `config.json`-style auth file with the registry's credentials.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// A file holding a bearer token (an `OpenShift` service-account token).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for RegistryAccess {
    fn default() -> Self {
        RegistryAccess { plain_http: false, tls_verify: true, auth_file: None, token_file: None }
    }
}

/// `concurrency:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Volumes copied at once.
    #[serde(default = "default_volumes")]
    pub volumes: u16,
    /// Images copied at once.
    #[serde(default = "default_images")]
    pub images: u16,
}

fn default_volumes() -> u16 {
    2
}

fn default_images() -> u16 {
    4
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency { volumes: default_volumes(), images: default_images() }
    }
}

/// One volume to copy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeEntry {
    /// Name in progress, reports and metrics; defaults to the target volume's name (or the
    /// target directory's).
    #[serde(default)]
    pub name: Option<Name>,
    /// `agent://HOST:PORT/VOLUME`, `k8s://CONTEXT/NAMESPACE/PVC` or a directory.
    #[serde(default)]
    pub source: Option<Spanned<VolumeEnd>>,
    /// `agent://HOST:PORT/VOLUME`, `k8s://CONTEXT/NAMESPACE[/PVC]` or a directory.
    #[serde(default)]
    pub target: Option<Spanned<VolumeEnd>>,
    /// A claim of the source cluster, `namespace/name` (instead of `source` and `target`): copied
    /// into the target cluster, to the mapped namespace.
    #[serde(default)]
    pub claim: Option<Spanned<String>>,
    /// The target claim's name (a `claim:` entry; default: the source's).
    #[serde(default, rename = "targetName")]
    pub target_name: Option<String>,
    /// The target claim's storage class (a `claim:` entry; over `storageClassMap`).
    #[serde(default, rename = "storageClass")]
    pub storage_class: Option<String>,
    /// The target claim's access modes (a `claim:` entry; default: the source's).
    #[serde(default, rename = "accessModes")]
    pub access_modes: Option<Vec<String>>,
    /// Options of this volume's copy (`mover copy`'s flags).
    #[serde(default)]
    pub options: VolumeOptions,
}

/// Per-volume options; the same meaning as `mover copy`'s flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeOptions {
    /// Always a stage run for this volume (vanished files are warnings), even in a final run.
    #[serde(default)]
    pub stage: bool,
    /// Delete target entries the source lacks.
    #[serde(default = "yes")]
    pub delete: bool,
    /// Allow deleting more than half of the target's entries.
    #[serde(default)]
    pub allow_mass_delete: bool,
    /// Compare contents, not size and mtime.
    #[serde(default)]
    pub checksum: bool,
    /// Bytes per second on the tunnel.
    #[serde(default)]
    pub bwlimit: Option<Rate>,
    /// `auto`, `off` or a zstd level.
    #[serde(default)]
    pub compress: CompressSetting,
    /// Copy `security.selinux` labels.
    #[serde(default)]
    pub selinux: bool,
    /// Recreate device nodes.
    #[serde(default)]
    pub devices: bool,
    /// fsync every file.
    #[serde(default)]
    pub fsync: bool,
    /// Update changed files in place (`mover copy --inplace`).
    #[serde(default)]
    pub inplace: bool,
    /// Connections for the volume's content (`mover copy --streams`).
    #[serde(default)]
    pub streams: Streams,
    /// Also copy file systems mounted inside the source (`mover copy --cross-mounts`).
    #[serde(default)]
    pub cross_mounts: bool,
    /// Patterns to leave out, with rsync's rules (`mover copy --exclude`).
    #[serde(default)]
    pub exclude: Vec<ExcludeRule>,
}

fn yes() -> bool {
    true
}

impl From<VolumeOptions> for mover_plan::VolumeOptions {
    fn from(options: VolumeOptions) -> Self {
        mover_plan::VolumeOptions {
            stage: options.stage,
            delete: options.delete,
            allow_mass_delete: options.allow_mass_delete,
            checksum: options.checksum,
            bwlimit: options.bwlimit.map(|rate| rate.0),
            compression: options.compress.0,
            selinux: options.selinux,
            devices: options.devices,
            fsync: options.fsync,
            inplace: options.inplace,
            streams: options.streams.0,
            cross_mounts: options.cross_mounts,
            excludes: options.exclude.into_iter().map(|rule| rule.0).collect(),
        }
    }
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            stage: false,
            delete: true,
            allow_mass_delete: false,
            checksum: false,
            bwlimit: None,
            compress: CompressSetting::default(),
            selinux: false,
            devices: false,
            fsync: false,
            inplace: false,
            streams: Streams::default(),
            cross_mounts: false,
            exclude: Vec::new(),
        }
    }
}

/// One entry of `images:`: a copy (`source` and `destination`) or a `sync`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// Image to copy.
    #[serde(default)]
    pub source: Option<ImageRef>,
    /// Where to.
    #[serde(default)]
    pub destination: Option<ImageRef>,
    /// A repository sync.
    #[serde(default)]
    pub sync: Option<SyncEntry>,
}

/// `images:`: a list of copies (`[{source, destination}, {sync: …}]`), or a mapping that also
/// finds the images of the plan's namespaces ([`FoundImagesEntry`]).
#[derive(Debug, Default)]
pub enum ImagesSection {
    /// The copies listed.
    #[default]
    None,
    /// A list of copies.
    List(Vec<Spanned<ImageEntry>>),
    /// The mapping.
    Found(Box<FoundImagesEntry>),
}

impl<'de> Deserialize<'de> for ImagesSection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SectionVisitor;
        impl<'de> serde::de::Visitor<'de> for SectionVisitor {
            type Value = ImagesSection;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a list of image copies, or a mapping such as `{fromNamespaces: true, targetRegistry: HOST}`",
                )
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<ImagesSection, E> {
                Ok(ImagesSection::None)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<ImagesSection, A::Error> {
                Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(ImagesSection::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ImagesSection, A::Error> {
                let entry: FoundImagesEntry =
                    Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ImagesSection::Found(Box::new(entry)))
            }
        }
        deserializer.deserialize_any(SectionVisitor)
    }
}

/// `images: {fromNamespaces: true, …}`: the images the plan's namespaces use that the source
/// cluster's internal registry holds, copied to the target registry under the namespace mapping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FoundImagesEntry {
    /// Find the images of the plan's namespaces (workloads' pod templates, bare pods, and
    /// `ImageStream` tags on `OpenShift`).
    #[serde(default)]
    pub from_namespaces: bool,
    /// The registry host pods name for the internal registry (default on `OpenShift`:
    /// `image-registry.openshift-image-registry.svc:5000`).
    #[serde(default)]
    pub internal_registry: Option<RegistryHost>,
    /// Where mover reaches the internal registry (default on `OpenShift`: the host of the
    /// registry's default route).
    #[serde(default)]
    pub source_registry: Option<RegistryHost>,
    /// The registry the images go to.
    #[serde(default)]
    pub target_registry: Option<RegistryHost>,
    /// The service account whose short-lived token pulls from the source registry.
    #[serde(default)]
    pub service_account: Option<ServiceAccountEntry>,
    /// The token's lifetime (default `1h`, at least `10m`).
    #[serde(default)]
    pub token_lifetime: Option<TimeoutSetting>,
    /// Images to copy besides the ones found (the list form's entries).
    #[serde(default)]
    pub copy: Vec<Spanned<ImageEntry>>,
}

/// `serviceAccount: {namespace, name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountEntry {
    /// Its namespace.
    pub namespace: Namespace,
    /// Its name.
    pub name: Name,
}

/// `sync: {source, destination, tags}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncEntry {
    /// Source repository.
    pub source: RepositoryRef,
    /// Target repository.
    pub destination: RepositoryRef,
    /// Tags to copy; every tag when left out.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One hook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HookEntry {
    /// Name in messages and reports.
    pub name: Spanned<Name>,
    /// When it runs.
    pub phase: Phase,
    /// The cluster whose Job runs it (`source` or `target`; `side:` is the older spelling);
    /// defaults to the phase's side (Backup: source, Restore: target).
    #[serde(default, alias = "side")]
    pub cluster: Option<Side>,
    /// How long it may run (default 30 minutes).
    #[serde(default)]
    pub timeout: Option<TimeoutSetting>,
    /// A program and its arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// An Ansible playbook, run with `ansible-playbook -i localhost, -c local FILE`.
    #[serde(default)]
    pub playbook: Option<PathBuf>,
    /// Also run in stage runs (`--stage`); hooks run in final runs only otherwise, as in MTC.
    #[serde(default)]
    pub run_in_stage_runs: bool,
    /// The Job's image (a plan with `clusters:`): the playbook's runner (default: MTC's
    /// `quay.io/konveyor/hook-runner:latest`), or the image whose program `command:` runs.
    #[serde(default)]
    pub image: Option<String>,
    /// The namespace the Job runs in (default: the plan's first namespace, mapped on the target).
    #[serde(default)]
    pub execution_namespace: Option<Namespace>,
    /// The Job pod's service account (default: the namespace's `default`).
    #[serde(default)]
    pub service_account: Option<String>,
    /// Run on this machine even in a plan with `clusters:`.
    #[serde(default)]
    pub local: bool,
}
