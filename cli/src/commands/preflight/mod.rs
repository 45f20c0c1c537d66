//! `mover preflight PLAN.yaml`: the seed's prerequisites that apply here, checked, each with a
//! remedy. `mover plan run` runs the same checks first unless `--skip-preflight`.
//!
//! Checks: the migration's certificates (chained to the CA, valid, not expiring within the
//! window); every agent reachable (target agents through the plan's proxy when it has one),
//! speaking this build's protocol version, presenting a certificate that does not expire within
//! the window, and serving the plan's volumes; source volumes readable, target volumes writable,
//! target free space at least the source's used bytes plus a margin (less what the target
//! already holds); registry CA bundles parse; hook programs and `ansible-playbook` present.
//! Registry reachability and credentials are not checked yet (image transfers in plans are not
//! built). A plan with `clusters:` gets the checks of `cluster.rs` instead of the agents' and
//! volumes' (its agents start only when it runs).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use mover_engine::certs::{self, Identity, Role};
use mover_engine::client::{self, AgentStatus, CopyError, SessionError};
use mover_engine::hooks::ANSIBLE_PLAYBOOK;
use mover_engine::inspect;
use mover_engine::tunnel::Proxy;
use mover_engine::{PROTOCOL_VERSION, VERSION};
use mover_engine::{VolumeStatus, WireError};
use rustls::pki_types::CertificateDer;

mod cluster;
mod table;

pub use cluster::{check_cluster_plan, check_cluster_volumes};
pub use table::Checks;

use crate::Outcome;
use crate::access::{self, plan_identity, plan_proxy};
use crate::args::{CheckArgs, GlobalArgs, OutputFormat, PreflightArgs};
use crate::plan::{self, HookAction, Location, Plan, Side, VolumePlan};
use mover_plan::{AgentRef, VolumeResolver, WrittenLocations, agents_of};

/// How strict some checks are.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Certificates must stay valid at least this long.
    pub cert_window: Duration,
    /// Target free space must exceed the source's used bytes by this many percent.
    pub space_margin_percent: u64,
}

impl From<&CheckArgs> for Thresholds {
    fn from(args: &CheckArgs) -> Self {
        Thresholds {
            cert_window: Duration::from_secs(u64::from(args.cert_window_days) * 86_400),
            space_margin_percent: u64::from(args.space_margin),
        }
    }
}

pub async fn run(args: PreflightArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let plan = plan::load(&args.plan).inspect_err(|error| {
        let empty = serde_json::json!({"checks": 0, "failed": 0});
        crate::output::json_final_on_error(global.output == OutputFormat::Json, "preflight", empty, error);
    })?;
    let checks = match &plan.clusters {
        Some(_) => check_cluster_plan(&plan, &args.kube).await,
        None => check_plan(&plan, &WrittenLocations, Thresholds::from(&args.checks)).await,
    };
    checks.print(global.output);
    Ok(if checks.failures() == 0 { Outcome::Success } else { Outcome::Failed })
}

/// Runs every check that applies to `plan`, with its volume ends where `resolver` puts them.
pub async fn check_plan(plan: &Plan, resolver: &dyn VolumeResolver, thresholds: Thresholds) -> Checks {
    let mut checks = Checks::default();
    let ends = resolve_ends(plan, resolver, &mut checks).await;
    let identity = check_certificates(plan, thresholds, &mut checks);
    let proxy = match plan_proxy(plan) {
        Ok(proxy) => proxy,
        Err(error) => {
            checks.fail("proxy", format!("{error:#}"), "fix `proxy:` / `proxyPasswordFile:` in the plan");
            None
        }
    };
    let agents = agents_of(ends.iter().map(|end| (&end.source, &end.target)));
    let agents = check_agents(agents, identity.as_ref(), proxy.as_ref(), thresholds, &mut checks).await;
    check_volumes(&ends, &agents, thresholds, &mut checks);
    check_ca_bundles(plan, &mut checks);
    check_hooks(plan, &mut checks);
    check_registries(plan, proxy.as_ref(), &mut checks).await;
    checks
}

