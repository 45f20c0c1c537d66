//! `mover certs init`.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, bail};
use mover_engine::certs;
use mover_engine::tunnel::{self, Proxy};

use crate::Outcome;
use crate::args::CertsCommand;

pub async fn run(command: CertsCommand) -> anyhow::Result<Outcome> {
    match command {
        CertsCommand::Init { dir, force } => {
            let generated = certs::generate().context("while generating the migration's certificates")?;
            let written = certs::write_dir(&dir, &generated, force)?;
            for path in written {
                crate::output::println(&format!("wrote {}", path.display()));
            }
            Ok(Outcome::Success)
        }
        CertsCommand::Fetch { endpoint, output, force, proxy } => {
            fetch(&endpoint, output.as_deref(), force, proxy.as_deref()).await
        }
    }
}

async fn fetch(endpoint: &str, output: Option<&Path>, force: bool, proxy: Option<&str>) -> anyhow::Result<Outcome> {
    if endpoint.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
        bail!("`{endpoint}`: expected `HOST:PORT`, e.g. `registry.example.com:443`");
    }
    let proxy = proxy.map(Proxy::parse).transpose()?;
    let chain = tunnel::fetch_chain(endpoint, proxy.as_ref())
        .await
        .with_context(|| format!("while fetching the certificates of `{endpoint}`"))?;
    let mut details = String::new();
    for (i, cert) in chain.iter().enumerate() {
        let _ = writeln!(details, "certificate {} of {} presented by `{endpoint}` (not verified)", i + 1, chain.len());
        match certs::describe(cert) {
            Some(info) => {
                let _ = write!(
                    details,
                    "  subject:  {}\n  issuer:   {}\n  valid:    {} to {}\n  sha256:   {}\n",
                    info.subject, info.issuer, info.not_before, info.not_after, info.sha256
                );
            }
            None => details.push_str("  (not a parsable X.509 certificate)\n"),
        }
    }
    let bundle: String = chain.iter().map(certs::to_pem).collect();
    if let Some(path) = output {
        if path.exists() && !force {
            bail!("`{}` already exists; pass `--force` to replace it", path.display());
        }
        std::fs::write(path, &bundle).with_context(|| format!("while writing `{}`", path.display()))?;
        crate::output::print(&details);
        crate::output::println(&format!(
            "wrote {} ({} certificates). Check the fingerprints with the endpoint's owner before you trust this bundle.",
            path.display(),
            chain.len()
        ));
    } else {
        // The endpoint chose the subjects and issuers in `details`: escaped like all peer text.
        crate::output::eprintln(details.trim_end_matches('\n'));
        crate::output::print(&bundle);
    }
    Ok(Outcome::Success)
}
