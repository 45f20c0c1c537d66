//! The `TokenRequest` API (`POST .../serviceaccounts/NAME/token`, authentication.k8s.io/v1): a
//! short-lived token for a service account, as a real API server issues it. The cluster
//! remembers each one ([`ServiceAccountTokens`]), so that a test's registry can accept exactly
//! the tokens it issued and have not expired, as `OpenShift`'s registry accepts a service
//! account's token as a password.
//!
//! As the real server: the service account must exist (404), `expirationSeconds` defaults to
//! one hour and may not be under ten minutes (422), strict decoding applies. Unlike it: the
//! token is random, not a signed JWT, and it does not authenticate to this API server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::resources;
use super::server::Target;
use super::status::ApiError;
use super::{Shared, random_token};

/// The shortest lifetime a real API server issues.
const MIN_SECONDS: i64 = 600;
/// The lifetime when the request names none.
const DEFAULT_SECONDS: i64 = 3600;

/// One token the cluster issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The lifetime asked for (`spec.expirationSeconds`).
    pub expiration_seconds: i64,
    /// When it expires.
    pub expires: SystemTime,
    token: String,
}

/// The tokens a cluster issued; clones share them.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccountTokens {
    issued: Arc<Mutex<Vec<IssuedToken>>>,
    expired: Arc<std::sync::atomic::AtomicBool>,
}

impl ServiceAccountTokens {
    /// Every token issued so far, in order.
    #[must_use]
    pub fn issued(&self) -> Vec<IssuedToken> {
        self.issued.lock().expect("tokens").clone()
    }

    /// The token `token` names, when this cluster issued it and it has not expired.
    #[must_use]
    pub fn valid(&self, token: &str) -> Option<IssuedToken> {
        let issued = self.issued.lock().expect("tokens");
        issued.iter().find(|t| t.token == token && t.expires > SystemTime::now()).cloned()
    }

    /// From now on, tokens are issued already expired (`true`), or as asked (`false`).
    pub fn issue_expired(&self, expired: bool) {
        self.expired.store(expired, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Answers `POST .../serviceaccounts/NAME/token`.
pub fn create(shared: &Shared, target: &Target, body: &[u8]) -> Result<Value, ApiError> {
    if shared.read().get(resources::by_kind("ServiceAccount"), &target.namespace, &target.name).is_none() {
        return Err(ApiError::not_found(target.resource, &target.name));
    }
    let given: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))?;
    let request: TokenRequest = serde_json::from_value(given.clone())
        .map_err(|e| ApiError::bad_request(format!("TokenRequest cannot be handled: {e}")))?;
    if given["kind"] != "TokenRequest" || given["apiVersion"] != "authentication.k8s.io/v1" {
        return Err(ApiError::bad_request("the body must be an authentication.k8s.io/v1 TokenRequest".to_owned()));
    }
    let seconds = request.spec.expiration_seconds.unwrap_or(DEFAULT_SECONDS);
    if seconds < MIN_SECONDS {
        return Err(ApiError::invalid(
            target.resource,
            &target.name,
            "spec.expirationSeconds",
            &format!("Invalid value: {seconds}: "),
            "may not specify a duration less than 10 minutes",
        ));
    }
    let now = SystemTime::now();
    let expires = if shared.tokens.expired.load(std::sync::atomic::Ordering::SeqCst) {
        now - Duration::from_secs(1)
    } else {
        now + Duration::from_secs(seconds.unsigned_abs())
    };
    let token = random_token();
    shared.tokens.issued.lock().expect("tokens").push(IssuedToken {
        namespace: target.namespace.clone(),
        service_account: target.name.clone(),
        expiration_seconds: seconds,
        expires,
        token: token.clone(),
    });
    let stamp = Timestamp::try_from(expires).unwrap_or(Timestamp::UNIX_EPOCH).to_string();
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": target.name, "namespace": target.namespace, "creationTimestamp": super::store::now()},
        "spec": {"audiences": request.spec.audiences, "expirationSeconds": seconds},
        "status": {"token": token, "expirationTimestamp": stamp},
    }))
}