/// One volume's ends, as the resolver placed them.
struct Ends<'a> {
    volume: &'a VolumePlan,
    source: Location,
    target: Location,
}

/// Where each volume's ends are; a volume whose ends cannot be found is a failed check.
async fn resolve_ends<'a>(plan: &'a Plan, resolver: &dyn VolumeResolver, checks: &mut Checks) -> Vec<Ends<'a>> {
    let mut ends = Vec::new();
    for volume in &plan.volumes {
        let placed = async {
            Ok::<_, anyhow::Error>((
                resolver.resolve(volume, Side::Source).await?,
                resolver.resolve(volume, Side::Target).await?,
            ))
        };
        match placed.await {
            Ok((source, target)) => ends.push(Ends { volume, source, target }),
            Err(error) => checks.fail(
                format!("volume `{}`: ends found", volume.name),
                format!("{error:#}"),
                "check the volume's `source:` and `target:`",
            ),
        }
    }
    ends
}

fn days(duration: Duration) -> u64 {
    duration.as_secs() / 86_400
}

/// Checks `ca.crt` and the coordinator's (and, when present, the agents') certificate files.
fn check_certificates(plan: &Plan, thresholds: Thresholds, checks: &mut Checks) -> Option<Identity> {
    let dir = plan.certs.as_ref().filter(|_| plan.uses_agents())?;
    let remedy = format!("create them with `mover certs init {}` and give every agent a copy", dir.display());
    let identity = match plan_identity(plan) {
        Ok(identity) => identity,
        Err(error) => {
            checks.fail(format!("certificates in `{}`", dir.display()), format!("{error:#}"), remedy);
            return None;
        }
    };
    let identity = identity?;
    let horizon = SystemTime::now() + thresholds.cert_window;
    let renew = format!(
        "make new certificates (`mover certs init {} --force`), copy them to every agent and restart the agents",
        dir.display()
    );
    let mut leaf = |name: &str, role: Role, chain: &[CertificateDer<'_>]| {
        let check = format!("{name} certificate chains to the migration CA");
        if let Err(error) = certs::verify_chain(&identity.ca, chain, role, SystemTime::now()) {
            checks.fail(check, error.to_string(), renew.clone());
        } else {
            checks.ok(check, format!("`{}`", dir.join("ca.crt").display()));
            expiry(checks, &format!("{name} certificate"), &chain[0], horizon, thresholds, &renew);
        }
    };
    leaf("coordinator", Role::Coordinator, &identity.chain.clone());
    if let Ok(agent) = certs::read_certs(&dir.join("agent.crt")) {
        leaf("agent", Role::Agent, &agent);
    }
    expiry(checks, "migration CA", &identity.ca, horizon, thresholds, &renew);
    Some(identity)
}

fn expiry(
    checks: &mut Checks,
    what: &str,
    cert: &CertificateDer<'_>,
    horizon: SystemTime,
    thresholds: Thresholds,
    remedy: &str,
) {
    let check = format!("{what} valid for {}+ days", days(thresholds.cert_window));
    match certs::not_after(cert) {
        None => checks.fail(check, "does not parse as X.509", remedy),
        Some(end) if end < SystemTime::now() => checks.fail(check, "expired", remedy),
        Some(end) if end < horizon => checks.fail(
            check,
            format!("expires in {} days", days(end.duration_since(SystemTime::now()).unwrap_or_default())),
            remedy,
        ),
        Some(end) => {
            checks.ok(check, format!("{} days left", days(end.duration_since(SystemTime::now()).unwrap_or_default())));
        }
    }
}

