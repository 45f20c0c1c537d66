//! One module per subcommand.

pub mod certs;
pub mod completions;
pub mod copy;
pub mod image;
pub mod k8s;
pub mod man;
pub mod plan;
pub mod preflight;
pub mod rollback;
