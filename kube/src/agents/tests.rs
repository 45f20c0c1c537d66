use serde_json::json;

use super::*;

fn pod(status: &serde_json::Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
}

#[test]
fn a_pod_state_names_what_a_user_can_act_on() {
    let unschedulable = pod(&json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity"}]}));
    assert_eq!(
        pod_state(&unschedulable),
        "Pending: Unschedulable (0/2 nodes are available: 2 node(s) didn't match Pod's node affinity)"
    );
    let image = pod(&json!({"phase": "Pending", "containerStatuses": [{"name": "a", "image": "x", "imageID": "",
        "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ErrImagePull", "message": "image \"x\" not found"}}}]}));
    assert_eq!(pod_state(&image), "Pending: ErrImagePull (image \"x\" not found)");
    let starting = pod(&json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}));
    assert_eq!(pod_state(&starting), "Running, not ready yet");
    assert!(!is_ready(&starting));
    let ready = pod(&json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}));
    assert!(is_ready(&ready));
}

#[test]
fn addresses_join_with_their_port() {
    assert_eq!(join_host_port("10.0.0.1", 7443), "10.0.0.1:7443");
    assert_eq!(join_host_port("fd00::1", 7443), "[fd00::1]:7443");
    assert_eq!(join_host_port("lb.example.com", 7443), "lb.example.com:7443");
}

#[test]
fn a_routes_agent_is_dialled_at_its_router_with_the_route_host_as_server_name() {
    let host = "mover-m-target-data-shop.apps.example.com";
    assert_eq!(route_address(host, None), format!("{host}@{host}:443"));
    assert_eq!(route_address(host, Some("10.0.0.5")), format!("{host}@10.0.0.5:443"));
    assert_eq!(route_address(host, Some("10.0.0.5:8443")), format!("{host}@10.0.0.5:8443"));
    assert_eq!(route_address(host, Some("[fd00::5]")), format!("{host}@[fd00::5]:443"));
    assert_eq!(route_address(host, Some("[fd00::5]:8443")), format!("{host}@[fd00::5]:8443"));
}

/// A cleanup deletes a hook Job and then its playbook `ConfigMap` by name (the garbage collector
/// would take it too, but after the cleanup returned), and then the rest, in this order.
#[tokio::test]
async fn a_cleanup_deletes_a_hook_jobs_playbook_config_map_itself() {
    let (cluster, mut server) = crate::mock::cluster("source");
    let removed =
        tokio::spawn(async move { remove(&cluster, None, "app.kubernetes.io/managed-by=mover", Some("shop")).await });
    let job = |name: &str, plan: &str| {
        json!({"metadata": {"name": name, "namespace": "app", "annotations": {"mover.io/plan": plan}},
               "spec": {"template": {"spec": {"containers": [{"name": "hook"}],
                        "volumes": [{"name": "playbook", "configMap": {"name": name}}]}}}})
    };
    let jobs = json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {},
                      "items": [job("mover-hook-prebackup-fail-abcde", "shop"), job("mover-hook-prebackup-x-bcdfg", "other")]});
    server.expect("GET", "/apis/batch/v1/jobs", 200, jobs).await;
    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200});
    server
        .expect("DELETE", "/apis/batch/v1/namespaces/app/jobs/mover-hook-prebackup-fail-abcde", 200, gone.clone())
        .await;
    server.expect("DELETE", "/api/v1/namespaces/app/configmaps/mover-hook-prebackup-fail-abcde", 200, gone).await;
    let empty = |kind: &str| json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": []});
    server.expect("GET", "/api/v1/pods", 200, empty("PodList")).await;
    server.expect("GET", "/api/v1/services", 200, empty("ServiceList")).await;
    server
        .not_found("GET", "/apis/route.openshift.io/v1/routes", "the server could not find the requested resource")
        .await;
    server.expect("GET", "/api/v1/secrets", 200, empty("SecretList")).await;
    server.expect("GET", "/api/v1/pods", 200, empty("PodList")).await;
    assert_eq!(removed.await.unwrap().unwrap(), 1);
}
