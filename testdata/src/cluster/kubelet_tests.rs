//! The kubelet's pod directory and projected volumes: claims mounted where a real kubelet mounts
//! them (what a node agent finds), Secret volumes that follow their Secret, and the node agent's
//! `DaemonSet` as `mover k8s manifests --strategy node` renders it, seeing claims mounted after it
//! started.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use mover_kube::objects::{Install, Strategy, install_objects};
use serde_json::{Value, json};

use super::tests::{claim, client_as, csi_mount, eventually, fixture, from, mounts_under, pod};
use super::{SimCluster, TOOLS_REPOSITORY, app};
use crate::podrunner::{Image, PodRunner};

async fn running(pods: &Api<Pod>, name: &str) -> Pod {
    let wait = await_condition(pods.clone(), name, conditions::is_pod_running());
    tokio::time::timeout(Duration::from_secs(10), wait).await.unwrap().unwrap().unwrap()
}

async fn volume_of(claims: &Api<PersistentVolumeClaim>, name: &str) -> String {
    eventually("the claim to bind", || {
        let claims = claims.clone();
        let name = name.to_owned();
        async move { claims.get(&name).await.ok()?.spec?.volume_name }
    })
    .await
}

/// Waits until the pod is gone and its directory under the kubelet root with it.
async fn deleted(pods: &Api<Pod>, name: &str, pod_dir: &Path) {
    pods.delete(name, &DeleteParams::default()).await.unwrap();
    eventually("the pod and its directory to go", || {
        let pods = pods.clone();
        let name = name.to_owned();
        async move { (pods.get_opt(&name).await.unwrap().is_none() && !pod_dir.exists()).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csi_claim_is_mounted_under_the_kubelet_root_while_its_pod_runs() {
    let Some(f) = fixture().await else { return };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client.clone(), "app");
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    claims.create(&pp, &claim("data", "fast", "ReadWriteOnce")).await.unwrap();
    let pv = volume_of(&claims, "data").await;
    fs::write(f.cluster.dir().join("volumes").join(&pv).join("hello.txt"), "hello").unwrap();
    let uses = json!({"spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}});
    pods.create(&pp, &pod("user", &["sleep", "1000"], &uses)).await.unwrap();
    let uid = running(&pods, "user").await.metadata.uid.unwrap();

    let mount = csi_mount(&f.cluster, &uid, &pv);
    assert_eq!(f.pods.started.lock().unwrap()["user"]["d"], mount, "the pod gets the kubelet's mount");
    assert_eq!(fs::read_to_string(mount.join("hello.txt")).unwrap(), "hello", "the pod sees its files");
    let pod_dir = f.cluster.kubelet_root().join("pods").join(&uid);
    assert_eq!(mounts_under(&pod_dir), std::slice::from_ref(&mount), "a mount point, the pod directory's only one");

    // A pod waiting for a missing Secret mounts nothing meanwhile.
    let waits = json!({"spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "s", "secret": {"secretName": "missing"}}]}});
    let waiting = pods.create(&pp, &pod("waits", &["sleep", "1000"], &waits)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!f.cluster.kubelet_root().join("pods").join(waiting.metadata.uid.unwrap()).exists());
    assert_eq!(mounts_under(&f.cluster.kubelet_root().join("pods")), std::slice::from_ref(&mount));

    deleted(&pods, "user", &pod_dir).await;
    assert_eq!(mounts_under(&pod_dir), Vec::<PathBuf>::new(), "no mount left");
    assert!(f.cluster.dir().join("volumes").join(&pv).join("hello.txt").exists(), "the volume's files stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_volume_is_mounted_in_tree_and_a_host_path_volume_is_its_path() {
    let Some(f) = fixture().await else { return };
    let volumes: Api<PersistentVolume> = Api::all(f.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(f.client.clone(), "app");
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    let (local, host) = (f.dir.path().join("local-disk"), f.dir.path().join("host-disk"));
    for (disk, kind) in [(&local, "local"), (&host, "hostPath")] {
        fs::create_dir(disk).unwrap();
        fs::write(disk.join("kind"), kind).unwrap();
        let name = format!("pv-{}", kind.to_lowercase());
        volumes
            .create(
                &pp,
                &from(json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"], "storageClassName": "", kind: {"path": disk},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a"]}]}]}}}})),
            )
            .await
            .unwrap();
        let mut wanted = claim(&kind.to_lowercase(), "", "ReadWriteOnce");
        wanted.spec.as_mut().unwrap().volume_name = Some(name);
        claims.create(&pp, &wanted).await.unwrap();
    }
    let uses = json!({"spec": {"volumes": [{"name": "l", "persistentVolumeClaim": {"claimName": "local"}},
        {"name": "h", "persistentVolumeClaim": {"claimName": "hostpath"}}]}});
    pods.create(&pp, &pod("user", &["sleep", "1000"], &uses)).await.unwrap();
    let uid = running(&pods, "user").await.metadata.uid.unwrap();

    let given = f.pods.started.lock().unwrap()["user"].clone();
    let pod_dir = f.cluster.kubelet_root().join("pods").join(&uid);
    let in_tree = pod_dir.join("volumes/kubernetes.io~local-volume/pv-local");
    assert_eq!(given["l"], in_tree);
    assert_eq!(fs::read_to_string(in_tree.join("kind")).unwrap(), "local");
    assert_eq!(given["h"], host, "a hostPath volume is its path, as a real kubelet gives it");
    assert_eq!(mounts_under(&pod_dir), [in_tree], "the local volume is a mount point, the hostPath one is not");

    deleted(&pods, "user", &pod_dir).await;
    assert_eq!(mounts_under(&pod_dir), Vec::<PathBuf>::new(), "no mount left");
    assert_eq!(fs::read_to_string(local.join("kind")).unwrap(), "local", "the volume's files stay");
}

