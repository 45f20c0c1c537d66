//! What `mover` shows: a progress bar on a terminal, JSON lines with `--output json`, nothing
//! otherwise; errors as `error:`, `Caused by:` lines and an optional `hint:`.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mover_engine::certs::CertError;
use mover_engine::client::CopyError;
use mover_engine::hooks::{self, HookError};
use mover_engine::progress::{Event, Reporter, Summary};
use mover_engine::tunnel::{ProxyError, TunnelError};
use mover_engine::wire::{RemoteErrorKind, WireError};

use crate::args::{GlobalArgs, OutputFormat};

/// Renders engine events.
pub enum Printer {
    /// JSON lines on stdout.
    Json(Mutex<std::io::Stdout>),
    /// A progress bar on stderr.
    Bar(ProgressBar),
    /// Only warnings, on stderr.
    Quiet,
}

impl Printer {
    /// Picks the renderer once.
    pub fn new(global: &GlobalArgs) -> Printer {
        if global.output == OutputFormat::Json {
            return Printer::Json(Mutex::new(std::io::stdout()));
        }
        if global.no_progress || !std::io::stderr().is_terminal() {
            return Printer::Quiet;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {bytes:>10}/{total_bytes:<10} {wide_bar} {binary_bytes_per_sec:>12} ETA {eta:<4} {msg}",
            )
            .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Printer::Bar(bar)
    }

    fn json_line(&self, value: &serde_json::Value) {
        if let Printer::Json(stdout) = self {
            let mut stdout = stdout.lock().expect("stdout lock");
            // A closed stdout (broken pipe) is not our failure: stop writing quietly.
            let _ = writeln!(stdout, "{value}");
            let _ = stdout.flush();
        }
    }

    /// Prints the end-of-run summary (JSON: the last line; text: only with `-v`).
    pub fn summary(&self, summary: &Summary, verbose: bool) {
        match self {
            Printer::Json(_) => {
                let mut value = serde_json::to_value(summary).expect("summary serialises");
                value["type"] = "summary".into();
                self.json_line(&value);
            }
            Printer::Bar(bar) => {
                bar.finish_and_clear();
                if verbose {
                    print_summary_text(summary);
                }
            }
            Printer::Quiet if verbose => print_summary_text(summary),
            Printer::Quiet => {}
        }
        if !matches!(self, Printer::Json(_)) {
            for what in &summary.not_preserved {
                eprintln!("warning: not preserved: {what}");
            }
            for error in &summary.errors {
                eprintln!("error: {error}");
            }
        }
    }

    /// Clears the bar before an error is printed.
    pub fn abandon(&self) {
        if let Printer::Bar(bar) = self {
            bar.abandon();
        }
    }
}

/// `{"progress": {...}}` becomes `{"type": "progress", ...}` (ripgrep's `type` envelope).
pub(crate) fn typed(event: &Event) -> serde_json::Value {
    let value = serde_json::to_value(event).expect("events serialise");
    match value {
        serde_json::Value::Object(map) if map.len() == 1 => {
            let (kind, fields) = map.into_iter().next().expect("one entry");
            let mut fields = match fields {
                serde_json::Value::Object(fields) => fields,
                other => serde_json::Map::from_iter([("value".to_owned(), other)]),
            };
            fields.insert("type".to_owned(), kind.into());
            serde_json::Value::Object(fields)
        }
        other => other,
    }
}

fn print_summary_text(summary: &Summary) {
    eprintln!(
        "{} of {} files transferred, {} of {} bytes, {} bytes on the wire, {:.2}s",
        summary.files_transferred,
        summary.files_total,
        summary.bytes_transferred,
        summary.bytes_total,
        summary.bytes_on_wire,
        summary.elapsed_s
    );
}

impl Reporter for Printer {
    fn wants_early_totals(&self) -> bool {
        matches!(self, Printer::Bar(_))
    }

    fn on_event(&self, event: &Event) {
        match self {
            Printer::Json(_) => self.json_line(&typed(event)),
            Printer::Bar(bar) => match event {
                Event::Totals { files, bytes } => {
                    bar.set_length(*bytes);
                    bar.set_message(format!("{files} files"));
                }
                Event::Progress { files_done, bytes_done, .. } => {
                    bar.set_position(*bytes_done);
                    bar.set_message(format!("{files_done} files"));
                }
                Event::Warning { message } => bar.suspend(|| eprintln!("warning: {message}")),
                Event::ImagePlanned { .. } | Event::Blob { .. } | Event::ImageCopied { .. } => {}
            },
            Printer::Quiet => {
                if let Event::Warning { message } = event {
                    eprintln!("warning: {message}");
                }
            }
        }
    }
}

