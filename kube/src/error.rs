//! What can go wrong talking to a cluster. Every message says which cluster, what mover was
//! doing and, where there is one, what to do about it.

use crate::claims::ClaimError;

/// A failure of the Kubernetes layer.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig or the in-cluster configuration cannot give a client.
    #[error("{0}")]
    Config(String),
    /// A claim cannot be copied as it is.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// An API request failed.
    #[error("{doing} (context `{context}`): {}", api_message(.source))]
    Api {
        /// The context.
        context: String,
        /// What mover was doing: "creating pod `x` in namespace `app`".
        doing: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The images of a plan's namespaces cannot be found or reached (the message says what to do).
    #[error("{0}")]
    Images(String),
    /// Something mover waits for did not happen in time.
    #[error("{0}")]
    Timeout(String),
}

impl KubeError {
    /// An API failure while `doing` in `context`.
    pub fn api(context: &str, doing: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
        let (context, doing) = (context.to_owned(), doing.into());
        move |source| KubeError::Api { context, doing, source }
    }

    /// The HTTP status of an API failure the server answered.
    #[must_use]
    pub fn status_code(&self) -> Option<u16> {
        match self {
            KubeError::Api { source: kube::Error::Api(status), .. } => Some(status.code),
            _ => None,
        }
    }
}

/// The server's own words for an API error (its `Status` message names the verb and resource
/// of a 403), with the code; the client's for anything else.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let hint = match status.code {
                403 => {
                    "; the identity in the kubeconfig lacks this permission (`mover k8s manifests` prints the roles mover needs)"
                }
                401 => "; the kubeconfig's credentials were refused (expired token?)",
                _ => "",
            };
            format!("{} (HTTP {} {}){hint}", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}