/// The names in a projected volume that are not the atomic writer's own (`..data`, `..<time>`).
fn keys(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with(".."))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_follows_its_secret_while_the_pod_runs() {
    let Some(f) = fixture().await else { return };
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), "app");
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let pp = PostParams::default();
    secrets.create(&pp, &from(json!({"metadata": {"name": "identity"}, "data": {"ca.crt": "b25l"}}))).await.unwrap();
    let uses = json!({"spec": {"volumes": [
        {"name": "optional", "secret": {"secretName": "identity", "optional": true, "defaultMode": 0o400}},
        {"name": "required", "secret": {"secretName": "identity"}}]}});
    pods.create(&pp, &pod("reader", &["sleep", "1000"], &uses)).await.unwrap();
    let uid = running(&pods, "reader").await.metadata.uid.unwrap();
    let given = f.pods.started.lock().unwrap()["reader"].clone();
    let (optional, required) = (given["optional"].clone(), given["required"].clone());

    assert_eq!(fs::read_link(optional.join("ca.crt")).unwrap(), Path::new("..data/ca.crt"));
    let first = fs::read_link(optional.join("..data")).unwrap();
    assert!(first.to_string_lossy().starts_with(".."), "..data points at a timestamped directory: {first:?}");
    assert_eq!(fs::read_to_string(optional.join("ca.crt")).unwrap(), "one");
    assert_eq!(fs::metadata(optional.join("ca.crt")).unwrap().permissions().mode() & 0o777, 0o400);

    let update = Patch::Merge(json!({"data": {"ca.crt": "dHdv", "agent.crt": "Y2VydA=="}}));
    secrets.patch("identity", &PatchParams::default(), &update).await.unwrap();
    eventually("the volumes to show the new Secret", || {
        let (optional, required) = (optional.clone(), required.clone());
        async move {
            let read = |dir: &Path, key: &str| fs::read_to_string(dir.join(key)).ok();
            let both = [&optional, &required].iter().all(|dir| {
                read(dir, "ca.crt").as_deref() == Some("two") && read(dir, "agent.crt").as_deref() == Some("cert")
            });
            both.then_some(())
        }
    })
    .await;
    assert_ne!(fs::read_link(optional.join("..data")).unwrap(), first, "..data was swapped");
    assert!(!optional.join(&first).exists(), "the old directory is removed");
    assert_eq!(fs::metadata(optional.join("agent.crt")).unwrap().permissions().mode() & 0o777, 0o400, "modes kept");
    let pod = pods.get("reader").await.unwrap();
    assert_eq!(pod.metadata.uid.as_deref(), Some(uid.as_str()), "the same pod");
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Running"), "not restarted");

    secrets.delete("identity", &DeleteParams::default()).await.unwrap();
    eventually("the optional volume to empty", || {
        let optional = optional.clone();
        async move { keys(&optional).is_empty().then_some(()) }
    })
    .await;
    assert_eq!(keys(&required), ["agent.crt", "ca.crt"], "a required Secret's volume keeps its last content");
    assert_eq!(fs::read_to_string(required.join("ca.crt")).unwrap(), "two");
}

