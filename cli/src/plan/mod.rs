//! Migration plans: the file (`apiVersion: mover/v1alpha1`, `kind: MigrationPlan`), strictly
//! parsed, then checked as a whole into a [`Plan`] whose relative paths are resolved against the
//! plan file's directory.
//!
//! Errors name the file, the line and the column: unknown fields, wrong types and bad values
//! come from the YAML reader (serde-saphyr) with their position; checks that span several
//! fields (a hook with both `command` and `playbook`, two volumes with one name) point at the
//! entry concerned.

mod file;
pub mod report;
pub mod values;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_saphyr::Location as YamlLocation;

use file::{HookEntry, ImageEntry, PlanFile, VolumeEntry};
pub use mover_plan::{
    ClaimRef, ClaimTarget, Clusters, DEFAULT_HOOK_IMAGE, DEFAULT_HOOK_TIMEOUT, Hook, HookAction, HookJob,
    ImageDiscovery, ImageTransfer, Location, Phase, Plan, RegistrySide, Side, Sides, VolumePlan,
};

/// Reads and checks a plan file.
pub fn load(path: &Path) -> anyhow::Result<Plan> {
    // Absolute, so that hooks run in (and relative paths resolve against) a real directory.
    let path = &std::path::absolute(path).with_context(|| format!("cannot locate the plan `{}`", path.display()))?;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the plan `{}`", path.display()))?;
    parse(&text, path)
}

fn at(path: &Path, location: YamlLocation) -> String {
    format!("`{}` line {}, column {}", path.display(), location.line(), location.column())
}

/// Parses and checks plan text; `path` names the file in errors and anchors relative paths.
pub fn parse(text: &str, path: &Path) -> anyhow::Result<Plan> {
    let file: PlanFile = serde_saphyr::from_str(text).map_err(|error| {
        let message = plain_message(&error);
        match error.location() {
            Some(location) => anyhow::anyhow!("{}: {message}", at(path, location)),
            None => anyhow::anyhow!("`{}`: {message}", path.display()),
        }
    })?;
    check(file, path)
}

/// The reader's message without its own position suffix (we print ours first) or snippet.
fn plain_message(error: &serde_saphyr::Error) -> String {
    let options = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
    let rendered = error.render_with_options(options);
    let message = match rendered.rfind(" at line ") {
        Some(cut) => &rendered[..cut],
        None => rendered.as_str(),
    };
    let message = message.trim();
    // The reader says `invalid u16` for `volumes: many`: say what would be valid.
    if let Some(kind) = message.strip_prefix("invalid ")
        && matches!(kind, "u8" | "u16" | "u32" | "u64" | "i32" | "i64")
    {
        return format!("{message}: expected a whole number");
    }
    message.to_owned()
}

/// `path` relative to the plan's directory, without `.` components.
fn resolve(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() { path.to_owned() } else { base.join(path) };
    joined.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
}

fn check(file: PlanFile, path: &Path) -> anyhow::Result<Plan> {
    let base = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    if file.concurrency.volumes == 0 || file.concurrency.images == 0 {
        bail!("`{}`: `concurrency` values must be at least 1", path.display());
    }
    let clusters = file.clusters.map(|entry| check_clusters(entry, path)).transpose()?;
    let (volumes, claims) = check_volumes(file.volumes, path, &base, clusters.as_ref())?;
    let clusters = clusters.map(|clusters| Clusters { every_claim: volumes.is_empty(), claims, ..clusters });
    if let Some(clusters) = &clusters
        && clusters.every_claim
        && file.namespaces.is_empty()
    {
        bail!(
            "`{}`: the plan has `clusters:` but neither volumes nor `namespaces:`; list the namespaces whose claims \
             move, or the claims (`volumes: [{{claim: NAMESPACE/NAME}}]`)",
            path.display()
        );
    }
    let (entries, image_discovery) = match file.images {
        None => (Vec::new(), None),
        Some(section) => check_images_section(section, path, clusters.as_ref())?,
    };
    let images = entries.into_iter().map(|entry| check_image(entry, path)).collect::<anyhow::Result<Vec<_>>>()?;
    let namespaces: Vec<String> = file.namespaces.into_iter().map(|ns| ns.0).collect();
    let hooks = check_hooks(file.hooks, path, &base, clusters.as_ref().map(|clusters| (clusters, &namespaces[..])))?;
    let plan = Plan {
        path: path.to_owned(),
        name: file.name.0,
        namespaces,
        certs: file.certs.map(|dir| resolve(&base, &dir)),
        proxy: file.proxy.map(|proxy| proxy.0),
        proxy_password_file: file.proxy_password_file.map(|p| resolve(&base, &p)),
        volume_concurrency: usize::from(file.concurrency.volumes),
        image_concurrency: usize::from(file.concurrency.images),
        registries: Sides {
            source: registry_side(&file.registries.source, file.ca_bundles.source.as_deref(), &base),
            target: registry_side(&file.registries.target, file.ca_bundles.target.as_deref(), &base),
        },
        volumes,
        images,
        image_discovery,
        exposed_registry: None,
        hooks,
        clusters,
    };
    if plan.uses_agents() && plan.certs.is_none() {
        bail!(
            "`{}`: the plan copies volumes of agents but has no `certs:`; add `certs: DIR` (the directory `mover certs init DIR` wrote)",
            path.display()
        );
    }
    Ok(plan)
}

