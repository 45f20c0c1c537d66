//! `mover man`: the manual page, rendered by `clap_mangen` from the clap definition (the same
//! text as `--help`).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::Outcome;
use crate::args::Cli;

/// Prints `mover(1)` on stdout, or writes it and one page per subcommand into `dir`.
pub fn run(dir: Option<&Path>) -> anyhow::Result<Outcome> {
    let command = Cli::command();
    match dir {
        None => match clap_mangen::Man::new(command).render(&mut std::io::stdout().lock()) {
            // `mover man | head`: a closed stdout is the reader's choice, not a failure.
            Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(error).context("while writing the manual page");
            }
            _ => {}
        },
        Some(dir) => {
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("while writing the manual pages into `{}`", dir.display()))?;
            println!("wrote the manual pages into {}", dir.display());
        }
    }
    Ok(Outcome::Success)
}
