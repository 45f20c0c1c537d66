//! `--port-forward` (a plan's `clusters.portForward`): a coordinator that reaches the API
//! servers but not the pod network (a network namespace of its own, where only the API servers'
//! ports lead to the host) moves claims anyway, reaching each agent through the API server's
//! `pods/portforward`, with both strategies. The agents still dial each other directly: the
//! claims' bytes do not pass through the coordinator's network (counted). Without it, the agents'
//! addresses are unreachable and the error says so. Root only (pods get network and mount
//! namespaces; the coordinator gets its own network namespace); skipped otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::k8s::{
    assert_app_moved, assert_same, coordinator_audit_of, install_node_agents, leftovers, mover_as, runtime,
};
use common::{bin, is_root, text};
use mover_kube::objects::rbac;
use mover_testdata::cluster::app::{self, App, deploy};
use mover_testdata::cluster::{ClusterPair, write_kubeconfig_entries};
use mover_testdata::isolated::Isolated;

const PLAN: &str = "apiVersion: mover/v1alpha1
kind: MigrationPlan
name: shop-migration
namespaces: [shop, shop-db]
clusters:
  source: {context: source}
  target: {context: target}
  portForward: true
  strategy: node
";

/// The size of the file added to the source claim: far more than the API traffic of a copy.
const BIG: usize = 24 << 20;

/// Both clusters with the demo application and the node agents, a kubeconfig of the install's
/// coordinator service account (the RBAC audit's user, second), and the coordinator's own
/// network namespace.
fn clusters(tmp: &Path) -> (ClusterPair, String, App, Isolated) {
    let pair = ClusterPair::start(&tmp.join("clusters"), &bin("mover-agent"), (63, 64)).unwrap();
    let deployed = runtime().block_on(deploy(&pair, 100)).unwrap();
    runtime().block_on(install_node_agents(&pair));
    let user = rbac::service_account_user("mover-system", rbac::COORDINATOR_SERVICE_ACCOUNT);
    let kubeconfig = tmp.join("coordinator.kubeconfig");
    write_kubeconfig_entries(&kubeconfig, &[pair.source.kubeconfig_entry(&user), pair.target.kubeconfig_entry(&user)])
        .unwrap();
    let port = |url: &str| url.rsplit(':').next().unwrap().trim_end_matches('/').parse::<u16>().unwrap();
    let ports = [port(pair.source.url()), port(pair.target.url())];
    let isolated = Isolated::new("mvcoord-63", &ports).unwrap();
    (ClusterPair { kubeconfig, ..pair }, user, deployed, isolated)
}

/// `mover ARGS` in the coordinator's network namespace.
fn isolated_mover(isolated: &Isolated, pair: &ClusterPair, args: &[&str]) -> Output {
    mover_as(isolated.command(&bin("mover")), pair, args)
}

fn target_dir(pair: &ClusterPair, namespace: &str, claim: &str) -> PathBuf {
    runtime().block_on(async {
        let client = app::client(pair, "target").await.unwrap();
        app::volume_dir(&client, pair.target.dir(), namespace, claim).await.unwrap()
    })
}

#[test]
fn a_coordinator_outside_the_pod_network_moves_claims_through_port_forwards() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods and the coordinator's namespace need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let (pair, user, deployed, isolated) = clusters(tmp.path());
    let (claim, source_dir) = &deployed.claims[0];
    assert_eq!(claim, "shop/data");
    let big: Vec<u8> = (0..BIG).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(source_dir.join("big.bin"), &big).unwrap();

    // From here the agents' addresses are unreachable: the copy fails saying where it could not go.
    let copy = ["copy", "k8s://source/shop/data", "k8s://target/shop"];
    let output = isolated_mover(&isolated, &pair, &copy);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("cannot reach `10.245.6"), "{}", text(&output));
    assert!(text(&output).contains("through the API server with `--port-forward`"), "{}", text(&output));
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());

    // Through port-forwards it moves, and the claim's bytes went between the agents: what
    // crossed the coordinator's network is a fraction of the big file alone.
    let before = isolated.relayed_bytes();
    let output = isolated_mover(&isolated, &pair, &[&copy[..], &["--port-forward"]].concat());
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("reached through a port-forward at 127.0.0.1:"), "{}", text(&output));
    assert_same(source_dir, &target_dir(&pair, "shop", "data"));
    let relayed = isolated.relayed_bytes() - before;
    assert!(relayed < (BIG / 8) as u64, "{relayed} bytes crossed the coordinator's network for a {BIG}-byte file");
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());

    // The node strategy too, from a plan's `portForward: true`: the coordinator grants the
    // claims to the node agents through port-forwards.
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let output = isolated_mover(&isolated, &pair, &["preflight", plan.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains(r#""failed":0"#), "{}", text(&output));
    let output = isolated_mover(&isolated, &pair, &["plan", "run", plan.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    runtime.block_on(assert_app_moved(&pair, &deployed.claims));
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());

    // The port-forward rule of `mover k8s manifests --port-forward` was used, in both verbs; no
    // request was outside the role.
    let unused = coordinator_audit_of(&pair, &user, true);
    assert!(!unused.iter().any(|rule| rule.contains("pods/portforward")), "{unused:?}");
}