fn registry_side(access: &file::RegistryAccess, ca_bundle: Option<&Path>, base: &Path) -> RegistrySide {
    RegistrySide {
        plain_http: access.plain_http,
        tls_verify: access.tls_verify,
        ca_bundle: ca_bundle.map(|p| resolve(base, p)),
        ca_pem: None,
        auth_file: access.auth_file.as_deref().map(|p| resolve(base, p)),
        credentials: None,
        token_file: access.token_file.as_deref().map(|p| resolve(base, p)),
    }
}

/// `namespace/name` of a claim, checked.
fn claim_name(text: &str) -> Result<(String, String), String> {
    let parsed = text.split_once('/').and_then(|(namespace, name)| {
        mover_plan::parse_location(&format!("k8s:///{namespace}/{name}")).ok().filter(|_| !name.is_empty())
    });
    match parsed {
        Some(_) => {
            let (namespace, name) = text.split_once('/').expect("checked");
            Ok((namespace.to_owned(), name.to_owned()))
        }
        None => Err(format!("`{text}` is not `NAMESPACE/NAME` of a claim (lower-case letters, digits, `-` and `.`)")),
    }
}

/// The volume of claim `namespace/name` when a plan copies every claim of its namespaces: to the
/// mapped namespace, under the same name, with the default options.
#[must_use]
pub fn claim_volume(clusters: &Clusters, namespace: &str, name: &str) -> VolumePlan {
    let source = ClaimRef {
        context: clusters.contexts.source.clone(),
        namespace: namespace.to_owned(),
        name: Some(name.to_owned()),
    };
    let target = ClaimRef {
        context: clusters.contexts.target.clone(),
        namespace: clusters.target_namespace(namespace).to_owned(),
        name: Some(name.to_owned()),
    };
    VolumePlan {
        name: source.display_name(),
        source: Location::Kube(source),
        target: Location::Kube(target),
        options: file::VolumeOptions::default().into(),
    }
}

fn check_clusters(entry: serde_saphyr::Spanned<file::ClustersEntry>, path: &Path) -> anyhow::Result<Clusters> {
    let clusters = entry.value;
    let mut exclude = Vec::new();
    for claim in clusters.exclude {
        claim_name(&claim.value).map_err(|e| anyhow::anyhow!("{}: `exclude`: {e}", at(path, claim.referenced)))?;
        exclude.push(claim.value);
    }
    let router = |entry: Option<serde_saphyr::Spanned<String>>| {
        entry
            .map(|address| {
                mover_plan::check_router_address(&address.value)
                    .map(|()| address.value)
                    .map_err(|e| anyhow::anyhow!("{}: `routerAddress`: {e}", at(path, address.referenced)))
            })
            .transpose()
    };
    let router_addresses =
        Sides { source: router(clusters.source.router_address)?, target: router(clusters.target.router_address)? };
    let exposure = clusters.exposure.map(|exposure| match exposure {
        file::ExposureEntry::LoadBalancer => mover_plan::Exposure::LoadBalancer,
        file::ExposureEntry::NodePort => mover_plan::Exposure::NodePort,
        file::ExposureEntry::ClusterIp => mover_plan::Exposure::ClusterIp,
        file::ExposureEntry::Route => mover_plan::Exposure::Route,
    });
    Ok(Clusters {
        contexts: Sides { source: clusters.source.context, target: clusters.target.context },
        storage_class_map: clusters.storage_class_map,
        namespace_mapping: clusters.namespace_mapping.into_iter().map(|(from, to)| (from.0, to.0)).collect(),
        exclude,
        claims: std::collections::BTreeMap::new(),
        every_claim: false,
        node_strategy: clusters.strategy == file::StrategyEntry::Node,
        exposure,
        router_addresses,
        port_forward: clusters.port_forward,
    })
}

