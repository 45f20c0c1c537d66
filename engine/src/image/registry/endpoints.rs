//! The distribution API calls: manifests (capped, with their media type), blobs (resumed
//! with `Range` after a broken connection), uploads (one streamed `PUT`), cross-repository
//! mounts, and listings (paged, with an end to endless pages).

#[allow(clippy::wildcard_imports, reason = "one type's methods, split by concern across files")]
use super::*;

impl Registry {
    /// GETs a JSON list page by page, following `Link: <...>; rel="next"` on this registry's
    /// own origin; each page is read with a cap, and the whole list is capped too: in entries,
    /// in pages (empty pages would otherwise cost nothing), and a page asked for twice ends the
    /// listing (a `next` link that leads back would loop forever).
    async fn paged_list(
        &self,
        repository: &str,
        first: String,
        field: &str,
        what: &str,
    ) -> Result<Vec<String>, ImageError> {
        const PAGE_CAP: usize = 8 << 20;
        let mut next = Some(first);
        let mut items = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(url) = next.take() {
            if seen.len() >= MAX_LIST_PAGES {
                return Err(ImageError::Invalid(format!(
                    "{what}: `{}` sent more than {MAX_LIST_PAGES} pages; the listing was abandoned",
                    self.host
                )));
            }
            if !seen.insert(url.clone()) {
                return Err(ImageError::Invalid(format!(
                    "{what}: `{}` links back to a page it already sent (`{url}`); the listing was abandoned",
                    self.host
                )));
            }
            let response = retry(what, || async {
                let response = self.send(repository, false, what, |http| http.get(&url)).await?;
                match response.status() {
                    StatusCode::OK => Ok(response),
                    StatusCode::NOT_FOUND => {
                        Err(ImageError::NotFound { what: format!("repository `{}/{repository}`", self.host) })
                    }
                    _ => Err(self.fail(what, response).await),
                }
            })
            .await?;
            next = response
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|link| {
                    link.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(u, _)| u.to_owned())
                })
                .and_then(|link| self.own_url(&link));
            let body = self.read_capped(response, PAGE_CAP + 1, what).await?;
            if body.len() > PAGE_CAP {
                return Err(ImageError::Invalid(format!(
                    "{what}: a page of more than {PAGE_CAP} bytes from `{}`",
                    self.host
                )));
            }
            let page: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                ImageError::Invalid(format!("{what}: `{}` answered something that is not JSON: {e}", self.host))
            })?;
            let page_items = page.get(field).and_then(|v| v.as_array()).map(Vec::as_slice).unwrap_or_default();
            items.extend(page_items.iter().filter_map(|v| v.as_str()).map(str::to_owned));
            if items.len() > MAX_LIST_ITEMS {
                return Err(ImageError::Invalid(format!(
                    "{what}: more than {MAX_LIST_ITEMS} entries from `{}`",
                    self.host
                )));
            }
        }
        Ok(items)
    }

    /// GET a manifest with a size cap; a digest reference is checked against the bytes.
    pub async fn manifest(
        &self,
        repository: &str,
        version: Option<&Version>,
        what: &str,
    ) -> Result<RawManifest, ImageError> {
        let reference = match version {
            Some(Version::Tag(tag)) => tag.clone(),
            Some(Version::Digest(digest)) => digest.to_string(),
            None => "latest".to_owned(),
        };
        let url = self.url(repository, &format!("manifests/{reference}"));
        let request_what = format!("GET manifest {repository}:{reference}");
        retry(&request_what, || async {
            let response = self
                .send(repository, false, &request_what, |http| {
                    http.get(&url).header(ACCEPT, manifest::ACCEPTED.join(", "))
                })
                .await?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => {
                    return Err(ImageError::NotFound {
                        what: format!("manifest `{reference}` in `{}/{repository}`", self.host),
                    });
                }
                _ => return Err(self.fail(&request_what, response).await),
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_default();
            if response.content_length().is_some_and(|n| n > self.max_manifest_bytes as u64) {
                return Err(ImageError::Manifest {
                    what: what.to_owned(),
                    problem: manifest::ManifestError::TooLarge { limit: self.max_manifest_bytes },
                });
            }
            let bytes = self.read_capped(response, self.max_manifest_bytes + 1, &request_what).await?;
            if bytes.len() > self.max_manifest_bytes {
                return Err(ImageError::Manifest {
                    what: what.to_owned(),
                    problem: manifest::ManifestError::TooLarge { limit: self.max_manifest_bytes },
                });
            }
            let media_type = content_type.split(';').next().unwrap_or_default().trim().to_owned();
            finish_manifest(what, Bytes::from(bytes), &media_type, version)
        })
        .await
    }

    /// Streams a blob from `offset` (a `Range` request past 0).
    pub async fn blob(&self, repository: &str, descriptor: &Descriptor, offset: u64) -> Result<BlobStream, ImageError> {
        let url = self.url(repository, &format!("blobs/{}", descriptor.digest));
        let what = format!("GET blob {}", descriptor.digest.short());
        let response = self
            .send(repository, false, &what, |http| {
                let request = http.get(&url);
                if offset > 0 { request.header(RANGE, format!("bytes={offset}-")) } else { request }
            })
            .await?;
        let skip = match response.status() {
            StatusCode::OK => offset,
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                // The range must start where we asked, or the bytes would land in the wrong place.
                let start = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(ImageError::Transport {
                        registry: self.host.clone(),
                        what,
                        detail: format!("asked for bytes from {offset}, got a range starting at {start:?}"),
                    });
                }
                0
            }
            StatusCode::NOT_FOUND => {
                return Err(ImageError::NotFound {
                    what: format!("blob {} in `{}/{repository}`", descriptor.digest, self.host),
                });
            }
            _ => return Err(self.fail(&what, response).await),
        };
        let mut skip = skip;
        let stream = self
            .body(&what, response)
            // A server that ignored `Range` sends from 0: drop what we already have.
            .map_ok(move |mut chunk: Bytes| {
                if skip > 0 {
                    let drop = skip.min(chunk.len() as u64) as usize;
                    skip -= drop as u64;
                    chunk = chunk.split_off(drop);
                }
                chunk
            })
            .try_filter(|chunk| std::future::ready(!chunk.is_empty()));
        Ok(Box::pin(stream))
    }

    /// HEAD a blob.
    pub async fn has_blob(&self, repository: &str, digest: &Digest) -> Result<bool, ImageError> {
        let url = self.url(repository, &format!("blobs/{digest}"));
        let what = format!("HEAD blob {}", digest.short());
        retry(&what, || async {
            let response = self.send(repository, false, &what, |http| http.head(&url)).await?;
            match response.status() {
                StatusCode::OK => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(self.fail(&what, response).await),
            }
        })
        .await
    }

    /// Cross-repository mount. `Ok(false)` when the registry declined (including a `202`
    /// "upload started instead", whose session is cancelled): the caller then copies.
    pub async fn mount(&self, repository: &str, from: &str, digest: &Digest) -> Result<bool, ImageError> {
        use std::sync::atomic::Ordering;
        if self.mounts_refused.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let url = format!("{}://{}/v2/{repository}/blobs/uploads/", self.scheme, self.api_host);
        let what = format!("mount {} from {from}", digest.short());
        let digest_text = digest.to_string();
        let response = self
            .send_once(repository, true, &what, |http| {
                http.post(&url).query(&[("mount", digest_text.as_str()), ("from", from)]).header(CONTENT_LENGTH, "0")
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // The registry opened an upload instead (it cannot mount, e.g. no read access to
                // `from`). Cancel it; the caller streams the blob.
                self.cancel_upload(repository, &response).await;
                Ok(false)
            }
            status => {
                if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                    self.mounts_refused.store(true, Ordering::Relaxed);
                }
                tracing::debug!(%status, "mount of {digest} declined by {}", self.host);
                Ok(false)
            }
        }
    }

    /// Uploads a blob: an upload session (`POST`), then one streamed `PUT` with the digest
    /// (chunked `PATCH`es would cost a request per network read).
    pub async fn put_blob(
        &self,
        repository: &str,
        descriptor: &Descriptor,
        stream: BlobStream,
    ) -> Result<(), ImageError> {
        let url = format!("{}://{}/v2/{repository}/blobs/uploads/", self.scheme, self.api_host);
        let what = format!("upload blob {}", descriptor.digest.short());
        let response = retry(&what, || async {
            let response =
                self.send(repository, true, &what, |http| http.post(&url).header(CONTENT_LENGTH, "0")).await?;
            if response.status() == StatusCode::ACCEPTED { Ok(response) } else { Err(self.fail(&what, response).await) }
        })
        .await?;
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let Some(location) = self.own_url(location) else {
            return Err(ImageError::Transport {
                registry: self.host.clone(),
                what,
                detail: "the registry named no upload location on its own origin".into(),
            });
        };
        let mut location = reqwest::Url::parse(&location).map_err(|e| ImageError::Transport {
            registry: self.host.clone(),
            what: what.clone(),
            detail: e.to_string(),
        })?;
        location.query_pairs_mut().append_pair("digest", &descriptor.digest.to_string());
        let mut request = self
            .http
            .put(location)
            .header(CONTENT_LENGTH, descriptor.size)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(value) = self.authorization(repository, true).await? {
            request = request.header(AUTHORIZATION, value);
        }
        let response = request.send().await.map_err(|e| self.transport(&what, &e))?;
        match response.status() {
            StatusCode::CREATED => Ok(()),
            _ => Err(self.fail(&what, response).await),
        }
    }

    /// PUT a manifest by digest, or by tag.
    pub async fn put_manifest(
        &self,
        repository: &str,
        manifest: &RawManifest,
        tag: Option<&str>,
    ) -> Result<(), ImageError> {
        let reference = match tag {
            Some(tag) => tag.to_owned(),
            None => manifest.digest.to_string(),
        };
        let content_type = HeaderValue::from_str(&manifest.media_type)
            .map_err(|_| ImageError::Invalid(format!("media type `{}` cannot be sent", manifest.media_type)))?;
        let url = self.url(repository, &format!("manifests/{reference}"));
        let what = format!("PUT manifest {repository}:{reference}");
        retry(&what, || async {
            let response = self
                .send(repository, true, &what, |http| {
                    http.put(&url).header(CONTENT_TYPE, content_type.clone()).body(manifest.bytes.clone())
                })
                .await?;
            match response.status() {
                StatusCode::CREATED | StatusCode::OK => Ok(()),
                _ => Err(self.fail(&what, response).await),
            }
        })
        .await
    }

    /// Preflight: the registry answers and accepts our credentials for reading `repository`
    /// (which must exist), or for pushing into it (an upload is started and cancelled at once).
    pub async fn check_access(&self, repository: &str, push: bool) -> Result<(), ImageError> {
        if push {
            let url = format!("{}://{}/v2/{repository}/blobs/uploads/", self.scheme, self.api_host);
            let what = format!("start an upload to {repository}");
            let response = retry(&what, || async {
                self.send(repository, true, &what, |http| http.post(&url).header(CONTENT_LENGTH, "0")).await
            })
            .await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(self.fail(&what, response).await);
            }
            self.cancel_upload(repository, &response).await;
            return Ok(());
        }
        let url = self.url(repository, "tags/list?n=1");
        let what = format!("list tags of {repository}");
        let response =
            retry(&what, || async { self.send(repository, false, &what, |http| http.get(&url)).await }).await?;
        match response.status() {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => {
                Err(ImageError::NotFound { what: format!("repository `{}/{repository}`", self.host) })
            }
            _ => Err(self.fail(&what, response).await),
        }
    }

    /// All tags of a repository (every page).
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, ImageError> {
        let first = self.url(repository, "tags/list?n=1000");
        let mut tags: Vec<String> = self
            .paged_list(repository, first, "tags", &format!("list tags of {repository}"))
            .await?
            .into_iter()
            .filter(|t| super::super::reference::valid_tag(t))
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Repositories of the registry whose names start with `prefix/` (the catalog API, every
    /// page). On token-authenticated registries the catalog needs a `registry:catalog:*` token,
    /// which is not requested: use `sync` per repository there.
    pub async fn repositories(&self, prefix: &str) -> Result<Vec<String>, ImageError> {
        let first = format!("{}://{}/v2/_catalog?n=1000", self.scheme, self.api_host);
        let wanted = format!("{prefix}/");
        let mut found: Vec<String> = self
            .paged_list(prefix, first, "repositories", "list repositories (catalog)")
            .await?
            .into_iter()
            .filter(|r| r.starts_with(&wanted) && super::super::reference::valid_repository(r))
            .collect();
        found.sort();
        found.dedup();
        Ok(found)
    }
}
