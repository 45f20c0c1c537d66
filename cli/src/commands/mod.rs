//! One module per subcommand.

pub mod certs;
pub mod copy;
pub mod plan;
pub mod preflight;
