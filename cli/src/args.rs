//! Command-line arguments of `mover`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mover_engine::Compression;
use mover_engine::image::Credentials;

/// mover: direct volume and image migration between Kubernetes clusters.
///
/// Exit codes: 0 success; 1 the migration failed for a stated reason (bad input, unreachable
/// or refusing agent, verification failure, files that could not be copied); 2 an unexpected
/// internal error; 64 invalid command-line usage (including an address mover does not know).
#[derive(Debug, Parser)]
#[command(name = "mover", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Flags every subcommand takes, listed under their own heading in every `--help`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Output format: `text` (progress bar on a terminal, quiet otherwise) or `json` (progress
    /// events as JSON lines on stdout, the last line a summary object).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text, env = "MOVER_OUTPUT")]
    pub output: OutputFormat,
    /// Show no progress bar.
    #[arg(long, global = true, env = "MOVER_NO_PROGRESS")]
    pub no_progress: bool,
    /// Show a progress bar: the default on a terminal (named for rsync's habit); wins over
    /// `--no-progress` and `MOVER_NO_PROGRESS`.
    #[arg(long, global = true)]
    pub progress: bool,
    /// Show more of the migration: each change as it happens (as `--itemize`), and the
    /// end-of-run summary also when not on a terminal.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Internal logs, for debugging mover: `info`, `debug`, or a tracing filter such as
    /// `mover_engine::agent=debug`. Off by default: warnings and errors are shown anyway.
    #[arg(long, global = true, value_name = "LEVEL", env = "MOVER_LOG")]
    pub log_level: Option<String>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable.
    Text,
    /// JSON lines.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum Command {
    /// Copy a volume: SRC and DST are each a local directory or `agent://HOST:PORT/VOLUME`.
    ///
    /// `mover copy ./a ./b` runs both ends in this process over a loopback mutual-TLS tunnel.
    /// `mover copy ./a agent://HOST:PORT/VOL --certs DIR` sends a local tree to an agent.
    /// `mover copy agent://A:P/VOL agent://B:P/VOL --certs DIR` makes agent A push its volume
    /// straight to agent B; progress comes back here.
    ///
    /// As in rsync, a colon before the first `/` marks an address: `host:7443/data`, `agent:/…` or
    /// an unknown `SCHEME://` is refused (exit 64), never taken for a directory. Write `./a:b` for
    /// a local directory whose name holds a colon. A missing local target is created, but not its
    /// parents (`--mkpath` creates them too); a copy that fails before writing anything removes
    /// what it created.
    ///
    /// The target mirrors the source, deletions included (as MTC does; `--no-delete` keeps extra
    /// entries). `lost+found` at the root of either volume is file-system furniture: never sent,
    /// never deleted, never counted by the mass-delete guard. `-n` previews a copy; `-i` lists
    /// each change. A change line is rsync's `YXcstpoguax`: Y is `>` (a file received), `c` (a
    /// directory, link or node created), `h` (a hard link), `.` (metadata only) or `*deleting`;
    /// X is `f` file, `d` directory, `L` symlink, `D` device, `S` FIFO or socket; then `+++++++++`
    /// for a new entry, or the letters of what differs: `s` size (a symlink's target), `t` time,
    /// `p` permissions, `o` owner, `g` group, `x` extended attributes (`.` where the same; mover
    /// never emits `c`, `u` or `a`). Examples: `>f+++++++++ new.txt`, `>f.st...... changed.db`,
    /// `cd+++++++++ dir/`, `cL+++++++++ link`, `.f...p..... chmodded`, `*deleting   old.log`.
    /// Directory metadata changes are not listed.
    Copy(CopyArgs),
    /// Manage a migration's certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Copy images between registries and OCI layouts (`docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`,
    /// `oci:DIR[:TAG]`).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run a migration plan (volumes, images, hooks): see `examples/plan.yaml`.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Check a plan's prerequisites and print a table (check, result, remedy); exit 1 when any
    /// check fails. Checks certificates, agents (reachable, same protocol version, volumes
    /// readable or writable, free space), CA bundles and hook programs.
    Preflight(PreflightArgs),
    /// Kubernetes: print what mover installs in a cluster (`mover k8s manifests | kubectl apply -f -`).
    #[command(subcommand)]
    K8s(K8sCommand),
    /// Print a shell completion script: `mover completions bash > /etc/bash_completion.d/mover`,
    /// `mover completions zsh > "${fpath[1]}/_mover"`,
    /// `mover completions fish > ~/.config/fish/completions/mover.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout: `mover man | man -l -`, or
    /// `mover man > /usr/local/share/man/man1/mover.1`; with `--dir DIR`, write `mover.1` and one
    /// page per subcommand (`mover-copy.1`, ...) into DIR instead.
    Man {
        /// Write the pages into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Cli {
    /// Parses the command line, noting what only the parsed matches know (where `--certs` came
    /// from), and settling `--progress` against `--no-progress`.
    pub fn parse_command_line() -> Result<Cli, clap::Error> {
        use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
        let matches = Cli::command().try_get_matches()?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.global.no_progress &= !cli.global.progress;
        if let (Command::Copy(args), Some(("copy", copy))) = (&mut cli.command, matches.subcommand()) {
            args.certs_on_command_line = copy.value_source("certs") == Some(ValueSource::CommandLine);
        }
        Ok(cli)
    }
}

