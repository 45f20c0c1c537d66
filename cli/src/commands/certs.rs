//! `mover certs init` and `mover certs fetch`.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use mover_engine::certs::{self, CertError};
use mover_engine::tunnel::{self, Proxy};

use crate::args::CertsCommand;
use crate::{Outcome, output, usage};

pub async fn run(command: CertsCommand) -> anyhow::Result<Outcome> {
    match command {
        CertsCommand::Init { dir, agent_dir, force } => init(&dir, agent_dir.as_deref(), force),
        CertsCommand::Fetch { endpoint, output, force, proxy } => {
            fetch(&endpoint, output.as_deref(), force, proxy.as_deref()).await
        }
    }
}

/// A file in the way of a write: the engine says what, the flag to pass is ours to name.
fn with_force_hint(error: CertError) -> anyhow::Error {
    match error {
        CertError::Exists(path) => anyhow::anyhow!("`{}` already exists; pass `--force` to replace it", path.display()),
        other => other.into(),
    }
}

fn init(dir: &Path, agent_dir: Option<&Path>, force: bool) -> anyhow::Result<Outcome> {
    let generated = certs::generate().context("while generating the migration's certificates")?;
    let mut written = certs::write_dir(dir, &generated, force).map_err(with_force_hint)?;
    if let Some(agent_dir) = agent_dir {
        written.extend(certs::write_agent_dir(agent_dir, &generated, force).map_err(with_force_hint)?);
    }
    for path in written {
        output::println(&format!("wrote {}", path.display()));
    }
    let node_files = certs::NODE_FILES.join(", ");
    output::println(&match agent_dir {
        Some(agent_dir) => format!("\nfor each node that runs an agent: {} (holds {node_files})", agent_dir.display()),
        None => format!("\nfor each node that runs an agent: {node_files} (from {})", dir.display()),
    });
    output::println(
        "keep on the coordinator only: ca.key, coordinator.crt, coordinator.key (ca.key can mint certificates; \
         never copy it to a node)",
    );
    Ok(Outcome::Success)
}

async fn fetch(endpoint: &str, output: Option<&Path>, force: bool, proxy: Option<&str>) -> anyhow::Result<Outcome> {
    if endpoint.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
        return Err(usage(format!("`{endpoint}`: expected `HOST:PORT`, e.g. `registry.example.com:443`")));
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
        // As `certs init` writes: a temporary file renamed into place, so a symlink at FILE (even
        // a dangling one) is replaced with `--force` and refused without, never written through.
        certs::write_file(path, bundle.as_bytes(), 0o644, force)
            .map_err(with_force_hint)
            .with_context(|| format!("while writing `{}`", path.display()))?;
        output::print(&details);
        output::println(&format!(
            "wrote {} ({} certificates). Check the fingerprints with the endpoint's owner before you trust this bundle.",
            path.display(),
            chain.len()
        ));
    } else {
        // The endpoint chose the subjects and issuers in `details`: escaped like all peer text.
        output::eprintln(details.trim_end_matches('\n'));
        output::print(&bundle);
    }
    Ok(Outcome::Success)
}
