//! `mover copy SRC DST`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use mover_engine::CopyOptions;
use mover_engine::certs::{Identity, Role};
use mover_engine::client::{CopyError, SessionError};
use mover_engine::tunnel::TunnelError;
use mover_plan::{DispatchError, LocalReceiver, Location, Peers, Side, parse_location};

use crate::args::{CopyArgs, GlobalArgs, OutputFormat};
use crate::render::copy::CopyRenderer as Printer;
use crate::{Outcome, access, usage};

fn identity(args: &CopyArgs) -> anyhow::Result<Identity> {
    let Some(dir) = &args.certs else {
        return Err(usage(
            "a copy that involves an agent needs `--certs DIR` (the directory `mover certs init` wrote)",
        ));
    };
    access::load_identity(dir, Role::Coordinator)
}

/// Creates a missing local target as rsync does: the last component only, or every missing
/// directory with `mkpath`. Returns the directories it made, outermost first, so that a copy that
/// fails before writing anything can take them away again ([`remove_if_empty`]).
fn create_local_target(target: &Path, mkpath: bool) -> anyhow::Result<Vec<PathBuf>> {
    match std::fs::metadata(target) {
        Ok(metadata) if metadata.is_dir() => return Ok(Vec::new()),
        Ok(_) => bail!("`{}` is not a directory: the target of a copy is a directory", target.display()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("cannot look at the target `{}`", target.display())),
    }
    let missing: Vec<&Path> =
        target.ancestors().take_while(|dir| !dir.as_os_str().is_empty() && dir.symlink_metadata().is_err()).collect();
    if let [_, parent, ..] = missing.as_slice()
        && !mkpath
    {
        bail!(
            "the target's parent directory `{}` does not exist: create it, or pass `--mkpath` to create every \
             missing directory of `{}`",
            parent.display(),
            target.display()
        );
    }
    let mut created = Vec::new();
    for dir in missing.into_iter().rev() {
        if let Err(error) = std::fs::create_dir(dir) {
            remove_if_empty(&created);
            return Err(error).with_context(|| format!("while creating the target directory `{}`", dir.display()));
        }
        created.push(dir.to_owned());
    }
    Ok(created)
}

/// Removes the directories [`create_local_target`] made, innermost first, as long as they are
/// empty: what a copy wrote (files kept for a resume) stays.
fn remove_if_empty(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
}

/// The engine's options from the command line.
fn options(args: &CopyArgs, global: &GlobalArgs) -> anyhow::Result<CopyOptions> {
    let excludes = crate::excludes::from_args(&args.exclude, &args.exclude_from)?;
    Ok(CopyOptions {
        selinux: args.selinux,
        devices: args.devices,
        fsync: args.fsync,
        compression: args.compress,
        stage: args.stage,
        // `--delete` names the default; clap refuses it beside `--no-delete` (or `MOVER_NO_DELETE`).
        delete: !args.no_delete,
        allow_mass_delete: args.allow_mass_delete,
        checksum: args.checksum,
        bwlimit: args.bwlimit.unwrap_or(0),
        inplace: args.inplace,
        streams: args.streams,
        cross_mounts: args.cross_mounts,
        itemize: args.itemize || global.verbose > 0,
        dry_run: args.dry_run,
        excludes,
    })
}

/// Runs the copy; with `--output json` the last line is a summary, also when it fails.
pub async fn run(args: CopyArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    Box::pin(copy(args, global)).await.inspect_err(|error| {
        let empty = serde_json::to_value(mover_engine::progress::Summary::default()).expect("summaries serialise");
        crate::output::json_final_on_error(global.output == OutputFormat::Json, "summary", empty, error);
    })
}

async fn copy(args: CopyArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let source = parse_location(&args.source).map_err(|error| usage(error.0))?;
    let target = parse_location(&args.target).map_err(|error| usage(error.0))?;
    if matches!(source, Location::Kube(_)) || matches!(target, Location::Kube(_)) {
        return Box::pin(copy_claims(args, global, source, target)).await;
    }
    if let (Location::Local(_), Location::Local(_)) = (&source, &target)
        && args.certs_on_command_line
    {
        return Err(usage(
            "`--certs` is for copies that involve an agent, and both ends are local directories: leave it out, \
             or write the agent's end as `agent://HOST:PORT/VOLUME`",
        ));
    }
    let options = options(&args, global)?;
    let proxy =
        access::with_password(access::parse_proxy(args.proxy.as_deref())?, args.proxy_password_file.as_deref())?;
    let printer = Arc::new(Printer::new(global, args.itemize || args.dry_run || global.verbose > 0));
    let identity = if source.is_agent() || target.is_agent() { Some(identity(&args)?) } else { None };
    // From an agent into a local directory: an in-process agent of the migration receives.
    let receiver = match (&source, &target, &args.certs) {
        (Location::Agent { .. }, Location::Local(_), Some(dir)) => {
            Some(LocalReceiver { identity: access::load_identity(dir, Role::Agent)?, listen: args.listen })
        }
        _ => None,
    };
    let created = match &target {
        // A dry run creates nothing: the dispatch says so when the target is missing.
        Location::Local(to) if !args.dry_run || to.is_dir() => create_local_target(to, args.mkpath)?,
        _ => Vec::new(),
    };
    let peers = Peers { identity: identity.as_ref(), proxy: proxy.as_ref(), receiver: receiver.as_ref() };
    let result = mover_plan::copy_volume(&source, &target, options, peers, printer.clone()).await;
    finish(result, &printer, &created, proxy.as_ref(), &args, global).await
}