/// The node agent's container, standing in for `mover-agent` while its flags change: waits for a
/// claim's `hello.txt` under the kubelet's pod directory in the CSI layout, prints its path, its
/// content and whether its directory is a mount point in the container, and exits 0.
const AGENT_SCRIPT: &str = r#"while :; do
for f in /var/lib/kubelet/pods/*/volumes/kubernetes.io~csi/*/mount/hello.txt; do
  if [ -f "$f" ]; then
    d=${f%/hello.txt}; echo "found $f"; cat "$f"; echo
    grep -qF " $d " /proc/self/mountinfo && echo "mount point $d"
    exit 0
  fi
done
sleep 0.1
done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_daemon_set_sees_a_claim_mounted_after_it_started() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: pods need root (namespaces, mounts)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = BTreeMap::from([(TOOLS_REPOSITORY.to_owned(), Image::host_tools())]);
    let runner = Arc::new(PodRunner::new(207, images));
    let cluster = SimCluster::start("source", &dir.path().join("cluster"), runner).unwrap();
    let client = client_as(&cluster, "admin", dir.path()).await;

    // What `mover k8s manifests --strategy node --kubelet-root <cluster>/kubelet` prints.
    let image = format!("{TOOLS_REPOSITORY}:1");
    let kubelet_root = cluster.kubelet_root().to_str().unwrap().to_owned();
    let install = Install {
        strategy: Strategy::Node,
        namespace: "mover",
        image: &image,
        kubelet_root: &kubelet_root,
        port_forward: false,
    };
    let mut objects: Vec<Value> = install_objects(&install).iter().map(|o| serde_json::to_value(o).unwrap()).collect();
    let set = objects.iter_mut().find(|o| o["kind"] == "DaemonSet").expect("the node strategy's DaemonSet");
    assert_eq!(set["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"], format!("{kubelet_root}/pods"));
    let container = &mut set["spec"]["template"]["spec"]["containers"][0];
    container["command"] = json!(["sh", "-c", AGENT_SCRIPT]);
    container.as_object_mut().unwrap().remove("args");
    app::apply(&client, &objects).await.unwrap();
    let identity = json!({"metadata": {"name": "mover-agent-identity", "namespace": "mover"},
        "data": {"ca.crt": "Q0E=", "agent.crt": "Q0VSVA==", "agent.key": "S0VZ"}});
    Api::<Secret>::namespaced(client.clone(), "mover").create(&PostParams::default(), &from(identity)).await.unwrap();
    let agents: Api<Pod> = Api::namespaced(client.clone(), "mover");
    let on_node_a = eventually("an agent running on each node", || {
        let agents = agents.clone();
        async move {
            let listed = agents.list(&ListParams::default().labels("app.kubernetes.io/name=mover-agent")).await.ok()?;
            let running: Vec<Pod> = listed
                .items
                .into_iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .collect();
            (running.len() == 2).then_some(())?;
            running.into_iter().find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-a"))
        }
    })
    .await;
    let agent = on_node_a.metadata.name.unwrap();

    // An application pod on node-a, started after the agent, writes into its claim.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.create(&PostParams::default(), &from(json!({"metadata": {"name": "shop"}}))).await.unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "shop");
    claims.create(&PostParams::default(), &claim("data", "standard", "ReadWriteOnce")).await.unwrap();
    let web = json!({"metadata": {"name": "web"}, "spec": {"nodeSelector": {"kubernetes.io/hostname": "node-a"},
        "restartPolicy": "Never", "containers": [{"name": "web", "image": image,
            "command": ["sh", "-c", "echo hello from web > /tmp/data/hello.txt; exec sleep 1000"],
            "volumeMounts": [{"name": "data", "mountPath": "/tmp/data"}]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.create(&PostParams::default(), &from(web)).await.unwrap();
    let uid = running(&pods, "web").await.metadata.uid.unwrap();
    let pv = volume_of(&claims, "data").await;

    let finished = eventually("the agent to find the claim", || {
        let agents = agents.clone();
        let agent = agent.clone();
        async move {
            let pod = agents.get(&agent).await.ok()?;
            let phase = pod.status?.phase?;
            (phase == "Succeeded" || phase == "Failed").then_some(phase)
        }
    })
    .await;
    let log = agents.logs(&agent, &LogParams::default()).await.unwrap();
    assert_eq!(finished, "Succeeded", "{log}");
    let inside = format!("/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/{pv}/mount");
    assert!(log.contains(&format!("found {inside}/hello.txt\nhello from web\n")), "{log}");
    assert!(log.contains(&format!("mount point {inside}\n")), "a mount point inside the agent: {log}");
    drop(cluster);
}
