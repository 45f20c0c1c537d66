//! The Secret holding a migration's agent identity: `ca.crt`, `agent.crt` and `agent.key`, and
//! nothing else (`ca.key` and the coordinator's key never leave the coordinator's machine).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::labels::Migration;

/// The keys of an identity Secret, which are the file names the agent's `--certs` reads.
pub const IDENTITY_KEYS: [&str; 3] = ["ca.crt", "agent.crt", "agent.key"];

/// The name of the migration's identity Secret: `mover-<id>-identity`.
#[must_use]
pub fn identity_secret_name(migration: &Migration) -> String {
    format!("mover-{}-identity", migration.id)
}

/// The migration's identity Secret in `namespace`, immutable: a new migration gets a new one.
#[must_use]
pub fn identity_secret(
    migration: &Migration,
    namespace: &str,
    ca_crt: &[u8],
    agent_crt: &[u8],
    agent_key: &[u8],
) -> Secret {
    let data = IDENTITY_KEYS
        .into_iter()
        .zip([ca_crt, agent_crt, agent_key])
        .map(|(key, bytes)| (key.to_owned(), ByteString(bytes.to_vec())))
        .collect::<BTreeMap<_, _>>();
    Secret {
        metadata: ObjectMeta {
            name: Some(identity_secret_name(migration)),
            namespace: Some(namespace.to_owned()),
            labels: Some(migration.labels()),
            annotations: Some(migration.annotations()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        immutable: Some(true),
        data: Some(data),
        string_data: None,
    }
}
