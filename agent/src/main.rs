//! `mover-agent`: the node daemon. It serves the volumes it is given as a source and receives
//! them as a target, over mutual TLS with the migration's certificates.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT); 1 when serving failed; 64 for an
//! invalid configuration (bad flags, unreadable certificates or volumes).

mod metrics;

use std::io::IsTerminal;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use mover_engine::agent::{Agent, VolumeGrant};
use mover_engine::certs::{Identity, Role};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

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
    /// Do nothing until SIGTERM or SIGINT: the node strategy's holder pods run this to keep a
    /// claim mounted while the node's agent copies it.
    Hold,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on: `:7443` (every interface, IPv6 and IPv4), `0.0.0.0:7443`,
    /// `10.0.0.5:7443`.
    #[arg(long, value_parser = parse_listen, env = "MOVER_AGENT_LISTEN")]
    listen: Listen,
    /// Directory with `ca.crt`, `agent.crt` and `agent.key` (from `mover certs init`, or a
    /// mounted Secret). Re-read every `--certs-poll`: a changed identity is taken without a
    /// restart (sessions of a previous migration end), and files that disappear leave the agent
    /// refusing every connection until they come back.
    #[arg(long, env = "MOVER_AGENT_CERTS")]
    certs: PathBuf,
    /// How often `--certs` is re-read: e.g. `500ms`, `5s`, `1m`.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_poll, env = "MOVER_AGENT_CERTS_POLL")]
    certs_poll: Duration,
    /// The kubelet's pods directory (`/var/lib/kubelet/pods` on the node, mounted read-only
    /// with `HostToContainer` propagation): the coordinator may then grant volumes of pods
    /// running on this node at run time, by pod UID and volume name; the agent finds them
    /// beneath this directory and never leaves it. With it, `--volume` is optional, and the
    /// agent starts without its certificates, waiting for them.
    #[arg(long, value_name = "DIR", env = "MOVER_AGENT_KUBELET_PODS")]
    kubelet_pods: Option<PathBuf>,
    /// A volume this agent may serve or receive: `NAME=PATH`, then optionally `:` and
    /// comma-separated options: `ro` (read-only: never received into), `rw` (the default),
    /// `mount` (PATH is a mount point, e.g. a PV: each session takes the file system mounted
    /// there then, and is refused while none is). E.g. `data=/mnt/data:ro,mount`.
    ///
    /// Every session resolves PATH afresh. Without `mount`, it must find the very directory
    /// (and mount) found at start: a file system mounted over PATH since, or a remount, is
    /// refused rather than written under. Volumes may not overlap (one inside another).
    #[arg(long = "volume", value_name = "NAME=PATH[:ro|rw][,mount]", required_unless_present = "kubelet_pods")]
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

/// `500ms`, `5s`, `1m`: a positive whole number and a unit.
fn parse_poll(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration: write a positive whole number and `ms`, `s` or `m`, e.g. `5s`");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if duration.is_zero() {
        return Err(bad());
    }
    Ok(duration)
}

/// The files of the agent's identity in `--certs`.
const CERT_FILES: [&str; 3] = ["ca.crt", "agent.crt", "agent.key"];

/// What `--certs` holds now.
enum Certs {
    /// None of the files (a removed Secret: the kubelet emptied its volume).
    Gone,
    /// Some files are missing or unreadable, or they changed while read: tried again later.
    Incomplete(String),
    /// An identity, and the bytes of the files it was loaded from.
    Ready(Identity, Vec<u8>),
}

/// The bytes of the identity's files, read through symlinks (a mounted Secret's `..data`).
fn cert_bytes(dir: &Path) -> Result<Option<Vec<u8>>, String> {
    let mut bytes = Vec::new();
    let mut missing = Vec::new();
    for name in CERT_FILES {
        match std::fs::read(dir.join(name)) {
            Ok(content) => {
                bytes.extend_from_slice(&(content.len() as u64).to_le_bytes());
                bytes.extend_from_slice(&content);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => missing.push(name),
            Err(error) => return Err(format!("cannot read `{}`: {error}", dir.join(name).display())),
        }
    }
    match missing.len() {
        0 => Ok(Some(bytes)),
        n if n == CERT_FILES.len() => Ok(None),
        _ => Err(format!("`{}` has no {}", dir.display(), missing.join(", "))),
    }
}

/// Reads the identity in `dir`; the same bytes before and after loading, or it was caught
/// half swapped.
fn read_certs(dir: &Path) -> Certs {
    let before = match cert_bytes(dir) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Certs::Gone,
        Err(why) => return Certs::Incomplete(why),
    };
    let identity = match Identity::load(dir, Role::Agent) {
        Ok(identity) => identity,
        Err(error) => return Certs::Incomplete(mover_engine::full_message(&error)),
    };
    match cert_bytes(dir) {
        Ok(Some(after)) if after == before => Certs::Ready(identity, before),
        _ => Certs::Incomplete("the files changed while they were read".to_owned()),
    }
}

