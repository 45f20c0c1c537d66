//! `mover copy SRC DST`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use mover_engine::certs::{Identity, Role};
use mover_engine::client::{self, CopyError};
use mover_engine::tunnel::{Proxy, TunnelError};
use mover_engine::wire::SyncOptions;

use crate::args::{CopyArgs, GlobalArgs, OutputFormat};
use crate::location::{Location, parse_location};
use crate::render::copy::CopyRenderer as Printer;
use crate::{Outcome, usage};

fn identity(args: &CopyArgs) -> anyhow::Result<Identity> {
    let Some(dir) = &args.certs else {
        return Err(usage(
            "a copy that involves an agent needs `--certs DIR` (the directory `mover certs init` wrote)",
        ));
    };
    Identity::load(dir, Role::Coordinator)
        .with_context(|| format!("while loading the coordinator certificate from `{}`", dir.display()))
}

/// The proxy of `--proxy` (or a plan's `proxy`), with its password from the URL, the password
/// file (`--proxy-password-file`, a plan's `proxyPasswordFile`) or `MOVER_PROXY_PASSWORD`.
pub(crate) fn resolve_proxy(url: Option<&str>, password_file: Option<&Path>) -> anyhow::Result<Option<Proxy>> {
    let Some(url) = url else { return Ok(None) };
    let mut proxy = Proxy::parse(url)?;
    if proxy.password.is_none() {
        if let Some(file) = password_file {
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("while reading the proxy password from `{}`", file.display()))?;
            proxy.password = Some(password.trim_end_matches(['\r', '\n']).to_owned());
        } else if let Ok(password) = std::env::var("MOVER_PROXY_PASSWORD") {
            proxy.password = Some(password);
        }
    }
    Ok(Some(proxy))
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

/// Why a dry run into a local directory that does not exist stops.
pub(crate) fn missing_target_in_dry_run(target: &Path) -> String {
    format!(
        "the target `{}` does not exist, and a dry run creates nothing: a copy would create it and everything \
         in it. Create it (empty) to preview the copy",
        target.display()
    )
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

/// Runs the copy; with `--output json` the last line is a summary, also when it fails.
pub async fn run(args: CopyArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    copy(args, global).await.inspect_err(|error| {
        let empty = serde_json::to_value(mover_engine::progress::Summary::default()).expect("summaries serialise");
        crate::output::json_final_on_error(global.output == OutputFormat::Json, "summary", empty, error);
    })
}

async fn copy(args: CopyArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let source = parse_location(&args.source)?;
    let target = parse_location(&args.target)?;
    if let (Location::Local(_), Location::Local(_)) = (&source, &target)
        && args.certs_on_command_line
    {
        return Err(usage(
            "`--certs` is for copies that involve an agent, and both ends are local directories: leave it out, \
             or write the agent's end as `agent://HOST:PORT/VOLUME`",
        ));
    }
    let excludes = crate::excludes::from_args(&args.exclude, &args.exclude_from)?;
    let options = SyncOptions {
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
    };
    let proxy = resolve_proxy(args.proxy.as_deref(), args.proxy_password_file.as_deref())?;
    let printer = Arc::new(Printer::new(global, args.itemize || args.dry_run || global.verbose > 0));
    let result = match (&source, &target) {
        (Location::Local(from), Location::Local(to)) => {
            if args.dry_run && !to.is_dir() {
                bail!("{}", missing_target_in_dry_run(to));
            }
            let created = create_local_target(to, args.mkpath)?;
            let result = client::copy_local(from, to, options, printer.clone()).await;
            if result.is_err() {
                remove_if_empty(&created);
            }
            result
        }
        (Location::Local(from), Location::Agent { addr, volume }) => {
            client::copy_to_agent(&identity(&args)?, from, (addr, volume), proxy.as_ref(), options, printer.clone())
                .await
        }
        (Location::Agent { addr: from, volume: from_volume }, Location::Agent { addr: to, volume: to_volume }) => {
            client::push_between_agents(
                &identity(&args)?,
                (from, from_volume),
                (to, to_volume),
                proxy.as_ref(),
                options,
                printer.clone(),
            )
            .await
        }
        (Location::Agent { .. }, Location::Local(_)) => {
            return Err(usage(
                "copying from an agent into a local directory is not supported; run `mover-agent serve` on the target and copy agent to agent",
            ));
        }
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
                CopyError::Tunnel(TunnelError::Handshake { addr, source })
                    if source.to_string().contains("invalid peer certificate") =>
                {
                    super::presented_certificate(addr, proxy.as_ref()).await
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
