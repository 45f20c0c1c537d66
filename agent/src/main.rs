//! `mover-agent`: the node daemon. It serves the volumes it is given as a source and receives
//! them as a target, over mutual TLS with the migration's certificates.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT); 1 when serving failed; 64 for an
//! invalid configuration (bad flags, unreadable certificates or volumes).

mod metrics;

use std::io::IsTerminal;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// `mover-agent --version`: the version and the protocol version it speaks, e.g.
/// `mover-agent 0.1.0 (protocol 3)` (`scripts/image.sh` labels the image with both).
static VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{} (protocol {})", env!("CARGO_PKG_VERSION"), mover_engine::PROTOCOL_VERSION));

/// mover's node daemon: serves volumes to, and receives volumes from, other mover agents.
///
/// Exit codes: 0 clean shutdown; 1 serving failed; 64 invalid configuration.
#[derive(Debug, Parser)]
#[command(name = "mover-agent", version = VERSION.as_str(), max_term_width = 100)]
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
    /// Address to listen on: `:7443` (every interface, IPv6 and IPv4), `0.0.0.0:7443`,
    /// `10.0.0.5:7443`.
    #[arg(long, value_parser = parse_listen, env = "MOVER_AGENT_LISTEN")]
    listen: Listen,
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
    /// Serve `/healthz` and Prometheus `/metrics` (plain HTTP) on this address, e.g. `:9090` or
    /// `127.0.0.1:9090`. Off unless given.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen, env = "MOVER_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<Listen>,
}

/// Where to listen: one address, or a port on every interface (`:PORT`, as Go servers and
/// `docker-registry` read it).
#[derive(Debug, Clone, Copy)]
enum Listen {
    Addr(SocketAddr),
    AnyInterface(u16),
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if let Some(port) = text.strip_prefix(':') {
        return port.parse().map(Listen::AnyInterface).map_err(|_| format!("`{text}`: `:PORT` needs a port 0-65535"));
    }
    text.parse()
        .map(Listen::Addr)
        .map_err(|_| format!("`{text}` is not an address to listen on: write `:PORT` (every interface) or `IP:PORT`"))
}

/// Binds `listen`; `:PORT` is `[::]` (which takes IPv4 too, unless the host forbids it), or
/// `0.0.0.0` on a host without IPv6.
async fn bind(listen: Listen) -> std::io::Result<TcpListener> {
    match listen {
        Listen::Addr(addr) => TcpListener::bind(addr).await,
        Listen::AnyInterface(port) => match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
            Ok(listener) => Ok(listener),
            Err(_) => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await,
        },
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Addr(addr) => write!(f, "{addr}"),
            Listen::AnyInterface(port) => write!(f, ":{port}"),
        }
    }
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
        let listener = bind(address).await.with_context(|| format!("cannot listen for metrics on `{address}`"))?;
        info!(listen = %listener.local_addr()?, "metrics");
        tokio::spawn(metrics::serve(listener, metrics));
    }
    let listener = bind(listen).await.with_context(|| format!("cannot listen on `{listen}`"))?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let volumes = args.volumes.join(" ");
    info!(
        listen = %listener.local_addr()?,
        volumes = %volumes,
        release = env!("CARGO_PKG_VERSION"),
        protocol = mover_engine::PROTOCOL_VERSION,
        "serving"
    );
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

/// Writes a line to stderr; a closed or full stderr is not a reason to panic.
fn print_error(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
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
    // Colour only for a person at a terminal: a file, a pipe or `kubectl logs` gets plain text.
    // A closed or full stderr drops log lines; the agent keeps serving (and never panics on it).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
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
            print_error(&format!("error: {error:#}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            print_error(&format!("error: cannot start the async runtime: {error}"));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(serve(agent, metrics, &args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            print_error(&format!("error: {error:#}"));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Listen, parse_listen, parse_volume};

    #[test]
    fn listen_addresses() {
        assert!(matches!(parse_listen(":7443"), Ok(Listen::AnyInterface(7443))));
        assert!(matches!(parse_listen("127.0.0.1:7443"), Ok(Listen::Addr(_))));
        assert!(matches!(parse_listen("[::1]:7443"), Ok(Listen::Addr(_))));
        for bad in ["7443", ":", ":port", "host:7443", ":70000"] {
            assert!(parse_listen(bad).is_err(), "accepted {bad}");
        }
    }

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