/// How strict preflight is.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Fail when a certificate expires within this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 7, env = "MOVER_CERT_WINDOW_DAYS")]
    pub cert_window_days: u32,
    /// Target free space must exceed the source's used bytes by this many percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 10, env = "MOVER_SPACE_MARGIN")]
    pub space_margin: u32,
}

/// `mover preflight`.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The plan file.
    pub plan: PathBuf,
    #[command(flatten)]
    pub checks: CheckArgs,
    /// Clusters, for plans with `clusters:`.
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `mover plan ...`.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Run a plan in MTC's order: `PreBackup` hooks, the volume copies and image transfers (in
    /// parallel, up to `concurrency`), `PostBackup`, `PreRestore` and `PostRestore` hooks. Hooks run
    /// in final runs only, unless `runInStageRuns: true`. A failing hook or copy stops the plan
    /// there. Running it again resumes: completed volumes are cheap incremental no-ops.
    Run(PlanRunArgs),
    /// Undo a plan's cutover: start the source's workloads that `plan run --final` stopped (each
    /// restored to its recorded value, unless someone changed it since), and delete what mover
    /// created in the target cluster (the claims it created, never one that existed before, and
    /// any transfer pods, Services and Secrets left).
    Rollback(PlanRollbackArgs),
}

/// `mover plan rollback`.
#[derive(Debug, Args)]
pub struct PlanRollbackArgs {
    /// The plan file; it must have `clusters:`.
    pub plan: PathBuf,
    /// Clusters.
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `mover plan run`.
#[derive(Debug, Args)]
pub struct PlanRunArgs {
    /// The plan file (YAML, `apiVersion: mover/v1alpha1`, `kind: MigrationPlan`).
    pub plan: PathBuf,
    /// Stage run, while the application still runs: files that vanish or change while being
    /// read are warnings, and only hooks with `runInStageRuns: true` run. May be repeated.
    #[arg(long, conflicts_with = "final_run")]
    pub stage: bool,
    /// Final run (the default), with the application stopped: every file must copy. A final
    /// run of a plan with `clusters:` that stopped before its end is resumed: the steps it did
    /// (hooks, quiesce) are not done again, the copies are.
    #[arg(long = "final", id = "final_run")]
    pub final_run: bool,
    /// Start a final run from the beginning even when the last one stopped before its end.
    #[arg(long, conflicts_with = "stage")]
    pub restart: bool,
    /// Also write the final report as JSON to FILE.
    #[arg(long, value_name = "FILE", env = "MOVER_REPORT")]
    pub report: Option<PathBuf>,
    /// How long a final run of a plan with `clusters:` waits for the pods of the workloads it
    /// quiesced to stop, in seconds; past it the run fails naming the pods still running.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, env = "MOVER_QUIESCE_TIMEOUT")]
    pub quiesce_timeout: u64,
    /// Do not run `mover preflight`'s checks first.
    #[arg(long, env = "MOVER_SKIP_PREFLIGHT")]
    pub skip_preflight: bool,
    /// List what each volume copy would create, update and delete, and write nothing: hooks
    /// and image transfers are not run (each is listed as skipped).
    #[arg(short = 'n', long, env = "MOVER_DRY_RUN")]
    pub dry_run: bool,
    #[command(flatten)]
    pub checks: CheckArgs,
    /// Clusters, for plans with `clusters:`.
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `mover copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source: a directory, `agent://HOST:PORT/VOLUME` or `k8s://CONTEXT/NAMESPACE/PVC`.
    pub source: String,
    /// Target: a directory, `agent://HOST:PORT/VOLUME` or `k8s://CONTEXT/NAMESPACE[/PVC]` (the
    /// claim is created from the source's when missing).
    pub target: String,
    /// Directory holding the migration's certificates (`mover certs init DIR`); needed when an
    /// agent is involved, refused when both ends are local.
    #[arg(long, env = "MOVER_CERTS")]
    pub certs: Option<PathBuf>,
    /// Whether `--certs` was given on the command line (not only through `MOVER_CERTS`): only
    /// then is it a mistake for a local-to-local copy.
    #[arg(skip)]
    pub certs_on_command_line: bool,
    /// Create a missing local target's missing parent directories too (by default only the
    /// target itself is created, as rsync does).
    #[arg(long, env = "MOVER_MKPATH")]
    pub mkpath: bool,
    /// Copy `security.selinux` labels too.
    #[arg(long, env = "MOVER_SELINUX")]
    pub selinux: bool,
    /// Recreate device nodes (the target must run as root).
    #[arg(long, env = "MOVER_DEVICES")]
    pub devices: bool,
    /// fsync every file before renaming it into place.
    #[arg(long, env = "MOVER_FSYNC")]
    pub fsync: bool,
    /// Compression of data chunks: `auto` (zstd, level chosen from how the link keeps up: off on
    /// a fast local link, higher on a slow one), `off`, or a zstd level 1-19.
    #[arg(long, default_value = "auto", value_parser = parse_compression, env = "MOVER_COMPRESS")]
    pub compress: Compression,
    /// Stage run: files that vanish or change while being read are warnings (exit 0), not errors.
    #[arg(long, env = "MOVER_STAGE")]
    pub stage: bool,
    /// Limit the bytes the source writes to the tunnel (after compression), per second: a bare
    /// number is KiB/s, as in rsync and MTC's `rsync_opt_bwlimit` (`5000` = 5000 KiB/s); or
    /// `500K`, `20M`, `1G` (binary units), `100B` (bytes), or bits with `100Mbit`.
    #[arg(long, value_parser = parse_bwlimit, env = "MOVER_BWLIMIT")]
    pub bwlimit: Option<u64>,
    /// Reach the target agent through this HTTP CONNECT proxy: `http://USER:PASSWORD@HOST:PORT`
    /// (one proxy, as MTC's `stunnel_tcp_proxy`). The source dials through it: this command for
    /// a local source, the source agent for an agent-to-agent copy. Prefer `MOVER_PROXY` or
    /// `--proxy-password-file` so the password stays out of the process list.
    #[arg(long, env = "MOVER_PROXY", hide_env_values = true)]
    pub proxy: Option<String>,
    /// Read the proxy password from this file (when `--proxy` has none); `MOVER_PROXY_PASSWORD`
    /// works too.
    #[arg(long, env = "MOVER_PROXY_PASSWORD_FILE")]
    pub proxy_password_file: Option<PathBuf>,
    /// For `agent://… ./DIR`: the address (`IP:PORT`) where this command receives what the
    /// source agent pushes. Default: this machine's address on the route to the agent, on a free
    /// port (the agent must be able to reach it).
    #[arg(long, value_name = "IP:PORT", env = "MOVER_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Find changed files by content (block signatures compared, MD4 as rsync; the result is
    /// verified with blake3), not by size and mtime.
    #[arg(long, env = "MOVER_CHECKSUM")]
    pub checksum: bool,
    /// Update changed files in place instead of writing a verified copy and renaming it over
    /// the old one: for files too big to hold twice. Still verified; a failed or interrupted run
    /// leaves such a file half updated until the next run repairs it. New files still go
    /// through a temporary name, and so does a file whose inode has other names (hard links):
    /// writing it in place would change those names too.
    #[arg(long, env = "MOVER_INPLACE")]
    pub inplace: bool,
    /// Spread the volume's file content over N connections (1-16), each with its own reader,
    /// compressor and writer on both ends, so several files move at once: uses the cores of
    /// both nodes and links where one TCP connection cannot fill the pipe. 1 sends one file
    /// at a time over one connection.
    #[arg(long, default_value_t = DEFAULT_STREAMS, value_parser = parse_streams, env = "MOVER_STREAMS")]
    pub streams: u32,
    /// Keep entries on the target that the source lacks (by default they are deleted, as a
    /// migration wants).
    #[arg(long, env = "MOVER_NO_DELETE")]
    pub no_delete: bool,
    /// Delete entries on the target that the source lacks: the default, named for rsync's habit.
    #[arg(long, conflicts_with = "no_delete")]
    pub delete: bool,
    /// Allow deleting more than half of the target's entries (refused by default: that is what
    /// an empty or wrong source looks like).
    #[arg(long, env = "MOVER_ALLOW_MASS_DELETE")]
    pub allow_mass_delete: bool,
    /// Also copy file systems mounted inside the source volume. By default the scan stays on the
    /// source's own file system (as `du -x`, `rsync -x`): a mount point inside it is skipped
    /// with a warning, and the target keeps what it has there. A mount inside the target is
    /// never written into or deleted either way.
    #[arg(long, env = "MOVER_CROSS_MOUNTS")]
    pub cross_mounts: bool,
    /// Show what the copy would create, update and delete, and write nothing on the target (the
    /// mass-delete guard still answers). Files are compared by size and time, as a copy does;
    /// with `--checksum`, files of equal size and time are taken as unchanged. The target must
    /// exist.
    #[arg(short = 'n', long, env = "MOVER_DRY_RUN")]
    pub dry_run: bool,
    /// List each change on stdout as it is made, in rsync's itemize letters (see above).
    #[arg(short = 'i', long, env = "MOVER_ITEMIZE")]
    pub itemize: bool,
    /// Leave out what PATTERN matches, with rsync's rules: `/cache` only at the top of the
    /// volume, `cache` or `*.log` at any depth, `tmp/` directories only, `*` and `?` within one
    /// name, `**` across directories. An excluded directory is not entered. What the patterns
    /// match on the target is kept, not deleted. May be repeated.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<std::ffi::OsString>,
    /// Read exclude patterns from FILE (`-`: standard input), one a line; blank lines and
    /// lines starting with `#` or `;` are skipped, as rsync does. May be repeated.
    #[arg(long, value_name = "FILE", env = "MOVER_EXCLUDE_FROM")]
    pub exclude_from: Vec<PathBuf>,
    /// Clusters, for `k8s://` ends.
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `mover certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a migration CA and agent and coordinator certificates in DIR.
    ///
    /// The nodes that run agents get `ca.crt`, `agent.crt` and `agent.key` only; `ca.key` and
    /// `coordinator.*` stay with the coordinator (whoever holds `ca.key` can mint certificates).
    Init {
        /// Where to write `ca.crt`, `ca.key`, `agent.crt`, `agent.key`, `coordinator.crt`,
        /// `coordinator.key` (keys mode 0600; DIR is created mode 0700).
        dir: PathBuf,
        /// Also write the node set alone (`ca.crt`, `agent.crt`, `agent.key`) into this
        /// directory, ready to copy to the nodes or to load into a Kubernetes Secret.
        #[arg(long, value_name = "DIR")]
        agent_dir: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Fetch the certificate chain a TLS endpoint presents, show it, and save it as a PEM CA
    /// bundle (the seed's `openssl s_client | sed` recipe, built in). The endpoint is NOT
    /// trusted while fetching: check the fingerprints before you trust the bundle.
    Fetch {
        /// `HOST:PORT` of the endpoint, e.g. a registry route on 443.
        endpoint: String,
        /// Write the bundle to FILE (otherwise it goes to stdout and the details to stderr).
        #[arg(short = 'o', long = "out", id = "out", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
        /// Reach the endpoint through this HTTP CONNECT proxy (`http://USER:PASSWORD@HOST:PORT`).
        #[arg(long, env = "MOVER_PROXY", hide_env_values = true)]
        proxy: Option<String>,
    },
}