fn migration(id: Option<&String>) -> &str {
    id.map_or("none", String::as_str)
}

/// Re-reads `dir` every `poll` and gives the agent each new identity; `applied` is the bytes
/// of the one it has.
async fn watch_certs(agent: Agent, dir: PathBuf, poll: Duration, mut applied: Option<Vec<u8>>) {
    let mut last_warning = String::new();
    loop {
        tokio::time::sleep(poll).await;
        let read = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || read_certs(&dir)).await
        };
        let (identity, bytes) = match read {
            Ok(Certs::Ready(identity, bytes)) => (Some(identity), Some(bytes)),
            Ok(Certs::Gone) => (None, None),
            Ok(Certs::Incomplete(why)) => {
                if why != last_warning {
                    warn!(certs = %dir.display(), %why, "certificates incomplete: the identity stays as it is, trying again");
                    last_warning = why;
                }
                continue;
            }
            Err(_) => continue,
        };
        if bytes == applied {
            continue;
        }
        match agent.set_identity(identity) {
            Ok(change) => {
                let (before, after) = (migration(change.before.as_ref()), migration(change.after.as_ref()));
                if change.after.is_none() {
                    warn!(before, after, "certificates removed: every connection is refused until they come back");
                } else {
                    info!(before, after, withdrawn = ?change.withdrawn, "identity changed");
                }
                applied = bytes;
                last_warning.clear();
            }
            Err(error) => {
                let why = format!("{error:#}");
                if why != last_warning {
                    warn!(certs = %dir.display(), %why, "cannot use the new certificates: trying again");
                    last_warning = why;
                }
            }
        }
    }
}

/// The agent, and the bytes of the identity it starts with.
fn configure(args: &ServeArgs) -> anyhow::Result<(Agent, Option<Vec<u8>>)> {
    let grants = args.volumes.iter().map(|spec| parse_volume(spec)).collect::<anyhow::Result<Vec<_>>>()?;
    let (agent, applied) = match &args.kubelet_pods {
        None => {
            // Read first: changed after, the watch reloads it.
            let applied = cert_bytes(&args.certs).ok().flatten();
            let identity = Identity::load(&args.certs, Role::Agent)
                .with_context(|| format!("while loading the agent certificate from `{}`", args.certs.display()))?;
            (Agent::new(identity, grants)?, applied)
        }
        Some(pods) => {
            if !pods.is_dir() {
                bail!("`--kubelet-pods {}`: no such directory", pods.display());
            }
            let (agent, applied) = match read_certs(&args.certs) {
                Certs::Ready(identity, bytes) => (Agent::new(identity, grants)?, Some(bytes)),
                Certs::Gone | Certs::Incomplete(_) => {
                    info!(certs = %args.certs.display(), "no usable certificates yet: waiting for the agent's identity, refusing connections until then");
                    (Agent::waiting(grants)?, None)
                }
            };
            (agent.with_pod_volumes(pods.clone()), applied)
        }
    };
    Ok((agent, applied))
}

async fn serve(agent: Agent, applied: Option<Vec<u8>>, metrics: Arc<Metrics>, args: &ServeArgs) -> anyhow::Result<()> {
    let listen = args.listen;
    if let Some(address) = args.metrics_listen {
        let listener = bind(address).await.with_context(|| format!("cannot listen for metrics on `{address}`"))?;
        info!(listen = %listener.local_addr()?, "metrics");
        tokio::spawn(metrics::serve(listener, metrics));
    }
    let listener = bind(listen).await.with_context(|| format!("cannot listen on `{listen}`"))?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::spawn(watch_certs(agent.clone(), args.certs.clone(), args.certs_poll, applied));
    let volumes = args.volumes.join(" ");
    let kubelet_pods = args.kubelet_pods.as_ref().map(|dir| dir.display().to_string()).unwrap_or_default();
    info!(
        listen = %listener.local_addr()?,
        volumes = %volumes,
        kubelet_pods = %kubelet_pods,
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

/// `mover-agent hold`: waits for SIGTERM or SIGINT, then exits 0.
fn hold() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            print_error(&format!("error: cannot start the async runtime: {error}"));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let waited = runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        std::io::Result::Ok(())
    });
    match waited {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            print_error(&format!("error: cannot install the signal handlers: {error}"));
            ExitCode::from(EXIT_FAILED)
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
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Hold => return hold(),
    };
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
    let (agent, applied) = match configure(&args) {
        Ok((agent, applied)) => (agent.with_observer(metrics.clone()), applied),
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
    match runtime.block_on(serve(agent, applied, metrics, &args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            print_error(&format!("error: {error:#}"));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Listen, parse_listen, parse_poll, parse_volume};

    #[test]
    fn poll_durations() {
        assert_eq!(parse_poll("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_poll("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_poll("1m"), Ok(Duration::from_secs(60)));
        for bad in ["", "5", "s", "0s", "-1s", "1h", "1.5s", "5 s"] {
            assert!(parse_poll(bad).is_err(), "accepted {bad:?}");
        }
    }

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
