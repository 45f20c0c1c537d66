//! Against a real cluster, when one is given: `MOVER_TEST_KUBECONFIG` (a kubeconfig),
//! `MOVER_TEST_SOURCE` (`k8s://CONTEXT/NAMESPACE/PVC`, a Bound claim) and `MOVER_TEST_TARGET`
//! (`k8s://CONTEXT/NAMESPACE`), and `MOVER_TEST_AGENT_IMAGE` (the agent image, pushed where the
//! clusters pull from). Ignored: no machine here has a cluster, and it was never run here.
//! Run with `cargo test -p mover-cli --test k8s_real_cluster -- --ignored`.

mod common;

use common::{bin, summary, text};

fn given(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("set {name} (see this file's documentation)"))
}

/// A claim moves and a second run sends nothing; what mover made is removed (checked by
/// `mover k8s cleanup` finding nothing of the plan `copy`).
#[test]
#[ignore = "needs a real cluster: MOVER_TEST_KUBECONFIG, MOVER_TEST_SOURCE, MOVER_TEST_TARGET, MOVER_TEST_AGENT_IMAGE"]
fn a_claim_moves_between_real_clusters() {
    let (kubeconfig, source, target) =
        (given("MOVER_TEST_KUBECONFIG"), given("MOVER_TEST_SOURCE"), given("MOVER_TEST_TARGET"));
    let run = || {
        std::process::Command::new(bin("mover"))
            .args([
                "copy",
                &source,
                &target,
                "--kubeconfig",
                &kubeconfig,
                "--agent-image",
                &given("MOVER_TEST_AGENT_IMAGE"),
            ])
            .args(["--output", "json"])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", text(&first));
    let again = run();
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(summary(&again)["files_transferred"], 0, "{}", text(&again));
    let context = |end: &str| end.trim_start_matches("k8s://").split('/').next().unwrap_or_default().to_owned();
    let cleanup = std::process::Command::new(bin("mover"))
        .args(["k8s", "cleanup", "--plan-name", "copy", "--kubeconfig", &kubeconfig])
        .args(["--context", &context(&source), "--context", &context(&target)])
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{}", text(&cleanup));
    assert!(String::from_utf8_lossy(&cleanup.stdout).matches("removed 0 objects").count() >= 1, "{}", text(&cleanup));
}