async fn check_agents(
    agents: Vec<AgentRef>,
    identity: Option<&Identity>,
    proxy: Option<&Proxy>,
    thresholds: Thresholds,
    checks: &mut Checks,
) -> BTreeMap<String, AgentStatus> {
    let mut reached = BTreeMap::new();
    let Some(identity) = identity else {
        for AgentRef { addr, .. } in &agents {
            checks.skip(format!("agent `{addr}` reachable"), "no usable certificates");
        }
        return reached;
    };
    let horizon = SystemTime::now() + thresholds.cert_window;
    for AgentRef { addr, via: forward, is_target } in agents {
        // Target agents are reached the way data reaches them: through the proxy, when set;
        // an agent behind a port-forward only through it (agents' own way to it is not seen
        // from here).
        let (dial, via) = match &forward {
            Some(forward) => (forward.as_str(), None),
            None => (addr.as_str(), if is_target { proxy } else { None }),
        };
        let check = match (via, &forward) {
            (_, Some(forward)) => format!("agent `{addr}` reachable through a port-forward ({forward})"),
            (Some(proxy), None) => format!("agent `{addr}` reachable through proxy `{proxy}`"),
            (None, None) => format!("agent `{addr}` reachable"),
        };
        let version_check = format!("agent `{addr}` protocol version {PROTOCOL_VERSION}");
        match client::inspect(identity, dial, via).await {
            Ok(status) => {
                checks.ok(check, format!("serves {}", names(&status.volumes)));
                checks.ok(version_check, format!("mover-agent {}, this mover {VERSION}", status.software_version));
                match &status.certificate {
                    Some(cert) => expiry(
                        checks,
                        &format!("agent `{addr}`'s certificate"),
                        cert,
                        horizon,
                        thresholds,
                        "give the agent fresh certificates from `mover certs init` and restart it",
                    ),
                    None => checks.fail(format!("agent `{addr}`'s certificate"), "none presented", "restart the agent"),
                }
                reached.insert(addr, status);
            }
            Err(CopyError::Session(SessionError::Handshake {
                source: WireError::VersionMismatch { ours, theirs },
                ..
            })) => {
                checks.ok(check, "answered");
                checks.fail(
                    version_check,
                    format!("the agent speaks protocol version {theirs}, this mover {VERSION} speaks {ours}"),
                    "install the same mover version on every cluster (`mover --version`, `mover-agent --version`)",
                );
            }
            Err(error) => {
                let detail = mover_engine::full_message(&error);
                let remedy = crate::hints::copy_error(&error).unwrap_or_else(|| {
                    "check that `mover-agent serve` runs there and that the address and port are reachable from here"
                        .to_owned()
                });
                checks.fail(check, detail, remedy);
                checks.skip(version_check, "agent not reached");
            }
        }
    }
    reached
}

fn names(volumes: &[VolumeStatus]) -> String {
    if volumes.is_empty() {
        return "no volumes".into();
    }
    volumes.iter().map(|v| format!("`{}`", v.name)).collect::<Vec<_>>().join(", ")
}

/// `512 B`, `4.0 KiB`, `12.0 MiB`, `1.5 GiB`, `2.0 TiB`.
fn human_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", units[unit]) }
}

/// The state of one end of a volume: from its agent, or measured here for a local directory.
fn end_status(
    location: &Location,
    read_only: bool,
    agents: &BTreeMap<String, AgentStatus>,
) -> Result<VolumeStatus, String> {
    match location {
        Location::Agent { addr, volume, .. } => {
            let Some(agent) = agents.get(addr) else { return Err(format!("agent `{addr}` not reached")) };
            agent.volumes.iter().find(|v| &v.name == volume).cloned().ok_or_else(|| {
                format!("agent `{addr}` serves no volume `{volume}` (it serves {})", names(&agent.volumes))
            })
        }
        Location::Local(path) => {
            // A local target that does not exist yet is created: judge its nearest parent, and
            // it holds nothing yet.
            let mut existing: PathBuf = path.clone();
            while !read_only && !existing.exists() && existing.pop() {}
            let mut status = inspect::inspect_path(&location.to_string(), &existing, read_only);
            if &existing != path {
                status.used_bytes = 0;
            }
            Ok(status)
        }
        Location::Kube(claim) => Err(format!("claim `{claim}` was not resolved to its transfer agent")),
    }
}