/// A `claim:` entry's ends in the plan's clusters.
fn claim_ends(
    claim: &serde_saphyr::Spanned<String>,
    target_name: Option<&str>,
    clusters: Option<&Clusters>,
    path: &Path,
) -> anyhow::Result<(Location, Location)> {
    let place = at(path, claim.referenced);
    let Some(clusters) = clusters else {
        bail!(
            "{place}: a `claim:` volume needs the plan's `clusters:` (the contexts of the source and target clusters)"
        );
    };
    let (namespace, name) = claim_name(&claim.value).map_err(|e| anyhow::anyhow!("{place}: {e}"))?;
    if let Some(target_name) = target_name {
        claim_name(&format!("{namespace}/{target_name}")).map_err(|e| anyhow::anyhow!("{place}: `targetName`: {e}"))?;
    }
    let target = ClaimRef {
        context: clusters.contexts.target.clone(),
        namespace: clusters.target_namespace(&namespace).to_owned(),
        name: Some(target_name.unwrap_or(&name).to_owned()),
    };
    let source = ClaimRef { context: clusters.contexts.source.clone(), namespace, name: Some(name) };
    Ok((Location::Kube(source), Location::Kube(target)))
}

fn check_volumes(
    entries: Vec<VolumeEntry>,
    path: &Path,
    base: &Path,
    clusters: Option<&Clusters>,
) -> anyhow::Result<(Vec<VolumePlan>, std::collections::BTreeMap<String, ClaimTarget>)> {
    let mut names = HashSet::new();
    let mut targets = HashSet::new();
    let mut volumes = Vec::new();
    let mut claims = std::collections::BTreeMap::new();
    for entry in entries {
        let localize = |location: Location| match location {
            Location::Local(dir) => Location::Local(resolve(base, &dir)),
            remote @ (Location::Agent { .. } | Location::Kube(_)) => remote,
        };
        let (source, target, where_source, where_target) = match (&entry.claim, entry.source, entry.target) {
            (Some(claim), None, None) => {
                let (source, target) = claim_ends(claim, entry.target_name.as_deref(), clusters, path)?;
                let place = at(path, claim.referenced);
                (source, target, place.clone(), place)
            }
            (None, Some(source), Some(target)) => {
                if entry.target_name.is_some() || entry.storage_class.is_some() || entry.access_modes.is_some() {
                    bail!(
                        "{}: `targetName`, `storageClass` and `accessModes` belong to `claim:` volumes",
                        at(path, source.referenced)
                    );
                }
                let (where_source, where_target) = (at(path, source.referenced), at(path, target.referenced));
                (localize(source.value.0), localize(target.value.0), where_source, where_target)
            }
            (Some(claim), _, _) => bail!(
                "{}: a volume is either a `claim:` or a `source:` and a `target:`, not both",
                at(path, claim.referenced)
            ),
            (None, source, target) => {
                let place =
                    source.or(target).map_or_else(|| format!("`{}`", path.display()), |end| at(path, end.referenced));
                bail!("{place}: a volume needs a `source:` and a `target:` (or a `claim:` of the plan's `clusters:`)");
            }
        };
        if let (Location::Agent { .. }, Location::Local(_)) = (&source, &target) {
            bail!(
                "{where_target}: copying from an agent into a local directory is not supported; make the target `agent://HOST:PORT/VOLUME` and run `mover-agent serve` there"
            );
        }
        let name = match (entry.name, &source, &target) {
            (Some(name), _, _) => name.0,
            // A claim is named `namespace/pvc`, as Kubernetes users name it.
            (None, Location::Kube(claim), _) => claim.display_name(),
            (None, _, target) => {
                let derived = match target {
                    Location::Local(dir) => {
                        dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                    }
                    Location::Agent { volume, .. } => volume.clone(),
                    Location::Kube(claim) => claim.display_name(),
                };
                values::check_name(&derived)
                    .map_err(|e| anyhow::anyhow!("{where_source}: this volume needs a `name:` ({e})"))?;
                derived
            }
        };
        if !names.insert(name.clone()) {
            bail!("{where_source}: a second volume named `{name}`; give each volume its own `name:`");
        }
        if !targets.insert(target.clone()) {
            bail!(
                "{where_target}: `{target}` is the target of an earlier volume too; two copies cannot write one target"
            );
        }
        if let Err(error) =
            mover_engine::exclude::Excludes::new(&entry.options.exclude.iter().map(|r| &r.0).collect::<Vec<_>>())
        {
            bail!("{where_source}: volume `{name}`: {error}");
        }
        if entry.storage_class.is_some() || entry.access_modes.is_some() {
            claims.insert(
                name.clone(),
                ClaimTarget { storage_class: entry.storage_class.clone(), access_modes: entry.access_modes.clone() },
            );
        }
        volumes.push(VolumePlan { name, source, target, options: entry.options.into() });
    }
    Ok((volumes, claims))
}

