//! Tests of the simulated cluster through a real `kube::Client` over TLS, with a test [`Pods`]
//! that runs each pod's first container command as a plain local process.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, DynamicObject, Status};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{SimCluster, write_kubeconfig_entries};
use crate::pods::{PodProcess, PodStart, Pods, StartError};

/// Runs `command` (+`args`) of each pod's first container; image `missing` fails to start.
#[derive(Default)]
pub(super) struct TestPods {
    next_ip: AtomicU8,
    pub(super) started: Mutex<BTreeMap<String, BTreeMap<String, PathBuf>>>,
    stopped: Arc<Mutex<Vec<String>>>,
}

struct TestProcess {
    child: Child,
    ip: Ipv4Addr,
    code: Option<i32>,
    name: String,
    stopped: Arc<Mutex<Vec<String>>>,
}

impl Pods for TestPods {
    fn start(&self, start: PodStart<'_>) -> Result<Box<dyn PodProcess>, StartError> {
        let spec = start.pod.spec.as_ref().expect("a pod spec");
        let container = &spec.containers[0];
        if container.image.as_deref() == Some("missing") {
            return Err(StartError {
                reason: "ErrImagePull".to_owned(),
                message: "image \"missing\" is not in the test registry".to_owned(),
            });
        }
        let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
        argv.extend(container.args.clone().unwrap_or_default());
        let log = std::fs::File::create(start.log_dir.join(format!("{}.log", container.name))).expect("a log file");
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .map_err(|e| StartError { reason: "RunContainerError".to_owned(), message: e.to_string() })?;
        let name = start.pod.metadata.name.clone().unwrap_or_default();
        self.started.lock().unwrap().insert(name.clone(), start.volumes);
        let ip = Ipv4Addr::new(127, 0, 0, 2 + self.next_ip.fetch_add(1, Ordering::SeqCst));
        Ok(Box::new(TestProcess { child, ip, code: None, name, stopped: self.stopped.clone() }))
    }
}

impl PodProcess for TestProcess {
    fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    fn try_wait(&mut self) -> Option<i32> {
        if self.code.is_none() {
            self.code = self.child.try_wait().ok().flatten().map(|s| s.code().unwrap_or(137));
        }
        self.code
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped.lock().unwrap().push(self.name.clone());
    }
}

/// The cluster is declared first so that it stops (unmounting its kubelet root) before the
/// temporary directory is removed.
pub(super) struct Fixture {
    pub(super) cluster: SimCluster,
    pub(super) dir: TempDir,
    pub(super) client: Client,
    pub(super) pods: Arc<TestPods>,
}

pub(super) async fn client_as(cluster: &SimCluster, user: &str, dir: &Path) -> Client {
    let path = dir.join(format!("kubeconfig-{user}"));
    write_kubeconfig_entries(&path, &[cluster.kubeconfig_entry(user)]).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let options = KubeConfigOptions { context: Some(cluster.name().to_owned()), ..KubeConfigOptions::default() };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options).await.unwrap();
    Client::try_from(config).unwrap()
}

/// A cluster with namespace `app`, or `None` (the test is skipped, saying why) when not root:
/// the simulated kubelet mounts claims.
pub(super) async fn fixture() -> Option<Fixture> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the simulated cluster's kubelet bind-mounts claims, which needs root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let pods = Arc::new(TestPods::default());
    let cluster = SimCluster::start("source", &dir.path().join("cluster"), pods.clone()).unwrap();
    let client = client_as(&cluster, "admin", dir.path()).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap())
        .await
        .unwrap();
    Some(Fixture { cluster, dir, client, pods })
}

/// The `Status` of a `kube::Error::Api`.
fn status_of<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Polls `probe` until it gives `Some`, for at most 10 s.
pub(super) async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut probe: impl FnMut() -> F) -> T {
    for _ in 0..200 {
        if let Some(value) = probe().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub(super) fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

pub(super) fn pod(name: &str, command: &[&str], extra: &Value) -> Pod {
    let mut pod = json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": "busybox:1", "command": command}]},
    });
    json_patch::merge(&mut pod, extra);
    from(pod)
}

/// Where the kubelet mounts CSI volume `pv` of the pod with `uid`.
pub(super) fn csi_mount(cluster: &SimCluster, uid: &str, pv: &str) -> PathBuf {
    cluster.kubelet_root().join(format!("pods/{uid}/volumes/kubernetes.io~csi/{pv}/mount"))
}