/// Prints an error, its causes and, when we know one, a hint.
pub fn print_error(error: &anyhow::Error) {
    eprintln!("error: {error}");
    let causes: Vec<String> = error.chain().skip(1).map(ToString::to_string).collect();
    if !causes.is_empty() {
        eprintln!("\nCaused by:");
        for cause in causes {
            eprintln!("    {cause}");
        }
    }
    if let Some(hint) = hint(error) {
        eprintln!("\nhint: {hint}");
    }
}

fn hint(error: &anyhow::Error) -> Option<String> {
    for cause in error.chain() {
        if let Some(copy) = cause.downcast_ref::<CopyError>()
            && let Some(hint) = copy_hint(copy)
        {
            return Some(hint);
        }
        if let Some(HookError::Spawn { program, .. }) = cause.downcast_ref::<HookError>() {
            return Some(if program == hooks::ANSIBLE_PLAYBOOK {
                "playbook hooks need `ansible-playbook` in `PATH`: install it with `pip install ansible-core`".into()
            } else {
                format!(
                    "check the hook's `command`: `{program}` must exist and be executable (names without `/` are looked up in `PATH`; relative paths start at the plan file's directory)"
                )
            });
        }
        if let Some(tunnel) = cause.downcast_ref::<TunnelError>() {
            return tunnel_hint(tunnel);
        }
        if let Some(CertError::Writable { .. }) = cause.downcast_ref::<CertError>() {
            return None;
        }
        if cause.downcast_ref::<CertError>().is_some() {
            return Some(
                "create the migration's certificates with `mover certs init DIR`, then pass `--certs DIR`".into(),
            );
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(28)
        {
            return Some("the target file system is full: free space there, then run the same command again; files already copied are kept and skipped".into());
        }
        if cause.to_string().contains("No space left on device") {
            return Some("the target file system is full: free space there, then run the same command again; files already copied are kept and skipped".into());
        }
    }
    None
}

/// The hint for a copy error, when we know one.
pub(crate) fn copy_error_hint(error: &CopyError) -> Option<String> {
    copy_hint(error)
}

fn copy_hint(error: &CopyError) -> Option<String> {
    match error {
        CopyError::Refused { error, .. } => match error.kind {
            RemoteErrorKind::UnknownVolume => {
                Some("check the volume name in `agent://HOST:PORT/VOLUME` against the agent's `--volume` flags".into())
            }
            RemoteErrorKind::ReadOnly => Some(
                "the agent was started with `--volume NAME=PATH:ro`; restart it without `:ro` to receive into it"
                    .into(),
            ),
            RemoteErrorKind::Busy => Some("wait for the other copy into this volume to finish, then run again".into()),
            _ => None,
        },
        CopyError::Handshake { source: WireError::VersionMismatch { .. }, .. } => {
            Some("install the same mover version on every cluster (`mover --version`, `mover-agent --version`)".into())
        }
        CopyError::Tunnel(tunnel) => tunnel_hint(tunnel),
        CopyError::Certs(_) => {
            Some("create the migration's certificates with `mover certs init DIR`, then pass `--certs DIR`".into())
        }
        _ => None,
    }
}

fn tunnel_hint(error: &TunnelError) -> Option<String> {
    match error {
        TunnelError::Proxy(ProxyError::Authentication { .. }) => {
            Some("check the user and password of `--proxy` (or `--proxy-password-file`, `MOVER_PROXY_PASSWORD`)".into())
        }
        TunnelError::Proxy(ProxyError::Refused { .. }) => Some(
            "the proxy must allow CONNECT to the agent's port (tinyproxy: `ConnectPort`; squid: `SSL_ports`)".into(),
        ),
        TunnelError::Proxy(ProxyError::Unreachable { .. }) => {
            Some("check the proxy's address and port in `--proxy` and that it runs".into())
        }
        TunnelError::Proxy(ProxyError::TargetUnreachable { .. }) => {
            Some("the proxy cannot reach the agent: check the agent's address as seen from the proxy".into())
        }
        TunnelError::HandshakeViaProxy { .. } => Some(
            "exempt the agents' addresses from TLS inspection on the proxy; mover never trusts a certificate outside the migration's CA".into(),
        ),
        TunnelError::Connect { .. } | TunnelError::Timeout { .. } => {
            Some("check that `mover-agent serve` runs there and that the address and port are reachable from here".into())
        }
        TunnelError::Handshake { .. } => Some(
            "both sides must use certificates from the same `mover certs init` directory: the agent's `--certs` and this command's `--certs`"
                .into(),
        ),
        _ => None,
    }
}