/// `images:`: its copies, and what finds more (the mapping form, with `fromNamespaces: true`).
fn check_images_section(
    section: serde_saphyr::Spanned<file::ImagesSection>,
    path: &Path,
    clusters: Option<&Clusters>,
) -> anyhow::Result<(Vec<serde_saphyr::Spanned<ImageEntry>>, Option<ImageDiscovery>)> {
    let place = at(path, section.referenced);
    let found = match section.value {
        file::ImagesSection::None => return Ok((Vec::new(), None)),
        file::ImagesSection::List(entries) => return Ok((entries, None)),
        file::ImagesSection::Found(found) => *found,
    };
    if !found.from_namespaces {
        if found.internal_registry.is_some()
            || found.source_registry.is_some()
            || found.target_registry.is_some()
            || found.service_account.is_some()
            || found.token_lifetime.is_some()
        {
            bail!(
                "{place}: `images:` names registries to find images in, but not `fromNamespaces: true`; add it, or list \
                 the copies alone"
            );
        }
        return Ok((found.copy, None));
    }
    if clusters.is_none() {
        bail!(
            "{place}: `fromNamespaces: true` finds images in the source cluster: the plan needs `clusters:` (the \
             source's kubeconfig context) and `namespaces:`"
        );
    }
    let Some(target) = found.target_registry else {
        bail!("{place}: `fromNamespaces: true` needs `targetRegistry: HOST[:PORT]`, the registry the images go to");
    };
    let Some(account) = found.service_account else {
        bail!(
            "{place}: `fromNamespaces: true` needs `serviceAccount: {{namespace: NS, name: NAME}}`: a service account of \
             the source cluster that may pull the namespaces' images (on OpenShift, `oc policy add-role-to-user \
             system:image-puller system:serviceaccount:NS:NAME -n NAMESPACE` for each namespace); mover asks for a \
             short-lived token of it"
        );
    };
    let registry_account = mover_kube::objects::rbac::REGISTRY_SERVICE_ACCOUNT;
    if account.name.0 != registry_account {
        bail!(
            "{place}: `serviceAccount` is named `{}`; mover's role may ask tokens only for a service account named \
             `{registry_account}` (one that could mint tokens for any service account could become any of them): create \
             `{registry_account}` in namespace `{}` and name it here",
            account.name.0,
            account.namespace.0
        );
    }
    let lifetime = found.token_lifetime.map_or(mover_plan::DEFAULT_TOKEN_LIFETIME, |setting| setting.0);
    if lifetime < mover_plan::MIN_TOKEN_LIFETIME {
        bail!(
            "{place}: `tokenLifetime` is {}s; the Kubernetes API issues tokens of at least 10 minutes: write `10m` or more",
            lifetime.as_secs()
        );
    }
    let discovery = ImageDiscovery {
        internal_registry: found.internal_registry.map(|host| host.0),
        source_registry: found.source_registry.map(|host| host.0),
        target_registry: target.0,
        service_account: (account.namespace.0, account.name.0),
        token_lifetime: lifetime,
    };
    Ok((found.copy, Some(discovery)))
}

fn check_image(entry: serde_saphyr::Spanned<ImageEntry>, path: &Path) -> anyhow::Result<ImageTransfer> {
    let place = at(path, entry.referenced);
    match entry.value {
        ImageEntry { source: Some(source), destination: Some(destination), sync: None } => {
            Ok(ImageTransfer::Copy { source: source.0, destination: destination.0 })
        }
        ImageEntry { source: None, destination: None, sync: Some(sync) } => {
            for tag in &sync.tags {
                if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                    bail!("{place}: `{tag}` is not a valid tag");
                }
            }
            Ok(ImageTransfer::Sync { source: sync.source.0, destination: sync.destination.0, tags: sync.tags })
        }
        _ => bail!(
            "{place}: an image entry is either `source:` and `destination:` (one image) or `sync: {{source, destination, tags}}` (a repository)"
        ),
    }
}