/// Parses `--compress`.
pub fn parse_compression(text: &str) -> Result<Compression, String> {
    match text {
        "auto" => Ok(Compression::Auto),
        "off" | "0" => Ok(Compression::Off),
        level => match level.parse::<i32>() {
            Ok(level @ 1..=19) => Ok(Compression::Level(level)),
            _ => Err(format!("`{text}`: expected `auto`, `off` or a zstd level from 1 to 19")),
        },
    }
}

/// Parses a size or rate in bytes with an optional `K`, `M` or `G` suffix (binary), or bits per
/// second with `Kbit`, `Mbit` or `Gbit` (decimal, as network links are sold).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    parse_quantity(text, 1.0)
}

/// Parses `--bwlimit` (and a plan's `bwlimit`): as [`parse_rate`], but a bare number is KiB/s,
/// as rsync's `--bwlimit` and MTC's `rsync_opt_bwlimit` read it; `B` names bytes.
pub fn parse_bwlimit(text: &str) -> Result<u64, String> {
    parse_quantity(text, 1024.0)
}

fn parse_quantity(text: &str, bare_factor: f64) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("`{text}` is not a rate such as `20M` or `100Mbit`"))?;
    let factor = match unit {
        "" => bare_factor,
        "B" | "b" => 1.0,
        "K" | "k" => 1024.0,
        "M" | "m" => 1024.0 * 1024.0,
        "G" | "g" => 1024.0 * 1024.0 * 1024.0,
        "Kbit" | "kbit" => 1e3 / 8.0,
        "Mbit" | "mbit" => 1e6 / 8.0,
        "Gbit" | "gbit" => 1e9 / 8.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}`: use B, K, M, G (bytes) or Kbit, Mbit, Gbit")),
    };
    let rate = (number * factor) as u64;
    if rate == 0 {
        return Err("a bandwidth limit must be above zero".into());
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::{parse_bwlimit, parse_rate};

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100").unwrap(), 100);
        assert_eq!(parse_bwlimit("5000").unwrap(), 5000 * 1024, "a bare --bwlimit is KiB/s, as in rsync");
        assert_eq!(parse_bwlimit("100B").unwrap(), 100);
        assert_eq!(parse_bwlimit("2M").unwrap(), 2 << 20);
        assert_eq!(parse_bwlimit("100Mbit").unwrap(), 12_500_000);
        assert_eq!(parse_rate("20M").unwrap(), 20 << 20);
        assert_eq!(parse_rate("100Mbit").unwrap(), 12_500_000);
        assert_eq!(parse_rate("1.5K").unwrap(), 1536);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10Mb").is_err());
    }
}

/// `mover image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Copy one image, every platform of an index by default, every digest preserved.
    ///
    /// `mover image copy docker://src.example:5000/ns/app:v1 docker://dst.example/ns/app:v1`
    ///
    /// `mover image copy oci:./layout:v1 docker://dst.example/ns/app:v1`
    Copy(ImageCopyArgs),
    /// Copy every tag of a repository (or, with `--prefix`, of every repository under a path).
    ///
    /// `mover image sync docker://src/ns/app docker://dst/ns/app --tags '^v1\.'`
    ///
    /// `mover image sync --prefix docker://src/ns docker://dst/ns`
    Sync(ImageSyncArgs),
}

