//! One module per subcommand.

pub mod certs;
pub mod completions;
pub mod copy;
pub mod image;
pub mod man;
pub mod plan;
pub mod preflight;

use std::time::Duration;

use mover_engine::tunnel::Proxy;

/// "`HOST:PORT` presented a certificate for `SUBJECT` issued by `ISSUER`", read without trusting
/// it (as `mover certs fetch` does), so a trust failure shows what the peer actually is.
pub async fn presented_certificate(addr: &str, proxy: Option<&Proxy>) -> Option<String> {
    let fetch = mover_engine::tunnel::fetch_chain(addr, proxy);
    let chain = tokio::time::timeout(Duration::from_secs(5), fetch).await.ok()?.ok()?;
    let info = mover_engine::certs::describe(chain.first()?)?;
    Some(format!("`{addr}` presented a certificate for `{}` issued by `{}`", info.subject, info.issuer))
}
