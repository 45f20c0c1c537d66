//! `mover certs init`.

use anyhow::Context;
use mover_engine::certs;

use crate::Outcome;
use crate::args::CertsCommand;

pub fn run(command: CertsCommand) -> anyhow::Result<Outcome> {
    match command {
        CertsCommand::Init { dir, force } => {
            let generated = certs::generate().context("while generating the migration's certificates")?;
            let written = certs::write_dir(&dir, &generated, force)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(Outcome::Success)
        }
    }
}