fn check_volumes(
    ends: &[Ends<'_>],
    agents: &BTreeMap<String, AgentStatus>,
    thresholds: Thresholds,
    checks: &mut Checks,
) {
    for Ends { volume, source: source_end, target: target_end } in ends {
        let name = &volume.name;
        let source = end_status(source_end, true, agents);
        let target = end_status(target_end, false, agents);
        let readable = format!("volume `{name}`: source `{source_end}` readable");
        match &source {
            Ok(status) => match &status.unreadable {
                None => checks.ok(readable, format!("uses {}", human_size(status.used_bytes))),
                Some(why) => checks.fail(readable, why, "check the path and permissions of the source volume"),
            },
            Err(why) if why.ends_with("not reached") => checks.skip(readable, why),
            Err(why) => checks.fail(readable, why, "add the volume to the agent (`--volume NAME=PATH:ro`)"),
        }
        let writable = format!("volume `{name}`: target `{target_end}` writable");
        match &target {
            Ok(status) if status.read_only => checks.fail(
                writable,
                "granted read-only (`:ro`)",
                "restart the target agent with `--volume NAME=PATH` (without `:ro`)",
            ),
            Ok(status) => match &status.unwritable {
                None => checks.ok(writable, format!("{} free", human_size(status.free_bytes))),
                Some(why) => checks.fail(
                    writable,
                    why,
                    "make the target volume writable for the agent (mount options, permissions, SELinux labels)",
                ),
            },
            Err(why) if why.ends_with("not reached") => checks.skip(writable, why),
            Err(why) => checks.fail(writable, why, "add the volume to the agent (`--volume NAME=PATH`)"),
        }
        let space = format!("volume `{name}`: target free space");
        let (Ok(source), Ok(target)) = (&source, &target) else {
            checks.skip(space, "needs both ends");
            continue;
        };
        // The target's tree is replaced by the source's: what it holds now becomes free.
        let needed = source.used_bytes + source.used_bytes * thresholds.space_margin_percent / 100;
        let available = target.free_bytes.saturating_add(target.used_bytes);
        let at_least = if source.used_complete { "" } else { "at least " };
        let detail = format!(
            "source uses {at_least}{}, target has {} free and holds {}; needs {} (+{}% margin)",
            human_size(source.used_bytes),
            human_size(target.free_bytes),
            human_size(target.used_bytes),
            human_size(needed),
            thresholds.space_margin_percent
        );
        if available >= needed {
            checks.ok(space, detail);
        } else {
            checks.fail(
                space,
                detail,
                format!("grow the target volume by at least {}", human_size(needed - available)),
            );
        }
    }
}

fn check_ca_bundles(plan: &Plan, checks: &mut Checks) {
    let bundles = [Side::Source, Side::Target].map(|side| (side, plan.registries.get(side).ca_bundle.as_ref()));
    for (side, path) in bundles.iter().filter_map(|(side, path)| Some((side, (*path)?))) {
        let check = format!("{side} CA bundle `{}` parses", path.display());
        let remedy = format!(
            "fetch the registry's chain with `mover certs fetch HOST:PORT -o {}` and check its fingerprints",
            path.display()
        );
        match certs::read_certs(path) {
            Err(error) => checks.fail(check, mover_engine::full_message(&error), remedy),
            Ok(bundle) => match bundle.iter().position(|cert| certs::describe(cert).is_none()) {
                Some(index) => checks.fail(
                    check,
                    format!("certificate {} of {} is not valid X.509", index + 1, bundle.len()),
                    remedy,
                ),
                None => checks.ok(check, format!("{} certificate(s)", bundle.len())),
            },
        }
    }
}

/// Looks a program up as `execvp` would: a name with `/` as a path, otherwise in `PATH`.
fn find_program(program: &str, base: &Path) -> Option<PathBuf> {
    let executable = |path: &Path| path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = base.join(program);
        return executable(&path).then_some(path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| executable(path))
}

/// Local hooks' programs (and `ansible-playbook` for their playbooks) are here; hooks that run as
/// Jobs are checked with the cluster (their image has the program).
fn check_hooks(plan: &Plan, checks: &mut Checks) {
    let mut playbooks = false;
    for hook in plan.hooks.iter().filter(|hook| hook.job.is_none()) {
        match &hook.action {
            HookAction::Command(argv) => {
                let check = format!("hook `{}`: `{}` present", hook.name, argv[0]);
                match find_program(&argv[0], plan.base_dir()) {
                    Some(path) => checks.ok(check, path.display().to_string()),
                    None => checks.fail(
                        check,
                        "not found or not executable",
                        "install it, or fix the hook's `command` (names without `/` are looked up in `PATH`; relative paths start at the plan file's directory)",
                    ),
                }
            }
            HookAction::Playbook(path) => {
                playbooks = true;
                let check = format!("hook `{}`: playbook `{}` readable", hook.name, path.display());
                match std::fs::read(path) {
                    Ok(_) => checks.ok(check, ""),
                    Err(error) => checks.fail(check, error.to_string(), "fix the hook's `playbook` path"),
                }
            }
        }
    }
    if playbooks {
        let check = format!("`{ANSIBLE_PLAYBOOK}` present");
        match find_program(ANSIBLE_PLAYBOOK, plan.base_dir()) {
            Some(path) => checks.ok(check, path.display().to_string()),
            None => checks.fail(check, "not found in `PATH`", "install Ansible: `pip install ansible-core`"),
        }
    }
}

/// Every image transfer's source can be read and its target written, with the plan's
/// credentials, CA bundles and proxy (a push check starts an upload and cancels it).
async fn check_registries(plan: &Plan, proxy: Option<&Proxy>, checks: &mut Checks) {
    use mover_engine::image::{ImageRef, manifest::MAX_MANIFEST_BYTES};
    if plan.images.is_empty() {
        return;
    }
    let registries = match access::read_token_files(&plan.registries) {
        Ok(registries) => registries,
        Err(error) => {
            checks.fail("registry credentials", format!("{error:#}"), "fix `registries:` in the plan");
            return;
        }
    };
    let mut seen = std::collections::HashSet::new();
    for transfer in &plan.images {
        let (source, destination) = transfer.ends();
        for (reference, side, push) in [(source, Side::Source, false), (destination, Side::Target, true)] {
            let check = if push {
                format!("registry: can push to {reference}")
            } else {
                format!("registry: can read {reference}")
            };
            if !seen.insert(check.clone()) {
                continue;
            }
            let parsed = match reference.parse::<ImageRef>() {
                Ok(parsed) => parsed,
                Err(error) => {
                    checks.fail(check, error.to_string(), "fix the reference in `images:`");
                    continue;
                }
            };
            // The exposed internal registry is reached with the service account's token.
            let exposed = match (&parsed, push) {
                (ImageRef::Registry { repository, .. }, false) => plan.exposed_access(&repository.registry),
                _ => None,
            };
            let (check, remedy) = match (exposed, &plan.image_discovery) {
                (Some(_), Some(discovery)) => {
                    (format!("internal registry: exposed, the token can pull {reference}"), internal_remedy(discovery))
                }
                _ if push => (check, "check the target registry's address, `caBundles.target`, and credentials (`registries.target.authFile` or `tokenFile`)".to_owned()),
                _ => (check, "check the source registry's address, `caBundles.source`, and credentials (`registries.source.authFile` or `tokenFile`)".to_owned()),
            };
            let endpoint = match access::endpoint_for(
                &parsed,
                exposed.unwrap_or(registries.get(side)),
                side,
                proxy,
                MAX_MANIFEST_BYTES,
                true,
            ) {
                Ok(endpoint) => endpoint,
                Err(error) => {
                    checks.fail(check, format!("{error:#}"), remedy);
                    continue;
                }
            };
            match endpoint.check_access(push).await {
                Ok(()) => checks.ok(
                    check,
                    if push { "reachable, credentials accepted for push" } else { "reachable, credentials accepted" },
                ),
                Err(error) => {
                    let explained = access::explain(error, proxy).await;
                    checks.fail(check, format!("{explained:#}"), remedy);
                }
            }
        }
    }
}

/// What to do when the exposed internal registry cannot be read with the service account's token.
fn internal_remedy(discovery: &mover_plan::ImageDiscovery) -> String {
    let (namespace, name) = &discovery.service_account;
    format!(
        "the internal registry must answer at its exposed host (`images.sourceRegistry`, or its default route) over TLS \
         that the cluster's ingress CA or `caBundles.source` vouches for, and accept the token of service account \
         `{namespace}/{name}`: grant it the right to pull (on OpenShift: `oc policy add-role-to-user system:image-puller \
         system:serviceaccount:{namespace}:{name} -n NAMESPACE`)"
    )
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(4096), "4.0 KiB");
        assert_eq!(human_size(12 << 20), "12.0 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
    }
}