/// `mover image copy`.
#[derive(Debug, Args)]
pub struct ImageCopyArgs {
    /// Source image: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` (tag `latest` when none) or
    /// `oci:DIR[:TAG]`.
    pub source: String,
    /// Target: `docker://HOST[:PORT]/REPO[:TAG]` (the source's tag when none) or `oci:DIR[:TAG]`.
    pub target: String,
    /// Copy only this platform of a multi-platform source (`OS/ARCH[/VARIANT]`); the index is
    /// then not copied, so the target has the platform's manifest digest, not the index's.
    #[arg(long, value_parser = parse_platform)]
    pub platform: Option<mover_engine::image::Platform>,
    #[command(flatten)]
    pub common: ImageCommon,
}

/// `mover image sync`.
#[derive(Debug, Args)]
pub struct ImageSyncArgs {
    /// Source repository `docker://HOST[:PORT]/REPO` (or prefix with `--prefix`), or `oci:DIR`.
    pub source: String,
    /// Target repository (or prefix), or `oci:DIR`.
    pub target: String,
    /// Only tags matching this regular expression (e.g. `^v1\.`).
    #[arg(long)]
    pub tags: Option<String>,
    /// SOURCE and TARGET are path prefixes: copy every repository under SOURCE (from the
    /// registry's catalog) to the same name under TARGET, as MTC migrates every image stream of
    /// a namespace.
    #[arg(long)]
    pub prefix: bool,
    #[command(flatten)]
    pub common: ImageCommon,
}

