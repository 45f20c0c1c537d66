//! `mover`: the migration coordinator command.

mod access;
mod args;
mod clusters;
mod commands;
mod excludes;
mod hints;
mod itemize;
mod output;
mod plan;
mod render;

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::args::{Cli, Command, PlanCommand};

/// Exit code: the migration failed for a stated reason.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: unexpected internal error.
pub const EXIT_INTERNAL: u8 = 2;
/// Exit code: invalid usage.
pub const EXIT_USAGE: u8 = 64;
/// Exit code: cancelled by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_CANCELLED: u8 = 130;

/// A command line that parsed but does not make sense (an address mover does not know, `--certs`
/// for two local directories, an invalid `--tags` expression): printed as any error, and exits
/// [`EXIT_USAGE`] as clap's own usage errors do. Attach it with [`usage`] or as the context of the
/// underlying error.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error with this message.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// Whether `error` is, or was caused by, a usage error (anyhow's downcast looks through every
/// layer of context, and at contexts themselves).
fn is_usage(error: &anyhow::Error) -> bool {
    error.downcast_ref::<UsageError>().is_some()
}

/// How a command ended.
pub enum Outcome {
    /// Everything worked.
    Success,
    /// The migration failed; the reason was printed.
    Failed,
    /// The user interrupted it; what was done was reported.
    Cancelled,
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn cancelled() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        // Without handlers the signals keep their default action: the process ends.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}

fn main() -> ExitCode {
    output::install_panic_hook();
    // A panic is a bug, reported as an internal error, never Rust's exit code 101.
    std::panic::catch_unwind(run).unwrap_or(ExitCode::from(EXIT_INTERNAL))
}

fn run() -> ExitCode {
    let cli = match Cli::parse_command_line() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Internal logs are for debugging mover (`--log-level`, `MOVER_LOG`): what the user needs
    // comes as events, errors and warnings. The in-process agent of `mover copy ./a ./b` logs
    // what the CLI already reports (its warnings reach the CLI through the sender).
    let quiet = "warn,mover_engine::agent=error,mover_engine::progress=off,rustls_platform_verifier=off";
    let filter = cli.global.log_level.as_deref().unwrap_or(quiet);
    output::init_logs(
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| quiet.into()),
        std::io::stderr().is_terminal(),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            output::eprintln(&format!("error: cannot start the async runtime: {error}"));
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    let json = matches!(cli.global.output, args::OutputFormat::Json);
    // `plan run` cancels itself, to write its report first; a copy with claims, to remove its
    // transfer pods.
    let cancels_itself = match &cli.command {
        Command::Plan(PlanCommand::Run(_)) => true,
        Command::Copy(args) => [&args.source, &args.target].iter().any(|end| end.starts_with("k8s://")),
        _ => false,
    };
    let result = runtime.block_on(async {
        let command = async {
            match cli.command {
                Command::Copy(args) => commands::copy::run(args, &cli.global).await,
                Command::Certs(command) => commands::certs::run(command).await,
                Command::Image(command) => commands::image::run(command, &cli.global).await,
                Command::Plan(PlanCommand::Run(args)) => commands::plan::run(args, &cli.global).await,
                Command::Plan(PlanCommand::Rollback(args)) => commands::rollback::run(&args, &cli.global).await,
                Command::Preflight(args) => commands::preflight::run(args, &cli.global).await,
                Command::K8s(command) => commands::k8s::run(&command).await,
                Command::Completions { shell } => Ok(commands::completions::run(shell)),
                Command::Man { dir } => commands::man::run(dir.as_deref()),
            }
        };
        tokio::select! {
            result = command => Some(result),
            () = cancelled(), if !cancels_itself => None,
        }
    });
    let Some(result) = result else {
        // The command's connections closed as it was dropped: agents end their sessions, keep
        // partial files for the next run, and delete nothing.
        render::print_cancelled(json);
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        return ExitCode::from(EXIT_CANCELLED);
    };
    if matches!(result, Ok(Outcome::Cancelled)) {
        // Copies still winding down must not hold the exit.
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    }
    finish(result)
}

/// The exit code of a command's result, with its error printed.
fn finish(result: anyhow::Result<Outcome>) -> ExitCode {
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(EXIT_FAILED),
        Ok(Outcome::Cancelled) => ExitCode::from(EXIT_CANCELLED),
        Err(error) => {
            render::print_error(&error);
            ExitCode::from(if is_usage(&error) { EXIT_USAGE } else { EXIT_FAILED })
        }
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::{UsageError, is_usage, usage};

    #[test]
    fn usage_errors_are_recognised_however_they_are_wrapped() {
        assert!(is_usage(&usage("bad")));
        assert!(is_usage(&usage("bad").context("while parsing")));
        let wrapped: anyhow::Result<()> = Err(std::io::Error::other("cause")).context(UsageError("bad".into()));
        assert!(is_usage(&wrapped.unwrap_err().context("outer")));
        assert!(!is_usage(&anyhow::anyhow!("failed")));
    }
}
