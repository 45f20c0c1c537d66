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