/// Flags shared by `image copy` and `image sync`.
#[derive(Debug, Args)]
pub struct ImageCommon {
    /// Blobs copied at once (largest first).
    #[arg(long, env = "MOVER_IMAGE_JOBS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Only list what would move; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Source registry credentials `USER:PASSWORD` (prefer the environment variable or an auth
    /// file: the command line is visible to other users).
    #[arg(long, env = "MOVER_SRC_CREDS", hide_env_values = true, value_parser = parse_creds)]
    pub src_creds: Option<Credentials>,
    /// Target registry credentials `USER:PASSWORD`.
    #[arg(long, env = "MOVER_DEST_CREDS", hide_env_values = true, value_parser = parse_creds)]
    pub dest_creds: Option<Credentials>,
    /// Bearer token for the source registry (an `OpenShift` service-account token).
    #[arg(long, env = "MOVER_SRC_REGISTRY_TOKEN", hide_env_values = true, conflicts_with = "src_creds")]
    pub src_registry_token: Option<String>,
    /// Bearer token for the target registry.
    #[arg(long, env = "MOVER_DEST_REGISTRY_TOKEN", hide_env_values = true, conflicts_with = "dest_creds")]
    pub dest_registry_token: Option<String>,
    /// Auth file (docker `config.json` format); default `$REGISTRY_AUTH_FILE`, then
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, then `~/.docker/config.json`.
    #[arg(long)]
    pub authfile: Option<PathBuf>,
    /// PEM bundle of CAs to trust for the source registry (`mover certs fetch HOST:PORT -o FILE`).
    #[arg(long)]
    pub src_ca_bundle: Option<PathBuf>,
    /// PEM bundle of CAs to trust for the target registry.
    #[arg(long)]
    pub dest_ca_bundle: Option<PathBuf>,
    /// Verify the source registry's certificate (`--src-tls-verify=false` to skip: an explicit opt-out).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub src_tls_verify: bool,
    /// Verify the target registry's certificate.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub dest_tls_verify: bool,
    /// Talk plain HTTP to the source registry.
    #[arg(long)]
    pub src_plain_http: bool,
    /// Talk plain HTTP to the target registry.
    #[arg(long)]
    pub dest_plain_http: bool,
    /// Reach registries through this HTTP proxy (`http://USER:PASSWORD@HOST:PORT`); otherwise
    /// `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` apply.
    #[arg(long, env = "MOVER_PROXY", hide_env_values = true)]
    pub proxy: Option<String>,
    /// Largest manifest accepted (bytes, K/M suffixes).
    #[arg(long, default_value = "4M", value_parser = parse_rate)]
    pub max_manifest_size: u64,
}

