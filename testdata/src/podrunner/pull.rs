//! The pull of an image whose repository names a real registry ([`super::Image::pulled`]): before
//! a container of it runs, the kubelet asks that registry (plain HTTP, on loopback) for the
//! reference's manifest, as a real kubelet pulls it, and fails with `ErrImagePull` when the
//! registry does not hold it or cannot be reached. Nothing is downloaded: the container still runs
//! the image's local program.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::pods::StartError;

/// What a `HEAD` on a manifest accepts: the OCI and Docker manifests and indexes.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.docker.distribution.manifest.v2+json";

/// Checks that the registry named by `reference` (`HOST:PORT/PATH[:TAG][@DIGEST]`) holds its
/// manifest.
pub(crate) fn check(reference: &str) -> Result<(), StartError> {
    let failed = |why: String| StartError {
        reason: "ErrImagePull".to_owned(),
        message: format!("Failed to pull image \"{reference}\": {why}"),
    };
    let (host, rest) = reference.split_once('/').ok_or_else(|| failed("the reference names no registry".to_owned()))?;
    let (path, manifest) = if let Some((name, digest)) = rest.split_once('@') {
        (super::images::repository(name).to_owned(), digest.to_owned())
    } else {
        let path = super::images::repository(rest);
        let tag = rest.get(path.len() + 1..).filter(|t| !t.is_empty()).unwrap_or("latest");
        (path.to_owned(), tag.to_owned())
    };
    let status = head(host, &format!("/v2/{path}/manifests/{manifest}"))
        .map_err(|e| failed(format!("cannot reach the registry at {host}: {e}")))?;
    match status {
        200 => Ok(()),
        404 => Err(failed(format!("manifest unknown: {host} holds no `{path}:{manifest}`"))),
        code => Err(failed(format!("the registry at {host} answered HTTP {code}"))),
    }
}

/// The status code of a plain-HTTP `HEAD` of `target` at `host`.
fn head(host: &str, target: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "HEAD {target} HTTP/1.1\r\nHost: {host}\r\nAccept: {ACCEPT}\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&answer) {
        Ok(_) => response.code.ok_or_else(|| std::io::Error::other("no status line in the answer")),
        Err(e) => Err(std::io::Error::other(format!("an answer that is not HTTP: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_registry_is_an_image_pull_error_naming_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let error = check(&format!("127.0.0.1:{port}/mover/mover-agent:1.0")).unwrap_err();
        assert_eq!(error.reason, "ErrImagePull");
        assert!(error.message.contains(&format!("cannot reach the registry at 127.0.0.1:{port}")), "{}", error.message);
        let error = check("no-registry-named").unwrap_err();
        assert!(error.message.contains("names no registry"), "{}", error.message);
    }
}
