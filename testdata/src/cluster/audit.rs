//! The request log (every request, as RBAC names it, with the answer's code: the input of the
//! RBAC audit test) and the faults tests inject through the Rust API.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// One request as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// The authenticated user (`system:anonymous` without a valid token).
    pub user: String,
    /// The RBAC verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// The API group (`""` for core).
    pub api_group: String,
    /// The resource (plural), empty for non-resource paths.
    pub resource: String,
    /// The subresource (`status`, `log`), or empty.
    pub subresource: String,
    /// The namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// The object name, empty for collections.
    pub name: String,
    /// The HTTP status code answered.
    pub code: u16,
}

/// Records requests in memory and as JSON lines in a file.
pub struct Audit {
    requests: Mutex<Vec<Request>>,
    file: Mutex<File>,
}

impl Audit {
    /// Appends to (creating) `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Audit { requests: Mutex::new(Vec::new()), file: Mutex::new(file) })
    }

    /// Records one request.
    pub fn record(&self, request: Request) {
        if let Ok(mut line) = serde_json::to_vec(&request) {
            line.push(b'\n');
            // The log is best effort: a full disk must not fail the request being answered.
            let _ = self.file.lock().expect("audit file").write_all(&line);
        }
        self.requests.lock().expect("audit log").push(request);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("audit log").clone()
    }
}

#[derive(Default)]
struct FaultState {
    forbidden: Vec<(String, String, String)>,
    drop_watches_after: Option<usize>,
    delay: Duration,
}

/// Faults to inject; all off at start.
#[derive(Default)]
pub struct Faults(Mutex<FaultState>);

impl Faults {
    /// Answers `user`'s `verb` on `resource` (`pods`, or `pods/log` for a subresource) with 403,
    /// in every namespace.
    pub fn forbid(&self, user: &str, verb: &str, resource: &str) {
        self.0.lock().expect("faults").forbidden.push((user.to_owned(), verb.to_owned(), resource.to_owned()));
    }

    /// Lifts every [`Faults::forbid`].
    pub fn allow_all(&self) {
        self.0.lock().expect("faults").forbidden.clear();
    }

    /// Ends every watch connection (without a closing event) after it has sent `events` events;
    /// `None` lets them run.
    pub fn drop_watches_after(&self, events: Option<usize>) {
        self.0.lock().expect("faults").drop_watches_after = events;
    }

    /// Delays every answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.0.lock().expect("faults").delay = delay;
    }

    pub(crate) fn is_forbidden(&self, user: &str, verb: &str, resource: &str) -> bool {
        self.0.lock().expect("faults").forbidden.iter().any(|(u, v, r)| u == user && v == verb && r == resource)
    }

    pub(crate) fn watch_limit(&self) -> Option<usize> {
        self.0.lock().expect("faults").drop_watches_after
    }

    pub(crate) fn delay(&self) -> Duration {
        self.0.lock().expect("faults").delay
    }
}