fn parse_platform(text: &str) -> Result<mover_engine::image::Platform, String> {
    mover_engine::image::Platform::parse(text)
}

fn parse_creds(text: &str) -> Result<Credentials, String> {
    Credentials::parse_pair(text)
}

/// Connections per volume unless told otherwise (`--streams`, a plan's `streams:`).
pub const DEFAULT_STREAMS: u32 = 4;

/// `--streams N`: 1 to [`mover_engine::MAX_STREAMS`].
pub fn parse_streams(text: &str) -> Result<u32, String> {
    let max = mover_engine::MAX_STREAMS;
    match text.trim().parse::<u32>() {
        Ok(streams) if (1..=max).contains(&streams) => Ok(streams),
        _ => Err(format!("`{text}` is not a number of streams: use 1 to {max}")),
    }
}

/// `mover k8s ...`.
#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Print every object mover's install needs, as YAML for `kubectl apply -f -`: the migration
    /// namespace (with its Pod Security level), the coordinator's and agents' service accounts,
    /// their cluster role, role and bindings, and for `--strategy node` the agent daemon set.
    ///
    /// `--strategy pod` (the default) needs Pod Security `baseline` where the claims are; `node`
    /// runs a privileged daemon set (the namespace is labelled `privileged`; OpenShift also needs
    /// `oc adm policy add-scc-to-user privileged -z mover-agent -n NAMESPACE`).
    #[allow(clippy::doc_markdown, reason = "help text names a product, not code")]
    Manifests(K8sManifestsArgs),
    /// Remove what mover left in clusters (transfer pods, Services, identity Secrets), e.g. after
    /// `mover` was killed: of one plan (`--plan PLAN.yaml`: its contexts and name; `mover copy`
    /// runs are the plan `copy`), or every migration's in the contexts named.
    Cleanup(K8sCleanupArgs),
}