/// The mount points under `dir` in this process's mount namespace (the host's).
pub(super) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(PathBuf::from))
        .filter(|mount| mount.starts_with(dir))
        .collect()
}

pub(super) fn claim(name: &str, class: &str, mode: &str) -> PersistentVolumeClaim {
    from(json!({"metadata": {"name": name}, "spec": {"storageClassName": class, "accessModes": [mode],
        "resources": {"requests": {"storage": "1Gi"}}}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_update_delete_round_trip_with_real_status_bodies() {
    let Some(f) = fixture().await else { return };
    let maps: Api<ConfigMap> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    let made = maps
        .create(&pp, &from(json!({"metadata": {"name": "one", "labels": {"tier": "a"}}, "data": {"k": "v"}})))
        .await
        .unwrap();
    assert!(made.metadata.uid.is_some() && made.metadata.creation_timestamp.is_some());
    let generated = maps.create(&pp, &from(json!({"metadata": {"generateName": "gen-"}}))).await.unwrap();
    let generated_name = generated.metadata.name.unwrap();
    assert!(generated_name.starts_with("gen-") && generated_name.len() == 9, "{generated_name}");

    let again = status_of(maps.create(&pp, &made).await);
    assert_eq!((again.code, again.reason.as_str()), (500, "InternalError"), "a resourceVersion on create is refused");
    let mut fresh = made.clone();
    fresh.metadata.resource_version = None;
    let exists = status_of(maps.create(&pp, &fresh).await);
    assert_eq!(
        (exists.code, exists.reason.as_str(), exists.message.as_str()),
        (409, "AlreadyExists", "configmaps \"one\" already exists")
    );

    assert_eq!(maps.get("one").await.unwrap().data.unwrap()["k"], "v");
    let listed = maps.list(&ListParams::default().labels("tier in (a, b)")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(maps.list(&ListParams::default().labels("tier!=a")).await.unwrap().items.len(), 1);
    assert_eq!(maps.list(&ListParams::default().fields("metadata.name=one")).await.unwrap().items.len(), 1);

    let mut changed = made.clone();
    changed.data = Some([("k".to_owned(), "w".to_owned())].into());
    let updated = maps.replace("one", &pp, &changed).await.unwrap();
    assert_ne!(updated.metadata.resource_version, made.metadata.resource_version);
    let conflict = status_of(maps.replace("one", &pp, &changed).await);
    assert_eq!(conflict.code, 409);
    assert_eq!(conflict.reason, "Conflict");
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on configmaps \"one\": the object has been modified; please apply your changes \
         to the latest version and try again"
    );
    let patched = maps.patch("one", &PatchParams::default(), &Patch::Merge(json!({"data": {"p": "q"}}))).await.unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);
    let json_patched: ConfigMap = maps
        .patch("one", &PatchParams::default(), &Patch::<()>::Json(from(json!([{"op": "remove", "path": "/data/p"}]))))
        .await
        .unwrap();
    assert_eq!(json_patched.data.unwrap().len(), 1);
    let apply = status_of(maps.patch("one", &PatchParams::apply("test"), &Patch::Apply(json!({}))).await);
    assert_eq!(apply.code, 415);

    maps.delete("one", &DeleteParams::default()).await.unwrap();
    let missing = status_of(maps.get("one").await);
    assert_eq!(
        (missing.code, missing.reason.as_str(), missing.message.as_str()),
        (404, "NotFound", "configmaps \"one\" not found")
    );
    assert_eq!(missing.details.unwrap().name, "one");
    assert_eq!(status_of(maps.delete("one", &DeleteParams::default()).await).code, 404);
    let deleted = maps.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    assert_eq!(deleted.left().unwrap().items.len(), 1);

    let elsewhere: Api<ConfigMap> = Api::namespaced(f.client.clone(), "nowhere");
    let mismatch = status_of(elsewhere.create(&pp, &fresh).await);
    assert_eq!(
        (mismatch.code, mismatch.message.as_str()),
        (400, "the namespace of the provided object does not match the namespace sent on the request")
    );
    let no_namespace = status_of(elsewhere.create(&pp, &from(json!({"metadata": {"name": "x"}}))).await);
    assert_eq!((no_namespace.code, no_namespace.message.as_str()), (404, "namespaces \"nowhere\" not found"));

    let log = f.cluster.requests();
    let seen =
        |verb: &str, code: u16| log.iter().any(|r| r.verb == verb && r.resource == "configmaps" && r.code == code);
    for (verb, code) in [
        ("create", 201),
        ("create", 409),
        ("get", 200),
        ("get", 404),
        ("list", 200),
        ("update", 409),
        ("patch", 200),
        ("patch", 415),
        ("delete", 200),
        ("deletecollection", 200),
    ] {
        assert!(seen(verb, code), "no {verb} answered {code} in {log:#?}");
    }
    let lines = std::fs::read_to_string(f.cluster.dir().join("audit.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), log.len());
    assert!(
        lines.contains(r#""user":"admin","verb":"deletecollection","apiGroup":"","resource":"configmaps""#),
        "{lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_decoding_names_and_immutable_claims_are_refused_as_the_real_server_does() {
    let Some(f) = fixture().await else { return };
    let resource = ApiResource::erase::<Pod>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(f.client.clone(), "app", &resource);
    let bogus = DynamicObject::new("p", &resource)
        .data(json!({"spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}], "alsoBogus": true}}));
    let unknown = status_of(dynamic.create(&PostParams::default(), &bogus).await);
    assert_eq!((unknown.code, unknown.reason.as_str()), (400, "BadRequest"));
    assert_eq!(
        unknown.message,
        "strict decoding error: unknown field \"spec.alsoBogus\", unknown field \"spec.containers[0].bogus\""
    );
    let wrong_type = DynamicObject::new("p", &resource).data(json!({"spec": {"containers": "c"}}));
    let wrong = status_of(dynamic.create(&PostParams::default(), &wrong_type).await);
    assert_eq!(wrong.code, 400);
    assert!(wrong.message.starts_with("Pod in version \"v1\" cannot be handled as a Pod: "), "{}", wrong.message);

    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let invalid = status_of(pods.create(&PostParams::default(), &pod("Bad_Name", &["true"], &json!({}))).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(
        invalid.message.starts_with(
            "Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
        ),
        "{}",
        invalid.message
    );
    let patch =
        status_of(pods.patch("nope", &PatchParams::default(), &Patch::Merge(json!({"spec": {"bogus": 1}}))).await);
    assert_eq!(patch.code, 404);

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client.clone(), "app");
    claims.create(&PostParams::default(), &claim("data", "fast", "ReadWriteOnce")).await.unwrap();
    let grow = Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}}));
    claims.patch("data", &PatchParams::default(), &grow).await.unwrap();
    let modes = Patch::Merge(json!({"spec": {"accessModes": ["ReadWriteMany"]}}));
    let immutable = status_of(claims.patch("data", &PatchParams::default(), &modes).await);
    assert_eq!((immutable.code, immutable.reason.as_str()), (422, "Invalid"));
    assert!(
        immutable.message.contains("spec is immutable after creation except resources.requests"),
        "{}",
        immutable.message
    );
    let unknown_in_patch =
        status_of(claims.patch("data", &PatchParams::default(), &Patch::Merge(json!({"spec": {"bogus": 1}}))).await);
    assert_eq!(unknown_in_patch.message, "strict decoding error: unknown field \"spec.bogus\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_verb_is_a_403_naming_user_verb_resource_and_namespace() {
    let Some(f) = fixture().await else { return };
    f.cluster.faults().forbid("mover-coordinator", "create", "pods");
    f.cluster.faults().forbid("mover-coordinator", "list", "nodes");
    let client = client_as(&f.cluster, "mover-coordinator", f.dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "app");
    let refused = status_of(pods.create(&PostParams::default(), &pod("p", &["true"], &json!({}))).await);
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        refused.message,
        "pods is forbidden: User \"mover-coordinator\" cannot create resource \"pods\" in API group \"\" in the namespace \"app\""
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let cluster_scope = status_of(nodes.list(&ListParams::default()).await);
    assert_eq!(
        cluster_scope.message,
        "nodes is forbidden: User \"mover-coordinator\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
    );
    assert!(pods.list(&ListParams::default()).await.unwrap().items.is_empty(), "other verbs are allowed");
    f.cluster.faults().set_delay(Duration::from_millis(400));
    let started = std::time::Instant::now();
    pods.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400), "the delay fault delays answers");
    f.cluster.faults().set_delay(Duration::ZERO);
    let admin: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    admin.create(&PostParams::default(), &pod("p", &["true"], &json!({}))).await.unwrap();
    assert!(f.cluster.requests().iter().any(|r| r.user == "mover-coordinator" && r.verb == "create" && r.code == 403));

    let path = f.dir.path().join("kubeconfig-stranger");
    let mut stranger = f.cluster.kubeconfig_entry("admin");
    stranger.token = "not-a-token".to_owned();
    write_kubeconfig_entries(&path, &[stranger]).unwrap();
    let config = Config::from_custom_kubeconfig(Kubeconfig::read_from(&path).unwrap(), &KubeConfigOptions::default())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(Client::try_from(config).unwrap(), "app");
    let unauthorized = status_of(pods.list(&ListParams::default()).await);
    assert_eq!((unauthorized.code, unauthorized.reason.as_str()), (401, "Unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_from_a_version_and_a_compacted_version_is_410_expired() {
    let Some(f) = fixture().await else { return };
    let maps: Api<ConfigMap> = Api::namespaced(f.client.clone(), "app");
    let first = maps.create(&PostParams::default(), &from(json!({"metadata": {"name": "a"}}))).await.unwrap();
    let since = first.metadata.resource_version.clone().unwrap();
    maps.create(&PostParams::default(), &from(json!({"metadata": {"name": "b"}}))).await.unwrap();
    maps.delete("a", &DeleteParams::default()).await.unwrap();
    let events: Vec<WatchEvent<ConfigMap>> =
        maps.watch(&WatchParams::default().timeout(1), &since).await.unwrap().try_collect().await.unwrap();
    let seen: Vec<String> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.clone().unwrap()),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.name.clone().unwrap()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(seen, ["ADDED b", "DELETED a"]);

    let bookmarks: Vec<WatchEvent<ConfigMap>> = maps
        .watch(&WatchParams::default().timeout(3).labels("none=here"), "0")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(matches!(bookmarks.as_slice(), [WatchEvent::Bookmark(_), ..]), "{bookmarks:?}");

    f.cluster.compact();
    let mut stream = maps.watch(&WatchParams::default().timeout(5), &since).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(error)) => {
            assert_eq!((error.code, error.reason.as_str()), (410, "Expired"));
            assert!(error.message.starts_with(&format!("too old resource version: {since} (")), "{}", error.message);
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(f.cluster.requests().iter().any(|r| r.verb == "watch" && r.resource == "configmaps"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_recovers_from_dropped_watch_connections() {
    let Some(f) = fixture().await else { return };
    f.cluster.faults().drop_watches_after(Some(2));
    let maps: Api<ConfigMap> = Api::namespaced(f.client.clone(), "app");
    let stream = watcher(maps.clone(), watcher::Config::default()).default_backoff().applied_objects();
    let collect = tokio::spawn(async move {
        let mut names = std::collections::BTreeSet::new();
        let mut stream = stream.boxed();
        while names.len() < 6 {
            if let Some(Ok(map)) = stream.next().await {
                names.insert(map.metadata.name.unwrap());
            }
        }
        names
    });
    for i in 0..6 {
        maps.create(&PostParams::default(), &from(json!({"metadata": {"name": format!("m{i}")}}))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let names = tokio::time::timeout(Duration::from_secs(20), collect).await.expect("the watcher recovered").unwrap();
    assert_eq!(names.len(), 6);
    let watches = f.cluster.requests().iter().filter(|r| r.verb == "watch").count();
    assert!(watches >= 2, "the watch was dropped and resumed ({watches} watches)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_exit_and_fail_to_start_as_the_kubelet_reports_it() {
    let Some(f) = fixture().await else { return };
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    pods.create(&pp, &pod("runs", &["sh", "-c", "echo one; echo two; exec sleep 1000"], &json!({}))).await.unwrap();
    pods.create(&pp, &pod("fails", &["sh", "-c", "exit 3"], &json!({}))).await.unwrap();
    pods.create(&pp, &pod("works", &["true"], &json!({}))).await.unwrap();
    pods.create(
        &pp,
        &pod("broken", &["true"], &json!({"spec": {"containers": [{"name": "main", "image": "missing"}]}})),
    )
    .await
    .unwrap();
    let running = tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(pods.clone(), "runs", conditions::is_pod_running()),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let status = running.status.unwrap();
    assert!(status.pod_ip.unwrap().starts_with("127.0.0."));
    assert!(running.spec.unwrap().node_name.is_some());
    assert!(status.conditions.unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True"));

    let phase = |name: &'static str| {
        let pods = pods.clone();
        async move { pods.get(name).await.ok().and_then(|p| p.status?.phase).filter(|p| p != "Pending" && p != "Running") }
    };
    assert_eq!(eventually("fails to end", || phase("fails")).await, "Failed");
    let failed = pods.get("fails").await.unwrap().status.unwrap().container_statuses.unwrap();
    assert_eq!(failed[0].state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 3);
    assert_eq!(eventually("works to end", || phase("works")).await, "Succeeded");
    let broken = eventually("broken to report", || {
        let pods = pods.clone();
        async move { pods.get("broken").await.ok()?.status?.container_statuses?[0].state.clone()?.waiting }
    })
    .await;
    assert_eq!(broken.reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(pods.get("broken").await.unwrap().status.unwrap().phase.as_deref(), Some("Pending"));

    let log = eventually("the log", || {
        let pods = pods.clone();
        async move { pods.logs("runs", &LogParams::default()).await.ok().filter(|l| l.contains("two")) }
    })
    .await;
    assert_eq!(log, "one\ntwo\n");
    let tail = pods.logs("runs", &LogParams { tail_lines: Some(1), ..LogParams::default() }).await.unwrap();
    assert_eq!(tail, "two\n");

    let follow = LogParams { follow: true, ..LogParams::default() };
    pods.create(&pp, &pod("talks", &["sh", "-c", "echo a; sleep 0.5; echo b"], &json!({}))).await.unwrap();
    let followed = eventually("a followed log", || {
        let pods = pods.clone();
        let follow = follow.clone();
        async move {
            let stream = pods.log_stream("talks", &follow).await.ok()?;
            let mut text = String::new();
            futures_util::AsyncReadExt::read_to_string(&mut Box::pin(stream), &mut text).await.ok()?;
            Some(text)
        }
    });
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), followed).await.unwrap(), "a\nb\n");

    let uid = pods.get("runs").await.unwrap().metadata.uid.unwrap();
    let deleting = pods.delete("runs", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some(), "a running pod is deleted gracefully");
    tokio::time::timeout(Duration::from_secs(10), await_condition(pods.clone(), "runs", conditions::is_deleted(&uid)))
        .await
        .unwrap()
        .unwrap();
    assert!(f.pods.stopped.lock().unwrap().contains(&"runs".to_owned()), "stopped before it disappeared");
    let started = f.pods.started.lock().unwrap().len();
    assert_eq!(started, 4, "four pods started (broken did not)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_bind_immediately_or_on_first_consumer_and_pods_get_their_directories() {
    let Some(f) = fixture().await else { return };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client.clone(), "app");
    let volumes: Api<PersistentVolume> = Api::all(f.client.clone());
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    claims.create(&pp, &claim("quick", "fast", "ReadWriteOnce")).await.unwrap();
    claims
        .create(
            &pp,
            &from(json!({"metadata": {"name": "late"}, "spec": {"accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}}}})),
        )
        .await
        .unwrap();
    let bound = |name: &'static str| {
        let claims = claims.clone();
        async move {
            claims.get(name).await.ok().filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        }
    };
    let quick = eventually("the Immediate claim to bind", || bound("quick")).await;
    assert_eq!(quick.status.unwrap().capacity.unwrap()["storage"].0, "1Gi");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = claims.get("late").await.unwrap();
    assert_eq!(late.spec.unwrap().storage_class_name.as_deref(), Some("standard"), "the default class");
    assert_eq!(late.status.unwrap().phase.as_deref(), Some("Pending"), "WaitForFirstConsumer waits");

    let volume_spec = json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "node-b"},
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "late"}}]}});
    pods.create(&pp, &pod("user", &["sleep", "1000"], &volume_spec)).await.unwrap();
    let late = eventually("the WFFC claim to bind", || bound("late")).await;
    assert_eq!(late.metadata.annotations.unwrap()["volume.kubernetes.io/selected-node"], "node-b");
    let pv = volumes.get(late.spec.unwrap().volume_name.as_deref().unwrap()).await.unwrap();
    let pv_spec = pv.spec.clone().unwrap();
    assert_eq!(pv_spec.csi.unwrap().driver, super::controllers::PROVISIONER);
    let term = &pv_spec.node_affinity.unwrap().required.unwrap().node_selector_terms[0];
    assert_eq!(term.match_expressions.as_ref().unwrap()[0].values.as_ref().unwrap(), &["node-b"]);
    assert_eq!(pv.status.unwrap().phase.as_deref(), Some("Bound"));
    let running = tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(pods.clone(), "user", conditions::is_pod_running()),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let uid = running.metadata.uid.clone().unwrap();
    assert_eq!(running.spec.unwrap().node_name.as_deref(), Some("node-b"));
    let directory = f.pods.started.lock().unwrap()["user"]["data"].clone();
    let pv_name = pv.metadata.name.unwrap();
    assert_eq!(directory, csi_mount(&f.cluster, &uid, &pv_name));
    assert!(directory.is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pods_stay_pending_with_the_schedulers_reason() {
    let Some(f) = fixture().await else { return };
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    pods.create(
        &pp,
        &pod("nowhere", &["true"], &json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "node-z"}}})),
    )
    .await
    .unwrap();
    let no_claim = json!({"spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "nope"}}]}});
    pods.create(&pp, &pod("claimless", &["true"], &no_claim)).await.unwrap();
    let reason = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let conditions = pods.get(name).await.ok()?.status?.conditions?;
            let scheduled = conditions.into_iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
            Some((scheduled.reason?, scheduled.message?))
        }
    };
    assert_eq!(
        eventually("nowhere to be unschedulable", || reason("nowhere")).await,
        (
            "Unschedulable".to_owned(),
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes are \
             available: 2 Preemption is not helpful for scheduling."
                .to_owned()
        )
    );
    let (_, message) = eventually("claimless to be unschedulable", || reason("claimless")).await;
    assert!(message.starts_with("0/2 nodes are available: persistentvolumeclaim \"nope\" not found."), "{message}");
    let events: Api<Event> = Api::namespaced(f.client.clone(), "app");
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert!(listed.items.iter().any(|e| e.reason.as_deref() == Some("FailedScheduling")));
    assert_eq!(pods.get("nowhere").await.unwrap().status.unwrap().phase.as_deref(), Some("Pending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_addresses_and_a_load_balancer_the_ip_of_its_running_pod() {
    let Some(f) = fixture().await else { return };
    let services: Api<Service> = Api::namespaced(f.client.clone(), "app");
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    let service = |name: &str, kind: &str| -> Service {
        from(json!({"metadata": {"name": name}, "spec": {"type": kind, "selector": {"app": "agent"},
            "ports": [{"name": "data", "port": 7420}]}}))
    };
    let balancer = services.create(&pp, &service("lb", "LoadBalancer")).await.unwrap();
    let node_port = services.create(&pp, &service("np", "NodePort")).await.unwrap();
    assert!(balancer.spec.as_ref().unwrap().cluster_ip.as_deref().unwrap().starts_with("10.96."));
    assert!(node_port.spec.unwrap().ports.unwrap()[0].node_port.is_some());
    pods.create(&pp, &pod("agent", &["sleep", "1000"], &json!({}))).await.unwrap();
    let running = tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(pods.clone(), "agent", conditions::is_pod_running()),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let pod_ip = running.status.unwrap().pod_ip.unwrap();
    let ip = eventually("the load balancer address", || {
        let services = services.clone();
        async move { services.get("lb").await.ok()?.status?.load_balancer?.ingress?.first()?.ip.clone() }
    })
    .await;
    assert_eq!(ip, pod_ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_once_claim_in_use_on_another_node_is_a_multi_attach_error() {
    let Some(f) = fixture().await else { return };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client.clone(), "app");
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    claims.create(&pp, &claim("shared", "fast", "ReadWriteOnce")).await.unwrap();
    let on = |node: &str| {
        json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": node},
        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "shared"}}]}})
    };
    pods.create(&pp, &pod("first", &["sleep", "1000"], &on("node-a"))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), await_condition(pods.clone(), "first", conditions::is_pod_running()))
        .await
        .unwrap()
        .unwrap();
    pods.create(&pp, &pod("second", &["sleep", "1000"], &on("node-b"))).await.unwrap();
    let waiting = eventually("second to wait", || {
        let pods = pods.clone();
        async move { pods.get("second").await.ok()?.status?.container_statuses?[0].state.clone()?.waiting }
    })
    .await;
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    let events: Api<Event> = Api::namespaced(f.client.clone(), "app");
    let attach = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("FailedAttachVolume"))
        .expect("a FailedAttachVolume event");
    assert!(attach.message.unwrap().starts_with("Multi-Attach error for volume \"pvc-"));
    assert_eq!(attach.involved_object.name.as_deref(), Some("second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_retry_to_their_backoff_limit_and_complete() {
    let Some(f) = fixture().await else { return };
    let jobs: Api<Job> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    let job = |name: &str, script: &str, extra: Value| -> Job {
        let mut job = json!({"metadata": {"name": name}, "spec": {"backoffLimit": 1, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1", "command": ["sh", "-c", script]}]}}}});
        json_patch::merge(&mut job, &extra);
        from(job)
    };
    jobs.create(&pp, &job("ok", "exit 0", json!({}))).await.unwrap();
    jobs.create(&pp, &job("bad", "exit 1", json!({}))).await.unwrap();
    jobs.create(&pp, &job("slow", "exec sleep 1000", json!({"spec": {"activeDeadlineSeconds": 1}}))).await.unwrap();
    let finished = |name: &'static str| {
        let jobs = jobs.clone();
        async move {
            let conditions = jobs.get(name).await.ok()?.status?.conditions?;
            conditions
                .into_iter()
                .find(|c| c.type_ == "Complete" || c.type_ == "Failed")
                .map(|c| (c.type_, c.reason.unwrap_or_default()))
        }
    };
    assert_eq!(eventually("ok", || finished("ok")).await, ("Complete".to_owned(), "CompletionsReached".to_owned()));
    assert_eq!(eventually("bad", || finished("bad")).await, ("Failed".to_owned(), "BackoffLimitExceeded".to_owned()));
    assert_eq!(eventually("slow", || finished("slow")).await, ("Failed".to_owned(), "DeadlineExceeded".to_owned()));
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let bad_pods = pods.list(&ListParams::default().labels("job-name=bad")).await.unwrap().items;
    assert_eq!(bad_pods.len(), 2, "one try and one retry");
    assert!(bad_pods.iter().all(|p| p.metadata.name.as_deref().unwrap().len() == "bad-".len() + 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_deletes_what_is_in_it_and_owned_objects_follow_their_owner() {
    let Some(f) = fixture().await else { return };
    let maps: Api<ConfigMap> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    let owner = maps.create(&pp, &from(json!({"metadata": {"name": "owner"}}))).await.unwrap();
    maps.create(
        &pp,
        &from(json!({"metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "v1",
        "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.unwrap()}]}})),
    )
    .await
    .unwrap();
    maps.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually("the owned object to go", || {
        let maps = maps.clone();
        async move { maps.get_opt("owned").await.unwrap().is_none().then_some(()) }
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    pods.create(&pp, &pod("p", &["sleep", "1000"], &json!({}))).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(f.client.clone());
    let ns = namespaces.delete("app", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    let refused = status_of(maps.create(&pp, &from(json!({"metadata": {"name": "late"}}))).await);
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    eventually("the namespace to go", || {
        let namespaces = namespaces.clone();
        async move { namespaces.get_opt("app").await.unwrap().is_none().then_some(()) }
    })
    .await;
    assert!(pods.list(&ListParams::default()).await.unwrap().items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_volumes_bind_by_name_failed_ones_stay_failed_and_secrets_become_files() {
    let Some(f) = fixture().await else { return };
    let volumes: Api<PersistentVolume> = Api::all(f.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    let static_volume = |name: &str| -> PersistentVolume {
        from(json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": "5Gi"},
            "accessModes": ["ReadWriteOnce"], "storageClassName": "", "csi": {"driver": "other.csi", "volumeHandle": name}}}))
    };
    volumes.create(&pp, &static_volume("pv-static")).await.unwrap();
    volumes.create(&pp, &static_volume("pv-broken")).await.unwrap();
    let failed = Patch::Merge(json!({"status": {"phase": "Failed", "message": "disk gone"}}));
    volumes.patch_status("pv-broken", &PatchParams::default(), &failed).await.unwrap();
    let mut wanted = claim("wants-static", "", "ReadWriteOnce");
    wanted.spec.as_mut().unwrap().volume_name = Some("pv-static".to_owned());
    claims.create(&pp, &wanted).await.unwrap();
    let bound = eventually("the static claim to bind", || {
        let claims = claims.clone();
        async move {
            let claim = claims.get("wants-static").await.ok()?;
            (claim.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(claim)
        }
    })
    .await;
    assert_eq!(bound.status.unwrap().capacity.unwrap()["storage"].0, "5Gi", "the claim shows the volume's capacity");
    let pv = volumes.get("pv-static").await.unwrap();
    assert_eq!(pv.spec.unwrap().claim_ref.unwrap().name.as_deref(), Some("wants-static"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(volumes.get("pv-broken").await.unwrap().status.unwrap().phase.as_deref(), Some("Failed"));

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(f.client.clone(), "app");
    secrets.create(&pp, &from(json!({"metadata": {"name": "identity"}, "stringData": {"agent.crt": "cert"}, "data": {"ca.crt": "Q0E="}}))).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let with_secret = json!({"spec": {"volumes": [{"name": "id", "secret": {"secretName": "identity", "defaultMode": 0o400}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "wants-static"}}, {"name": "scratch", "emptyDir": {}}]}});
    pods.create(&pp, &pod("agent", &["sleep", "1000"], &with_secret)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), await_condition(pods.clone(), "agent", conditions::is_pod_running()))
        .await
        .unwrap()
        .unwrap();
    let volumes_given = f.pods.started.lock().unwrap()["agent"].clone();
    let file = volumes_given["id"].join("ca.crt");
    assert_eq!(std::fs::read(&file).unwrap(), b"CA");
    assert_eq!(std::fs::read(volumes_given["id"].join("agent.crt")).unwrap(), b"cert", "stringData is stored as data");
    assert!(secrets.get("identity").await.unwrap().string_data.is_none());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions()) & 0o777,
        0o400
    );
    assert!(volumes_given["data"].ends_with("volumes/kubernetes.io~csi/pv-static/mount"), "{volumes_given:?}");
    assert!(volumes_given["scratch"].is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_in_use_stays_terminating_until_its_pod_is_gone_then_its_volume_is_reclaimed() {
    let Some(f) = fixture().await else { return };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client.clone(), "app");
    let volumes: Api<PersistentVolume> = Api::all(f.client.clone());
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    claims.create(&pp, &claim("data", "fast", "ReadWriteOnce")).await.unwrap();
    let uses = json!({"spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}});
    pods.create(&pp, &pod("user", &["sleep", "1000"], &uses)).await.unwrap();
    let running = tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(pods.clone(), "user", conditions::is_pod_running()),
    );
    running.await.unwrap().unwrap();
    let volume = claims.get("data").await.unwrap().spec.unwrap().volume_name.unwrap();
    let directory = f.cluster.dir().join("volumes").join(&volume);
    assert!(directory.is_dir());

    claims.delete("data", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminating = claims.get("data").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some(), "the claim is Terminating");
    assert_eq!(terminating.metadata.finalizers.unwrap(), ["kubernetes.io/pvc-protection"]);

    pods.delete("user", &DeleteParams::default()).await.unwrap();
    eventually("the claim and its volume to go", || {
        let (claims, volumes, volume) = (claims.clone(), volumes.clone(), volume.clone());
        async move {
            let gone =
                claims.get_opt("data").await.unwrap().is_none() && volumes.get_opt(&volume).await.unwrap().is_none();
            gone.then_some(())
        }
    })
    .await;
    assert!(!directory.exists(), "reclaim policy Delete removes the volume's directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_runs_one_pod_per_node_and_a_kubeconfig_has_a_context_per_cluster() {
    let Some(f) = fixture().await else { return };
    let target = SimCluster::start("target", &f.dir.path().join("target"), f.pods.clone()).unwrap();
    let path = f.dir.path().join("kubeconfig");
    super::write_kubeconfig(&path, &[&f.cluster, &target]).unwrap();
    let mut names = Vec::new();
    for context in ["source", "target"] {
        let options = KubeConfigOptions { context: Some(context.to_owned()), ..KubeConfigOptions::default() };
        let config = Config::from_custom_kubeconfig(Kubeconfig::read_from(&path).unwrap(), &options).await.unwrap();
        let namespaces: Api<Namespace> = Api::all(Client::try_from(config).unwrap());
        names.push(namespaces.list(&ListParams::default()).await.unwrap().items.len());
    }
    assert_eq!(names, [3, 2], "source has the test's namespace, target only its own");
    assert!(target.requests().iter().any(|r| r.verb == "list" && r.resource == "namespaces"));

    let sets: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(f.client.clone(), "app");
    let set = json!({"metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [
            {"name": "agent", "image": "busybox:1", "command": ["sleep", "1000"]}]}}}});
    sets.create(&PostParams::default(), &from(set)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let nodes = eventually("a running agent on each node", || {
        let pods = pods.clone();
        async move {
            let listed = pods.list(&ListParams::default().labels("app=agent")).await.ok()?.items;
            let running: std::collections::BTreeSet<String> = listed
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| p.spec?.node_name)
                .collect();
            (running.len() == 2).then_some(running)
        }
    })
    .await;
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), super::NODES);
    let ready = eventually("the daemon set's status", || {
        let sets = sets.clone();
        async move { sets.get("agent").await.ok()?.status.filter(|s| s.number_ready == 2) }
    })
    .await;
    assert_eq!(ready.desired_number_scheduled, 2);

    // Settled controllers write nothing: the watch history is not flooded.
    let namespaces: Api<Namespace> = Api::all(f.client.clone());
    let version = async || namespaces.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let before = version().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(version().await, before);
}