/// Checks the hooks; `jobs` (a plan with `clusters:`, and its namespaces) makes them Jobs but
/// for `local: true` ones.
fn check_hooks(
    entries: Vec<HookEntry>,
    path: &Path,
    base: &Path,
    jobs: Option<(&Clusters, &[String])>,
) -> anyhow::Result<Vec<Hook>> {
    let mut names = HashSet::new();
    let mut hooks = Vec::new();
    for entry in entries {
        let place = at(path, entry.name.referenced);
        let name = entry.name.value.0.clone();
        if !names.insert(name.clone()) {
            bail!("{place}: a second hook named `{name}`; hook names must be unique");
        }
        let side = entry.cluster.unwrap_or(entry.phase.default_side());
        let job = match jobs {
            Some(jobs) if !entry.local => {
                Some(hook_job(&entry, side, jobs).map_err(|e| anyhow::anyhow!("{place}: {e}"))?)
            }
            _ if entry.image.is_some() || entry.execution_namespace.is_some() || entry.service_account.is_some() => {
                bail!(
                    "{place}: hook `{name}` runs on this machine ({}), so `image`, `executionNamespace` and \
                 `serviceAccount` do not apply; remove them, or run it as a Job in a plan with `clusters:`",
                    if entry.local { "`local: true`" } else { "the plan has no `clusters:`" }
                )
            }
            _ => None,
        };
        let action = match (entry.command, entry.playbook) {
            (Some(command), None) => {
                if command.first().is_none_or(String::is_empty) {
                    bail!(
                        "{place}: hook `{name}` has an empty `command`; write e.g. `command: [/bin/sh, -c, \"...\"]`"
                    );
                }
                HookAction::Command(command)
            }
            (None, Some(playbook)) => HookAction::Playbook(resolve(base, &playbook)),
            _ => bail!("{place}: hook `{name}` needs exactly one of `command: [PROGRAM, ARG...]` or `playbook: FILE`"),
        };
        // Whole seconds above zero (the reader's check): a Job's activeDeadlineSeconds as it is.
        let timeout = entry.timeout.map_or(DEFAULT_HOOK_TIMEOUT, |t| t.0);
        hooks.push(Hook {
            name,
            phase: entry.phase,
            side,
            timeout,
            action,
            run_in_stage_runs: entry.run_in_stage_runs,
            job,
        });
    }
    Ok(hooks)
}

/// Where hook `entry` of side `side` runs as a Job: its image, namespace and service account,
/// with their defaults.
fn hook_job(entry: &HookEntry, side: Side, (clusters, namespaces): (&Clusters, &[String])) -> Result<HookJob, String> {
    let name = &entry.name.value.0;
    let image = match (&entry.image, &entry.command) {
        (Some(image), _) => check_container_image(image)?,
        (None, Some(_)) => {
            return Err(format!(
                "hook `{name}` is a `command:` in a plan with `clusters:`, so it runs as a Job, which needs the \
                 container image whose program it runs: add `image: IMAGE`, or `local: true` to run it on this machine"
            ));
        }
        (None, None) => DEFAULT_HOOK_IMAGE.to_owned(),
    };
    let namespace = match (&entry.execution_namespace, namespaces.first()) {
        (Some(namespace), _) => namespace.0.clone(),
        (None, Some(first)) => match side {
            Side::Source => first.clone(),
            Side::Target => clusters.target_namespace(first).to_owned(),
        },
        (None, None) => {
            return Err(format!(
                "hook `{name}` runs as a Job but the plan has no `namespaces:` to run it in; add \
                 `executionNamespace: NAMESPACE` (or `local: true` to run it on this machine)"
            ));
        }
    };
    let service_account = entry.service_account.as_deref().map(check_service_account).transpose()?;
    Ok(HookJob { image, namespace, service_account })
}

/// A container image reference as a pod names it (`quay.io/org/image:tag`).
fn check_container_image(image: &str) -> Result<String, String> {
    if image.starts_with("docker://") || image.starts_with("oci:") {
        return Err(format!(
            "`image: {image}`: a Job's image is written as a pod names it, without a transport (e.g. \
             `quay.io/konveyor/hook-runner:latest`)"
        ));
    }
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`image: {image}` is not an image reference (e.g. `quay.io/konveyor/hook-runner:latest`)"));
    }
    Ok(image.to_owned())
}

/// A service account name: a DNS-1123 subdomain.
fn check_service_account(name: &str) -> Result<String, String> {
    let valid = !name.is_empty() && name.len() <= 253 && name.split('.').all(mover_kube::objects::labels::is_dns_label);
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "`serviceAccount: {name}` is not a service account name: lower-case letters, digits, `-` and `.`, \
             starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests;
