use serde_json::{Value, json};

use super::*;

/// `object` after the merge patch `change` (the server's part of a quiesce or an unquiesce).
fn applied(object: &Value, change: &Change) -> Value {
    let mut object = object.clone();
    if let Some(patch) = &change.patch {
        json_merge(&mut object, patch);
    }
    object
}

/// RFC 7386, as the API server applies a merge patch.
fn json_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            json_merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn deployment(replicas: Option<i64>) -> Value {
    let mut object = json!({"metadata": {"name": "web", "resourceVersion": "7"}, "spec": {"template": {"spec": {}}}});
    if let Some(replicas) = replicas {
        object["spec"]["replicas"] = json!(replicas);
    }
    object
}

#[test]
fn quiesce_records_the_original_first_and_restores_it_exactly() {
    let object = deployment(Some(2));
    let change = quiesce(Kind::Deployment, &object, "p");
    assert_eq!(change.summary, "replicas 2 -> 0");
    let patch = change.patch.as_ref().unwrap();
    assert_eq!(patch["metadata"]["resourceVersion"], "7", "pinned to the object read");
    let quiesced = applied(&object, &change);
    assert_eq!(quiesced["spec"]["replicas"], 0);
    assert_eq!(quiesced["metadata"]["annotations"]["mover.io/quiesce-original-replicas"], "2");
    assert_eq!(quiesced["metadata"]["annotations"][QUIESCED_BY], "p");

    let back = applied(&quiesced, &unquiesce(Kind::Deployment, &quiesced, "p").unwrap());
    assert_eq!(back["spec"]["replicas"], 2);
    assert_eq!(back["metadata"]["annotations"], json!({}), "the records go");
}

#[test]
fn an_unset_value_is_recorded_as_the_apis_default() {
    let quiesced = applied(&deployment(None), &quiesce(Kind::Deployment, &deployment(None), "p"));
    assert_eq!(quiesced["metadata"]["annotations"]["mover.io/quiesce-original-replicas"], "1");
    let job = json!({"metadata": {}, "spec": {"template": {"spec": {}}}});
    let quiesced = applied(&job, &quiesce(Kind::Job, &job, "p"));
    assert_eq!(quiesced["spec"]["parallelism"], 0);
    assert_eq!(quiesced["metadata"]["annotations"]["mover.io/quiesce-original-parallelism"], "1");
    let back = applied(&quiesced, &unquiesce(Kind::Job, &quiesced, "p").unwrap());
    assert_eq!(back["spec"]["parallelism"], 1);
}

#[test]
fn a_second_quiesce_keeps_the_first_record() {
    let object = deployment(Some(2));
    let once = applied(&object, &quiesce(Kind::Deployment, &object, "p"));
    let again = quiesce(Kind::Deployment, &once, "p");
    assert_eq!(again.patch, None, "already quiesced: nothing to send");
    assert_eq!(again.summary, "replicas 2 -> 0 (by an earlier run)");
    // Scaled up by someone after the first run: quiesced again, the record still the first.
    let mut scaled = once.clone();
    scaled["spec"]["replicas"] = json!(4);
    let twice = applied(&scaled, &quiesce(Kind::Deployment, &scaled, "p"));
    assert_eq!(twice["spec"]["replicas"], 0);
    assert_eq!(twice["metadata"]["annotations"]["mover.io/quiesce-original-replicas"], "2");
}

#[test]
fn a_value_changed_while_quiesced_wins() {
    let object = deployment(Some(2));
    let mut quiesced = applied(&object, &quiesce(Kind::Deployment, &object, "p"));
    quiesced["spec"]["replicas"] = json!(3);
    let change = unquiesce(Kind::Deployment, &quiesced, "p").unwrap();
    assert_eq!(change.summary, "replicas stays 3 (changed since it was quiesced; recorded 2)");
    let back = applied(&quiesced, &change);
    assert_eq!(back["spec"]["replicas"], 3);
    assert!(back["metadata"]["annotations"].get(QUIESCED_BY).is_none());
}

#[test]
fn an_already_suspended_cron_job_stays_suspended() {
    let suspended = json!({"metadata": {}, "spec": {"suspend": true, "jobTemplate": {}}});
    let quiesced = applied(&suspended, &quiesce(Kind::CronJob, &suspended, "p"));
    assert_eq!(quiesced["metadata"]["annotations"]["mover.io/quiesce-original-suspend"], "true");
    let back = applied(&quiesced, &unquiesce(Kind::CronJob, &quiesced, "p").unwrap());
    assert_eq!(back["spec"]["suspend"], true);

    let running = json!({"metadata": {}, "spec": {"jobTemplate": {}}});
    let quiesced = applied(&running, &quiesce(Kind::CronJob, &running, "p"));
    assert_eq!(quiesced["spec"]["suspend"], true);
    let back = applied(&quiesced, &unquiesce(Kind::CronJob, &quiesced, "p").unwrap());
    assert_eq!(back["spec"]["suspend"], false);
}

#[test]
fn a_daemon_sets_node_selector_comes_back_byte_for_byte() {
    for original in [json!({"disk": "ssd", "kubernetes.io/os": "linux"}), Value::Null] {
        let mut object = json!({"metadata": {}, "spec": {"template": {"spec": {}}}});
        if !original.is_null() {
            object["spec"]["template"]["spec"]["nodeSelector"] = original.clone();
        }
        let quiesced = applied(&object, &quiesce(Kind::DaemonSet, &object, "p"));
        let selector = &quiesced["spec"]["template"]["spec"]["nodeSelector"];
        assert_eq!(selector[UNMATCHABLE.0], UNMATCHABLE.1);
        assert_eq!(
            quiesced["metadata"]["annotations"]["mover.io/quiesce-original-node-selector"],
            original.to_string().as_str()
        );
        let back = applied(&quiesced, &unquiesce(Kind::DaemonSet, &quiesced, "p").unwrap());
        assert_eq!(back["spec"]["template"]["spec"].get("nodeSelector").cloned().unwrap_or(Value::Null), original);
        assert_eq!(back["spec"], object["spec"], "{}", back["spec"]);
    }
    // Someone added a key while quiesced: theirs stays, only the unmatchable entry goes.
    let object = json!({"metadata": {}, "spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}});
    let mut quiesced = applied(&object, &quiesce(Kind::DaemonSet, &object, "p"));
    quiesced["spec"]["template"]["spec"]["nodeSelector"]["zone"] = json!("b");
    let back = applied(&quiesced, &unquiesce(Kind::DaemonSet, &quiesced, "p").unwrap());
    assert_eq!(back["spec"]["template"]["spec"]["nodeSelector"], json!({"disk": "ssd", "zone": "b"}));
}

#[test]
fn another_plans_workloads_are_not_restored() {
    let object = deployment(Some(2));
    let quiesced = applied(&object, &quiesce(Kind::Deployment, &object, "other"));
    assert_eq!(unquiesce(Kind::Deployment, &quiesced, "p"), None);
    assert_eq!(unquiesce(Kind::Deployment, &object, "p"), None, "never quiesced");
}