/// Prints a dispatch's end: the summary, or the failure with what helps (the certificate an
/// untrusted peer presented).
async fn finish(
    result: Result<mover_engine::progress::Summary, DispatchError>,
    printer: &Printer,
    created: &[PathBuf],
    proxy: Option<&mover_engine::tunnel::Proxy>,
    args: &CopyArgs,
    global: &GlobalArgs,
) -> anyhow::Result<Outcome> {
    let result = match result {
        Err(DispatchError::Copy(error)) => {
            remove_if_empty(created);
            Err(error)
        }
        Err(other) => return Err(other.into()),
        Ok(summary) => Ok(summary),
    };
    match result {
        Ok(summary) => {
            printer.summary(&summary, global.verbose > 0);
            Ok(if summary.is_success() { Outcome::Success } else { Outcome::Failed })
        }
        Err(error) => {
            printer.abandon();
            // A peer outside the migration's CA: show what it presented.
            let untrusted = match &error {
                CopyError::Session(SessionError::Tunnel(TunnelError::Handshake { addr, source }))
                    if source.to_string().contains("invalid peer certificate") =>
                {
                    access::presented_certificate(addr, proxy).await
                }
                _ => None,
            };
            let mut error = anyhow::Error::new(error);
            if let Some(presented) = untrusted {
                error = error.context(presented);
            }
            Err(error.context(format!("copy from `{}` to `{}` failed", args.source, args.target)))
        }
    }
}

/// A copy with a claim at one end or both: each claim's transfer agent is started (a target
/// claim made from the source's), the copy runs between the agents, and everything the run made
/// in the clusters is removed afterwards, whether it worked, failed or was interrupted.
async fn copy_claims(
    args: CopyArgs,
    global: &GlobalArgs,
    source: Location,
    target: Location,
) -> anyhow::Result<Outcome> {
    if let (Location::Local(_) | Location::Agent { .. }, Location::Kube(claim)) = (&source, &target) {
        return Err(usage(format!(
            "the target `{claim}` is a claim, so its source must be a claim too (`k8s://CONTEXT/NAMESPACE/PVC`): mover \
             makes the target claim from the source claim. To fill an existing claim from here, run `mover-agent serve` \
             where it is mounted and copy to `agent://HOST:PORT/VOLUME`"
        )));
    }
    let options = options(&args, global)?;
    let proxy =
        access::with_password(access::parse_proxy(args.proxy.as_deref())?, args.proxy_password_file.as_deref())?;
    let name = match (&source, &target) {
        (Location::Kube(claim), _) | (_, Location::Kube(claim)) => claim.display_name(),
        _ => unreachable!("copy_claims is called with a claim"),
    };
    let (volumes, identities) = crate::clusters::volumes(
        &args.kube,
        args.certs.as_deref(),
        ("copy", None),
        proxy.clone(),
        crate::clusters::print_states(),
    )?;
    let printer = Arc::new(Printer::new(global, args.itemize || args.dry_run || global.verbose > 0));
    let work = async {
        let source = Box::pin(volumes.end(&name, &source, Side::Source)).await?;
        let target = Box::pin(volumes.end(&name, &target, Side::Target)).await?;
        for warning in volumes.warnings() {
            crate::output::eprintln(&format!("warning: {warning}"));
        }
        let receiver = match (&source, &target) {
            (Location::Agent { .. }, Location::Local(_)) => {
                Some(LocalReceiver { identity: identities.agent.clone(), listen: args.listen })
            }
            _ => None,
        };
        let peers =
            Peers { identity: Some(&identities.coordinator), proxy: proxy.as_ref(), receiver: receiver.as_ref() };
        let result = mover_plan::copy_volume(&source, &target, options, peers, printer.clone()).await;
        finish(result, &printer, &[], proxy.as_ref(), &args, global).await
    };
    let (result, problems) = crate::clusters::with_cleanup(&volumes, Box::pin(work)).await;
    for problem in &problems {
        crate::output::eprintln(&format!("warning: {problem}"));
    }
    result.unwrap_or_else(|| {
        printer.abandon();
        Ok(Outcome::Cancelled)
    })
}
