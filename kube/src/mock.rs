//! Request-sequence tests: a [`Cluster`] whose client talks to a `tower_test` mock, and a
//! script of the exact requests it must make (kube's documented testing pattern). A request
//! out of order fails the test; a missing one times out.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

use crate::context::Cluster;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The server side of a mocked cluster.
pub(crate) struct Server {
    handle: Handle,
}

/// A cluster called `context` whose every request the returned [`Server`] answers.
pub(crate) fn cluster(context: &str) -> (Cluster, Server) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (Cluster { context: context.to_owned(), client }, Server { handle })
}

impl Server {
    /// Waits for the next request, checks its method and path (with query, if `path` has one),
    /// answers `status` with `body`, and returns the request's JSON body (`Null` if none).
    pub(crate) async fn expect(&mut self, method: &str, path: &str, status: u16, body: Value) -> Value {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .expect("the client is gone");
        let uri = request.uri().clone();
        let seen = if path.contains('?') { uri.path_and_query().unwrap().as_str() } else { uri.path() };
        assert_eq!((request.method().as_str(), seen), (method, path), "unexpected request {uri}");
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let request_body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap();
        send.send_response(response);
        request_body
    }

    /// Answers the next request, which must be `method path`, with a 404 `Status`.
    pub(crate) async fn not_found(&mut self, method: &str, path: &str, what: &str) {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("{what} not found"), "reason": "NotFound", "code": 404
        });
        self.expect(method, path, 404, status).await;
    }
}
