//! `mover-agent`: the node daemon. It serves the volumes it is given as a source and receives
//! them as a target, over mutual TLS with the migration's certificates.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT); 1 when serving failed; 64 for an
//! invalid configuration (bad flags, unreadable certificates or volumes).

mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use mover_engine::agent::{Agent, VolumeGrant};
use mover_engine::certs::{Identity, Role};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::metrics::Metrics;

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 64;

/// mover's node daemon: serves volumes to, and receives volumes from, other mover agents.
///
/// Exit codes: 0 clean shutdown; 1 serving failed; 64 invalid configuration.
#[derive(Debug, Parser)]
#[command(name = "mover-agent", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve volumes until SIGTERM.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on, e.g. `0.0.0.0:7443`.
    #[arg(long, env = "MOVER_AGENT_LISTEN")]
    listen: SocketAddr,
    /// Directory with `ca.crt`, `agent.crt` and `agent.key` (from `mover certs init`).
    #[arg(long, env = "MOVER_AGENT_CERTS")]
    certs: PathBuf,
    /// A volume this agent may serve or receive: `NAME=PATH`, then optionally `:` and
    /// comma-separated options: `ro` (read-only: never received into), `rw` (the default),
    /// `mount` (PATH is a mount point, e.g. a PV: each session takes the file system mounted
    /// there then, and is refused while none is). E.g. `data=/mnt/data:ro,mount`.
    ///
    /// Every session resolves PATH afresh. Without `mount`, it must find the very directory
    /// (and mount) found at start: a file system mounted over PATH since, or a remount, is
    /// refused rather than written under. Volumes may not overlap (one inside another).
    #[arg(long = "volume", value_name = "NAME=PATH[:ro|rw][,mount]", required = true)]
    volumes: Vec<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "MOVER_AGENT_LOG_FORMAT")]
    log_format: LogFormat,
    /// Serve `/healthz` and Prometheus `/metrics` (plain HTTP) on this address, e.g.
    /// `0.0.0.0:9090`. Off unless given.
    #[arg(long, value_name = "ADDR", env = "MOVER_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Options after the last `:` of a volume spec. A suffix that is not a list of them is part of
/// the path (a path may contain `:`).
const VOLUME_OPTIONS: [&str; 3] = ["ro", "rw", "mount"];

fn parse_volume(spec: &str) -> anyhow::Result<VolumeGrant> {
    let Some((name, path)) = spec.split_once('=') else {
        bail!("`--volume {spec}`: expected `NAME=PATH`, optionally with `:ro`, `:mount` or `:ro,mount`");
    };
    if name.is_empty() || name.contains('/') {
        bail!("`--volume {spec}`: the name must be non-empty and contain no `/`");
    }
    let (path, options) = match path.rsplit_once(':') {
        Some((path, options)) if options.split(',').all(|option| VOLUME_OPTIONS.contains(&option)) => {
            (path, options.split(',').collect())
        }
        _ => (path, Vec::new()),
    };
    if options.contains(&"ro") && options.contains(&"rw") {
        bail!("`--volume {spec}`: `ro` and `rw` contradict each other: give one");
    }
    if path.is_empty() {
        bail!("`--volume {spec}`: the path is empty");
    }
    Ok(VolumeGrant {
        name: name.to_owned(),
        path: PathBuf::from(path),
        read_only: options.contains(&"ro"),
        mount: options.contains(&"mount"),
    })
}

fn configure(args: &ServeArgs) -> anyhow::Result<Agent> {
    let identity = Identity::load(&args.certs, Role::Agent)
        .with_context(|| format!("while loading the agent certificate from `{}`", args.certs.display()))?;
    let grants = args.volumes.iter().map(|spec| parse_volume(spec)).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Agent::new(identity, grants)?)
}

async fn serve(agent: Agent, metrics: Arc<Metrics>, args: &ServeArgs) -> anyhow::Result<()> {
    let listen = args.listen;
    if let Some(address) = args.metrics_listen {
        let listener =
            TcpListener::bind(address).await.with_context(|| format!("cannot listen for metrics on `{address}`"))?;
        info!(listen = %listener.local_addr()?, "metrics");
        tokio::spawn(metrics::serve(listener, metrics));
    }
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on `{listen}`"))?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    info!(listen = %listener.local_addr()?, version = mover_engine::PROTOCOL_VERSION, "serving");
    agent
        .serve(listener, async {
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM received"),
                _ = interrupt.recv() => info!("SIGINT received"),
            }
        })
        .await;
    info!("stopped");
    Ok(())
}

/// Many peers (and floods of half-open connections) need many descriptors: use the hard limit.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(%error, "cannot raise the open-file limit");
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { EXIT_CONFIG } else { 0 });
        }
    };
    let Command::Serve(args) = cli.command;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOVER_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    raise_fd_limit();
    let metrics = Arc::new(Metrics::new());
    let agent = match configure(&args) {
        Ok(agent) => agent.with_observer(metrics.clone()),
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(serve(agent, metrics, &args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_volume;

    #[test]
    fn volume_specs() {
        let grant = parse_volume("data=/mnt/data:ro").unwrap();
        assert_eq!((grant.name.as_str(), grant.path.to_str().unwrap(), grant.read_only), ("data", "/mnt/data", true));
        assert!(!parse_volume("data=/mnt/a:b").unwrap().read_only);
        assert_eq!(parse_volume("data=/mnt/a:b").unwrap().path.to_str().unwrap(), "/mnt/a:b");
        for (spec, read_only, mount) in [
            ("pv=/mnt/pv:mount", false, true),
            ("pv=/mnt/pv:ro,mount", true, true),
            ("pv=/mnt/pv:mount,ro", true, true),
            ("pv=/mnt/pv:rw,mount", false, true),
            ("pv=/mnt/pv:rw", false, false),
            ("pv=/mnt/pv", false, false),
        ] {
            let grant = parse_volume(spec).unwrap();
            assert_eq!((grant.path.to_str().unwrap(), grant.read_only, grant.mount), ("/mnt/pv", read_only, mount));
        }
        for bad in ["data", "=/x", "a/b=/x", "data=", "data=:mount", "data=/x:ro,rw"] {
            assert!(parse_volume(bad).is_err(), "accepted {bad}");
        }
    }
}
