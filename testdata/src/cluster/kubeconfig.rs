//! Kubeconfig files for simulated clusters: one context per cluster, each with the cluster's CA
//! (`certificate-authority-data`), its URL and a user's bearer token.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use base64::Engine as _;

use super::SimCluster;

/// One context of a kubeconfig.
#[derive(Debug, Clone)]
pub struct KubeconfigEntry {
    /// The context name (also the cluster entry's name).
    pub context: String,
    /// The API server URL.
    pub server: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The user entry's name.
    pub user: String,
    /// The user's bearer token.
    pub token: String,
}

/// Writes a kubeconfig with one context per cluster, as its `admin` user; the first is the
/// current context.
pub fn write_kubeconfig(path: &Path, clusters: &[&SimCluster]) -> io::Result<()> {
    let entries: Vec<KubeconfigEntry> = clusters.iter().map(|c| c.kubeconfig_entry("admin")).collect();
    write_kubeconfig_entries(path, &entries)
}

/// Writes a kubeconfig with the given contexts (mode 0600: it holds tokens).
pub fn write_kubeconfig_entries(path: &Path, entries: &[KubeconfigEntry]) -> io::Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut text = String::from("apiVersion: v1\nkind: Config\n");
    if let Some(first) = entries.first() {
        let _ = writeln!(text, "current-context: {}", first.context);
    }
    text.push_str("clusters:\n");
    for e in entries {
        let _ = write!(
            text,
            "- name: {}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n",
            e.context,
            e.server,
            b64.encode(&e.ca_pem)
        );
    }
    text.push_str("users:\n");
    for e in entries {
        let _ = write!(text, "- name: {}\n  user:\n    token: {}\n", e.user, e.token);
    }
    text.push_str("contexts:\n");
    for e in entries {
        let _ = write!(text, "- name: {}\n  context:\n    cluster: {}\n    user: {}\n", e.context, e.context, e.user);
    }
    let mut options = std::fs::File::options();
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.create(true).write(true).truncate(true).open(path)?;
    io::Write::write_all(&mut file, text.as_bytes())
}
