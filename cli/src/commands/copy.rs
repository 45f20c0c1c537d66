//! `mover copy SRC DST`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use mover_engine::certs::{Identity, Role};
use mover_engine::client::{self, CopyError};
use mover_engine::tunnel::{Proxy, TunnelError};
use mover_engine::wire::SyncOptions;

use crate::Outcome;
use crate::args::{CopyArgs, GlobalArgs};
use crate::location::{Location, parse_location};
use crate::printer::Printer;

fn identity(args: &CopyArgs) -> anyhow::Result<Identity> {
    let Some(dir) = &args.certs else {
        bail!("a copy that involves an agent needs `--certs DIR` (the directory `mover certs init` wrote)");
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

pub async fn run(args: CopyArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let options = SyncOptions {
        selinux: args.selinux,
        devices: args.devices,
        fsync: args.fsync,
        compression: args.compress,
        stage: args.stage,
        delete: !args.no_delete,
        allow_mass_delete: args.allow_mass_delete,
        checksum: args.checksum,
        bwlimit: args.bwlimit.unwrap_or(0),
        inplace: args.inplace,
        streams: args.streams,
        cross_mounts: args.cross_mounts,
    };
    let proxy = resolve_proxy(args.proxy.as_deref(), args.proxy_password_file.as_deref())?;
    let printer = Arc::new(Printer::new(global));
    let source = parse_location(&args.source)?;
    let target = parse_location(&args.target)?;
    let result = match (&source, &target) {
        (Location::Local(from), Location::Local(to)) => client::copy_local(from, to, options, printer.clone()).await,
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
        (Location::Agent { .. }, Location::Local(_)) => bail!(
            "copying from an agent into a local directory is not supported; run `mover-agent serve` on the target and copy agent to agent"
        ),
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