/// `mover k8s cleanup`.
#[derive(Debug, Args)]
pub struct K8sCleanupArgs {
    /// Only this plan's leftovers, in its clusters.
    #[arg(long, value_name = "PLAN.yaml")]
    pub plan: Option<PathBuf>,
    /// Only the leftovers of runs with this plan name (`copy` for `mover copy`).
    #[arg(long, value_name = "NAME", conflicts_with = "plan")]
    pub plan_name: Option<String>,
    /// A kubeconfig context to clean (repeatable; default: the plan's contexts, else the
    /// current context).
    #[arg(long, value_name = "CONTEXT")]
    pub context: Vec<String>,
    /// Kubeconfig files, `:`-separated (default: `~/.kube/config`, else in-cluster).
    #[arg(long, value_name = "FILES", env = "KUBECONFIG")]
    pub kubeconfig: Option<std::ffi::OsString>,
}

/// `mover k8s manifests`.
#[derive(Debug, Args)]
pub struct K8sManifestsArgs {
    /// How agents reach a claim: `pod` (a transfer pod mounts it; Pod Security baseline) or
    /// `node` (a privileged daemon set reaches it under the kubelet's pod directory).
    #[arg(long, value_enum, default_value_t = StrategyArg::Pod, env = "MOVER_K8S_STRATEGY")]
    pub strategy: StrategyArg,
    /// The migration namespace mover's service accounts and agents live in.
    #[arg(long, value_name = "NAME", default_value = mover_kube::objects::DEFAULT_NAMESPACE,
          value_parser = parse_namespace, env = "MOVER_K8S_NAMESPACE")]
    pub namespace: String,
    /// The agent image.
    #[arg(long, value_name = "IMAGE", default_value = mover_kube::objects::DEFAULT_IMAGE, env = "MOVER_AGENT_IMAGE")]
    pub image: String,
    /// The kubelet's root directory on the nodes (`--strategy node`): e.g.
    /// `/var/vcap/data/kubelet` on TKGI, `/opt/rke/var/lib/kubelet` on Rancher.
    #[arg(long, value_name = "PATH", default_value = mover_kube::objects::DEFAULT_KUBELET_ROOT,
          value_parser = parse_kubelet_root, env = "MOVER_KUBELET_ROOT")]
    pub kubelet_root: String,
    /// Let the coordinator forward ports of pods (`pods/portforward`), which `--port-forward`
    /// needs. Left out by default: the permission reaches the ports of every pod of the cluster.
    #[arg(long)]
    pub port_forward: bool,
    /// Print instead the examples of what each migration creates: the identity Secret, transfer
    /// pods and a Service (not for `kubectl apply`: the coordinator creates them per claim).
    #[arg(long)]
    pub show_templates: bool,
}

/// `--strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// A transfer pod per claim.
    Pod,
    /// A daemon set on every node.
    Node,
}

