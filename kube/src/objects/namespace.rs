//! The migration namespace, labelled with the Pod Security level its agents need.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Strategy;
use super::labels::MANAGED_BY;

/// The namespace mover installs into unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "mover-system";

/// The Pod Security Admission modes, each labelled with the same level.
const POD_SECURITY_MODES: [&str; 3] = ["enforce", "audit", "warn"];

impl Strategy {
    /// The Pod Security level the strategy's agents need: `baseline` for transfer pods,
    /// `privileged` for the node `DaemonSet` (hostPath and a privileged container).
    #[must_use]
    pub fn pod_security_level(self) -> &'static str {
        match self {
            Strategy::Pod => "baseline",
            Strategy::Node => "privileged",
        }
    }
}

/// The migration namespace `name`, with `pod-security.kubernetes.io/{enforce,audit,warn}` at
/// the strategy's level.
#[must_use]
pub fn namespace(name: &str, strategy: Strategy) -> Namespace {
    let mut labels = BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())]);
    for mode in POD_SECURITY_MODES {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), strategy.pod_security_level().to_owned());
    }
    Namespace {
        metadata: ObjectMeta { name: Some(name.to_owned()), labels: Some(labels), ..ObjectMeta::default() },
        spec: None,
        status: None,
    }
}
