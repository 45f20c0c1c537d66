//! `mover completions SHELL`: a completion script generated from the same clap definition that
//! parses the command line, so it never drifts from the flags.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::Outcome;
use crate::args::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn run(shell: Shell) -> Outcome {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "mover", &mut std::io::stdout());
    Outcome::Success
}
