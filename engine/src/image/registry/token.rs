//! The `Authorization` header of our requests: the registry's challenge (`GET /v2/`), a bearer
//! token from its token service (with our Basic credentials when we have some), the user's own
//! token, or Basic credentials; tokens are reused for a while per repository and direction.

#[allow(clippy::wildcard_imports, reason = "one type's methods, split by concern across files")]
use super::*;

impl Registry {
    /// The `Authorization` header for our own requests: a bearer token from the registry's
    /// challenge flow (run by oci-client), the user's token, or Basic credentials.
    pub(super) async fn authorization(&self, repository: &str, push: bool) -> Result<Option<HeaderValue>, ImageError> {
        let key = (repository.to_owned(), push);
        if let Some((value, when)) = self.authorizations.lock().expect("lock").get(&key)
            && when.elapsed() < TOKEN_REUSE
        {
            return Ok(value.clone());
        }
        let value = match &self.credentials {
            Credentials::Token(token) => Some(format!("Bearer {token}")),
            // Not retried here: the request this authorizes is retried as a whole.
            credentials => match self.challenge().await? {
                Challenge::Bearer { realm, service } => {
                    Some(format!("Bearer {}", self.token(&realm, service.as_deref(), repository, push).await?))
                }
                Challenge::Basic | Challenge::None => match credentials {
                    Credentials::Basic { user, password } => {
                        use base64::Engine;
                        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                        Some(format!("Basic {pair}"))
                    }
                    _ => None,
                },
            },
        };
        let value = value
            .map(|text| {
                let mut value = HeaderValue::from_str(&text).map_err(|_| {
                    ImageError::Invalid(format!("credentials for `{}` contain characters HTTP cannot carry", self.host))
                })?;
                value.set_sensitive(true);
                Ok::<_, ImageError>(value)
            })
            .transpose()?;
        self.authorizations.lock().expect("lock").insert(key, (value.clone(), Instant::now()));
        Ok(value)
    }

    pub(super) fn forget_authorization(&self, repository: &str, push: bool) {
        self.authorizations.lock().expect("lock").remove(&(repository.to_owned(), push));
    }

    /// What `GET /v2/` asks of clients: which authentication, and where to get a token.
    async fn challenge(&self) -> Result<Challenge, ImageError> {
        let url = format!("{}://{}/v2/", self.scheme, self.api_host);
        let what = "GET /v2/ (authentication challenge)";
        let response = self.timed_send(what, self.http.get(&url)).await?;
        let header = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        Ok(Challenge::parse(header))
    }

    /// A bearer token from the registry's token service, for pulling (and pushing) `repository`,
    /// obtained with our Basic credentials when we have some.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        push: bool,
    ) -> Result<String, ImageError> {
        #[derive(serde::Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
        }
        let scope = format!("repository:{repository}:{}", if push { "pull,push" } else { "pull" });
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let what = "get a token (authentication)";
        let mut request = self.http.get(realm).query(&query);
        if let Credentials::Basic { user, password } = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = self.timed_send(what, request).await?;
        if response.status() != StatusCode::OK {
            let body = self.read_capped(response, 4096, what).await.unwrap_or_default();
            let detail = gist(&body);
            return Err(ImageError::Unauthorized {
                registry: self.host.clone(),
                detail: if detail.is_empty() { String::new() } else { format!(" ({detail})") },
            });
        }
        let body = self.read_capped(response, 1 << 20, what).await?;
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
            ImageError::Invalid(format!(
                "the token service of `{}` answered something that is not a token: {e}",
                self.host
            ))
        })?;
        reply.token.or(reply.access_token).ok_or_else(|| {
            ImageError::Invalid(format!("the token service of `{}` answered without a token", self.host))
        })
    }
}

/// The authentication a registry asks for in `WWW-Authenticate`.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    /// None: anonymous access works.
    None,
    /// HTTP Basic.
    Basic,
    /// The token flow: a token from `realm` for `service`.
    Bearer { realm: String, service: Option<String> },
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…",scope="…"` (quoted values may hold commas) or
    /// `Basic realm="…"`.
    fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::None;
        }
        let mut realm = None;
        let mut service = None;
        let mut rest = params.trim();
        while let Some((key, after)) = rest.split_once('=') {
            let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, next) = match after.strip_prefix('"') {
                Some(quoted) => match quoted.split_once('"') {
                    Some((value, next)) => (value, next),
                    None => (quoted, ""),
                },
                None => after.split_once(',').unwrap_or((after, "")),
            };
            match key.as_str() {
                "realm" => realm = Some(value.to_owned()),
                "service" => service = Some(value.to_owned()),
                _ => {}
            }
            rest = next.trim_start().trim_start_matches(',');
        }
        match realm {
            Some(realm) => Challenge::Bearer { realm, service },
            None => Challenge::None,
        }
    }
}