fn parse_namespace(text: &str) -> Result<String, String> {
    if mover_kube::objects::labels::is_dns_label(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a namespace name: use at most 63 lower-case letters, digits and `-`, \
             starting and ending with a letter or digit"
        ))
    }
}

/// `[CONTEXT=]IP[:PORT]`: a context (empty: every cluster not named) and a router address.
fn parse_router_address(text: &str) -> Result<(String, String), String> {
    let (context, address) = text.rsplit_once('=').unwrap_or(("", text));
    mover_plan::check_router_address(address).map(|()| (context.to_owned(), address.to_owned()))
}

fn parse_kubelet_root(text: &str) -> Result<String, String> {
    if text.starts_with('/') && !text.split('/').any(|part| part == "..") {
        Ok(text.to_owned())
    } else {
        Err(format!("`{text}` is not an absolute path without `..`: give the kubelet's root, e.g. `/var/lib/kubelet`"))
    }
}

/// How `mover` reaches clusters and runs transfer agents there (copies and plans with
/// `k8s://` claims).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig files, `:`-separated as kubectl reads `KUBECONFIG`. Default:
    /// `~/.kube/config`, else the service account of the pod mover runs in.
    #[arg(long, value_name = "FILES", env = "KUBECONFIG")]
    pub kubeconfig: Option<std::ffi::OsString>,
    /// The transfer agents' image.
    #[arg(long, value_name = "IMAGE", default_value = mover_kube::objects::DEFAULT_IMAGE, env = "MOVER_AGENT_IMAGE")]
    pub agent_image: String,
    /// How transfer agents are exposed: `load-balancer` (between clusters), `node-port`,
    /// `cluster-ip` (both ends in one cluster), or `route` (an OpenShift Route with TLS
    /// passthrough, reached through the cluster's router by SNI). Default: the plan's
    /// `clusters.exposure`, else `load-balancer`.
    #[arg(long, value_enum, env = "MOVER_EXPOSE")]
    pub expose: Option<ExposeArg>,
    /// With `--expose route`: dial the router of kubeconfig context CONTEXT at `IP[:PORT]` (port
    /// 443 when left out), sending the Route's host as TLS SNI, as curl's `--resolve` does where
    /// the Route's host does not resolve to the router from here. Without `CONTEXT=`, for every
    /// cluster not named. Without it, mover dials `ROUTE_HOST:443`. Repeatable.
    #[arg(long, value_name = "[CONTEXT=]IP[:PORT]", value_parser = parse_router_address, env = "MOVER_ROUTER_ADDRESS",
          value_delimiter = ',')]
    pub router_address: Vec<(String, String)>,
    /// Reach the agents through API-server port-forwards (as `kubectl port-forward`), for a
    /// machine that cannot reach the pod network or the agents' exposed addresses. Only
    /// mover's own connections go this way: the agents still dial each other at their
    /// exposed addresses. Needs `mover k8s manifests --port-forward`'s permission. Default: the
    /// plan's `clusters.portForward`.
    #[arg(long, env = "MOVER_PORT_FORWARD")]
    pub port_forward: bool,
    /// How long a transfer pod may take to be ready, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, env = "MOVER_AGENT_READY_TIMEOUT")]
    pub agent_ready_timeout: u64,
    /// How agents reach claims: `pod` (a transfer pod per claim and end) or `node` (the agents
    /// of `mover k8s manifests --strategy node`, granted each claim at run time). Default: the
    /// plan's `clusters.strategy`, else `pod`.
    #[arg(long, value_enum, env = "MOVER_K8S_STRATEGY")]
    pub strategy: Option<StrategyArg>,
    /// The namespace of the node agents (`--strategy node`), where their identity Secret goes.
    #[arg(long, value_name = "NAME", default_value = mover_kube::objects::DEFAULT_NAMESPACE,
          value_parser = parse_namespace, env = "MOVER_K8S_NAMESPACE")]
    pub agents_namespace: String,
}

/// `--expose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExposeArg {
    /// A `LoadBalancer` Service.
    LoadBalancer,
    /// A `NodePort` Service.
    NodePort,
    /// A `ClusterIP` Service.
    ClusterIp,
    /// An OpenShift Route with TLS passthrough to a `ClusterIP` Service.
    Route,
}