#[cfg(test)]
mod resolver_tests {
    use super::*;

    /// Puts every volume's source at one directory and finds no target.
    struct Elsewhere(PathBuf);

    impl VolumeResolver for Elsewhere {
        fn resolve<'a>(
            &'a self,
            volume: &'a VolumePlan,
            side: Side,
        ) -> futures_util::future::BoxFuture<'a, anyhow::Result<Location>> {
            let placed = match side {
                Side::Source => Ok(Location::Local(self.0.clone())),
                Side::Target => Err(anyhow::anyhow!("no claim for `{}` on the target", volume.name)),
            };
            Box::pin(async move { placed })
        }
    }

    fn check<'a>(checks: &'a Checks, name: &str) -> Option<&'a table::Check> {
        checks.0.iter().find(|check| check.name == name)
    }

    #[tokio::test]
    async fn preflight_checks_the_ends_the_resolver_gives_not_the_written_ones() {
        let dir = tempfile::tempdir().unwrap();
        let placed = dir.path().join("placed");
        std::fs::create_dir(&placed).unwrap();
        let plan_file = dir.path().join("plan.yaml");
        std::fs::write(
            &plan_file,
            "apiVersion: mover/v1alpha1\nkind: MigrationPlan\nname: p\nvolumes:\n  - {name: v, source: ./nowhere, target: ./dst}\n",
        )
        .unwrap();
        let plan = plan::load(&plan_file).unwrap();
        let thresholds = Thresholds { cert_window: Duration::from_secs(86_400), space_margin_percent: 10 };

        // As written, the source does not exist.
        let written = check_plan(&plan, &WrittenLocations, thresholds).await;
        let readable = format!("volume `v`: source `{}` readable", dir.path().join("nowhere").display());
        assert_eq!(check(&written, &readable).map(|c| c.result), Some(table::Status::Fail), "{:?}", written.0);

        // Placed by the resolver: its source is checked, and its missing target is a failure.
        let resolved = check_plan(&plan, &Elsewhere(placed), thresholds).await;
        let ends = check(&resolved, "volume `v`: ends found").expect("the failed resolution is a check");
        assert_eq!(ends.result, table::Status::Fail);
        assert!(ends.detail.contains("no claim for `v` on the target"), "{}", ends.detail);
        assert!(check(&resolved, &readable).is_none(), "the written source was checked: {:?}", resolved.0);
    }
}
