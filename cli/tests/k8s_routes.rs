//! `--expose route` (and a plan's `clusters.exposure: route`) between two `OpenShift`-flavoured
//! simulated clusters: each transfer agent is exposed by a passthrough Route, and every dial (the
//! coordinator's, and the source agent's push) goes to the cluster's router with the Route's host
//! as TLS SNI (`--router-address`, a plan's `routerAddress`), directly or through a real
//! tinyproxy. The agent's certificate is still checked against the migration's CA: a stranger
//! behind a Route is refused. A cluster without Routes is refused with the other exposures named.
//! Root only (pods get network and mount namespaces); skipped otherwise, with the reason printed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::k8s::{assert_app_moved, assert_same, coordinator_audit, leftovers, mover, requests_of, runtime};
use common::{Tinyproxy, bin, certs, is_root, summary, text};
use kube::Api;
use kube::api::ListParams;
use mover_kube::objects::route::{Admission, Route, transfer_route};
use mover_kube::objects::transfer::{End, Exposure, TransferPod, transfer_pod, transfer_service};
use mover_kube::objects::{DEFAULT_IMAGE, DEFAULT_PORT, Migration, identity_secret, rbac};
use mover_testdata::TreeSpec;
use mover_testdata::cluster::app::{self, App, deploy};
use mover_testdata::cluster::{ClusterPair, Flavor, write_kubeconfig_entries};
use serde_json::json;

const PLAN: &str = "apiVersion: mover/v1alpha1
kind: MigrationPlan
name: shop-migration
namespaces: [shop, shop-db]
clusters:
  source: {context: source, routerAddress: SOURCE_ROUTER}
  target: {context: target, routerAddress: TARGET_ROUTER}
  exposure: route
";

/// Both clusters with the demo application (`files` files a claim), and a kubeconfig of the
/// install's coordinator service account for them (the RBAC audit's user, whose name comes
/// second).
fn clusters(tmp: &Path, subnets: (u8, u8), flavor: Flavor, files: usize) -> (ClusterPair, String, App) {
    let pair = ClusterPair::start_flavored(&tmp.join("clusters"), &bin("mover-agent"), subnets, flavor).unwrap();
    let deployed = runtime().block_on(deploy(&pair, files)).unwrap();
    let user = rbac::service_account_user("mover-system", rbac::COORDINATOR_SERVICE_ACCOUNT);
    let kubeconfig = tmp.join("coordinator.kubeconfig");
    write_kubeconfig_entries(&kubeconfig, &[pair.source.kubeconfig_entry(&user), pair.target.kubeconfig_entry(&user)])
        .unwrap();
    (ClusterPair { kubeconfig, ..pair }, user, deployed)
}

/// The router of each cluster (`IP:443`).
fn router(pair: &ClusterPair, context: &str) -> String {
    let cluster = if context == "source" { &pair.source } else { &pair.target };
    cluster.router_address().expect("an OpenShift cluster whose pods reach the host has a router").to_string()
}

/// `mover copy` of the shop's data claim, exposed by Routes, with `extra` arguments.
fn copy_by_route(pair: &ClusterPair, extra: &[&str]) -> Output {
    let (source, target) = (format!("source={}", router(pair, "source")), format!("target={}", router(pair, "target")));
    let mut args = vec!["copy", "k8s://source/shop/data", "k8s://target/shop", "--expose", "route"];
    args.extend(["--router-address", &source, "--router-address", &target]);
    args.extend_from_slice(extra);
    mover(pair, &args)
}

/// mover's Routes (of any migration) left in either cluster.
async fn routes_left(pair: &ClusterPair) -> Vec<String> {
    let mine = ListParams::default().labels("app.kubernetes.io/managed-by=mover,mover.io/migration");
    let mut left = Vec::new();
    for context in ["source", "target"] {
        let client = app::client(pair, context).await.unwrap();
        let routes = Api::<Route>::all(client).list(&mine).await.unwrap();
        left.extend(routes.items.into_iter().filter_map(|r| r.metadata.name).map(|n| format!("{context}: route {n}")));
    }
    left
}

fn target_dir(pair: &ClusterPair, namespace: &str, claim: &str) -> PathBuf {
    runtime().block_on(async {
        let client = app::client(pair, "target").await.unwrap();
        app::volume_dir(&client, pair.target.dir(), namespace, claim).await.unwrap()
    })
}

#[test]
fn claims_move_between_openshift_clusters_through_their_routers_by_sni() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let (pair, user, deployed) = clusters(tmp.path(), (55, 56), Flavor::OpenShift, 200);

    let output = copy_by_route(&pair, &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(summary(&output)["files_transferred"].as_u64().unwrap() >= 200, "{}", text(&output));
    assert_same(&deployed.claims[0].1, &target_dir(&pair, "shop", "data"));
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new(), "{}", text(&output));
    assert_eq!(runtime.block_on(routes_left(&pair)), Vec::<String>::new());
    // The agents' Services were ClusterIP ones, which nothing outside the cluster reaches: the
    // bytes went through the routers.
    let routes: Vec<_> =
        requests_of(&pair, &user).into_iter().filter(|r| r.verb == "create" && r.resource == "routes").collect();
    assert_eq!(routes.len(), 2, "a Route for each end: {routes:?}");

    // The plan's keys: `exposure: route` and each side's `routerAddress`.
    let plan = tmp.path().join("plan.yaml");
    let text_of_plan =
        PLAN.replace("SOURCE_ROUTER", &router(&pair, "source")).replace("TARGET_ROUTER", &router(&pair, "target"));
    std::fs::write(&plan, text_of_plan).unwrap();
    let output = mover(&pair, &["plan", "run", plan.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    runtime.block_on(assert_app_moved(&pair, &deployed.claims));
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());
    assert_eq!(runtime.block_on(routes_left(&pair)), Vec::<String>::new());

    // A router address that is no IP is refused where it is written.
    std::fs::write(&plan, PLAN.replace("SOURCE_ROUTER", "router.example").replace("TARGET_ROUTER", "10.0.0.1"))
        .unwrap();
    let output = mover(&pair, &["plan", "run", plan.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("`routerAddress`: `router.example` is not a router address"), "{}", text(&output));

    // The RBAC audit: every request allowed by the role `mover k8s manifests` prints, the Routes'
    // rules used; unused are the paths this test does not take (as in `k8s_plan.rs`), and the
    // Service reads of the Service exposures (a Route's agent is dialled at its router).
    let unused = coordinator_audit(&pair, &user);
    assert_eq!(
        unused,
        [
            "get core/nodes",
            "get core/services",
            "get core/pods/log",
            "get batch/jobs",
            "create batch/jobs",
            "delete batch/jobs",
            "delete core/configmaps",
            "get core/serviceaccounts",
            "get apps/daemonsets",
            "patch apps/statefulsets",
            "patch apps/replicasets",
            "patch apps/daemonsets",
            "patch batch/jobs",
            "patch apps.openshift.io/deploymentconfigs",
            "delete core/persistentvolumeclaims",
            "delete core/namespaces",
            "list core/configmaps",
            "list core/serviceaccounts",
            "list image.openshift.io/imagestreams",
            "create core/serviceaccounts/token"
        ]
    );
}

/// A target agent of another migration (another CA) behind a passthrough Route of the target
/// cluster, in namespace `rogue`; returns the Route's host once admitted.
async fn stranger_behind_a_route(pair: &ClusterPair, stranger: &Path) -> String {
    let client = app::client(pair, "target").await.unwrap();
    let migration = Migration { id: "stranger".into(), plan: "stranger".into() };
    let read = |name: &str| std::fs::read(stranger.join(name)).unwrap();
    let secret = identity_secret(&migration, "rogue", &read("ca.crt"), &read("agent.crt"), &read("agent.key"));
    let secret_name = secret.metadata.name.clone().unwrap();
    let spec = TransferPod {
        migration: &migration,
        namespace: "rogue",
        claim: "data",
        end: End::Target,
        node: None,
        image: DEFAULT_IMAGE,
        identity_secret: &secret_name,
        port: DEFAULT_PORT,
        owner: None,
    };
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rogue"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "rogue"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        serde_json::to_value(secret).unwrap(),
        serde_json::to_value(transfer_pod(&spec)).unwrap(),
        serde_json::to_value(transfer_service(&spec, Exposure::Route)).unwrap(),
        serde_json::to_value(transfer_route(&spec)).unwrap(),
    ];
    app::apply(&client, &objects).await.unwrap();
    let name = transfer_route(&spec).metadata.name.unwrap();
    app::wait_running(&client, "rogue", &name).await.unwrap();
    let routes: Api<Route> = Api::namespaced(client, "rogue");
    for _ in 0..200 {
        if let Admission::Admitted(host) = routes.get(&name).await.unwrap().admission() {
            return host;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("Route rogue/{name} was not admitted");
}

#[test]
fn routes_through_a_proxy_and_a_stranger_behind_a_route_is_refused() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let (pair, _, deployed) = clusters(tmp.path(), (57, 58), Flavor::OpenShift, 50);

    // The source agent dials through the proxy too, so it listens where the source cluster's pods
    // reach this machine: their gateway (the source router's address, without its port).
    let gateway = router(&pair, "source").trim_end_matches(":443").to_owned();
    let Some(proxy) = Tinyproxy::start_for(tmp.path(), "s3cret", 443, None, &["127.0.0.1", "10.245.57.0/24"]) else {
        return;
    };
    let output = copy_by_route(&pair, &["--proxy", &proxy.url_at(&gateway, "s3cret")]);
    assert!(output.status.success(), "{}", text(&output));
    assert_same(&deployed.claims[0].1, &target_dir(&pair, "shop", "data"));
    let log = proxy.log_text();
    assert!(
        log.contains(&format!("CONNECT {}", router(&pair, "target"))),
        "the push did not go through the proxy: {log}"
    );
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());
    assert_eq!(runtime.block_on(routes_left(&pair)), Vec::<String>::new());

    // An agent of another CA behind a Route: the router relays to it, and the handshake fails
    // on its certificate; with that CA's certificates the same Route serves.
    let (ours, theirs) = (certs(&tmp.path().join("ours")), certs(&tmp.path().join("theirs")));
    let host = runtime.block_on(stranger_behind_a_route(&pair, &theirs));
    let source = tmp.path().join("local");
    let tree = TreeSpec { files: 5, dirs: 1, max_file_size: 4096, big_files: Vec::new(), seed: 1, exotic: false };
    std::fs::create_dir(&source).unwrap();
    mover_testdata::generate(&source, &tree).unwrap();
    let location = format!("agent://{host}@{}/data", router(&pair, "target"));
    let copy_as = |certs: &Path, through: Option<&str>| {
        let mut args =
            vec!["copy", source.to_str().unwrap(), &location, "--certs", certs.to_str().unwrap(), "--output", "json"];
        args.extend(through.map(|url| ["--proxy", url]).into_iter().flatten());
        common::mover(&args)
    };
    let proxy_url = proxy.url_at("127.0.0.1", "s3cret");
    for through in [None, Some(proxy_url.as_str())] {
        let refused = copy_as(&ours, through);
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains(&format!("mutual TLS handshake with `{host}@"))
                && stderr.contains("invalid peer certificate"),
            "{}",
            text(&refused)
        );
    }
    let served = copy_as(&theirs, None);
    assert!(served.status.success(), "{}", text(&served));
    assert_eq!(summary(&served)["files_transferred"], 5, "{}", text(&served));
}

#[test]
fn route_exposure_on_a_cluster_without_routes_is_refused_naming_the_others() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let (pair, _, _) = clusters(tmp.path(), (59, 60), Flavor::Kubernetes, 5);
    let output = mover(&pair, &["copy", "k8s://source/shop/data", "k8s://target/shop", "--expose", "route"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("context `source` does not serve OpenShift Routes (route.openshift.io/v1)")
            && stderr.contains("a LoadBalancer (between clusters), a NodePort, or a ClusterIP"),
        "{}",
        text(&output)
    );
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());

    // A router address on the command line is an IP, with a port or not.
    let args = ["copy", "k8s://source/shop/data", "k8s://target/shop", "--expose", "route", "--router-address"];
    let output = mover(&pair, &[&args[..], &["target=router.example:443"]].concat());
    assert_ne!(output.status.code(), Some(0), "{}", text(&output));
    assert!(text(&output).contains("`router.example:443` is not a router address: write its IP"), "{}", text(&output));
}
