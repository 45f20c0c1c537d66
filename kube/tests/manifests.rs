//! The rendered manifests: golden files (regenerate with `MOVER_UPDATE_GOLDEN=1 cargo test -p
//! mover-kube --test manifests`), and a YAML round trip that reads back exactly the objects
//! that were built (no value changes type or meaning in the YAML).

use std::path::PathBuf;

use mover_kube::manifests::to_yaml;
use mover_kube::objects::{Install, Object, Strategy, install_objects, template_objects};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name)
}

/// Compares `yaml` with the golden file `name`, or rewrites it under `MOVER_UPDATE_GOLDEN=1`.
fn assert_golden(name: &str, yaml: &str) {
    let path = golden_path(name);
    if std::env::var_os("MOVER_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, yaml).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error} (MOVER_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        yaml == expected,
        "{name} differs from the golden file {}; if the change is meant, regenerate with \
         MOVER_UPDATE_GOLDEN=1 and review the diff.\n--- rendered:\n{yaml}",
        path.display()
    );
}

fn sets() -> [(&'static str, Vec<Object>); 4] {
    let pod = Install::default();
    let node = Install { strategy: Strategy::Node, kubelet_root: "/var/vcap/data/kubelet/", ..Install::default() };
    [
        ("install-pod.yaml", install_objects(&pod)),
        ("install-node.yaml", install_objects(&node)),
        ("templates.yaml", template_objects(&pod)),
        ("templates-node.yaml", template_objects(&node)),
    ]
}

#[test]
fn rendered_manifests_match_the_golden_files() {
    for (name, objects) in sets() {
        assert_golden(name, &to_yaml(&objects).unwrap());
    }
}

#[test]
fn yaml_reads_back_as_the_objects_built() {
    for (name, objects) in sets() {
        let yaml = to_yaml(&objects).unwrap();
        let read: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        let built: Vec<serde_json::Value> =
            objects.iter().map(|object| serde_json::to_value(object).unwrap()).collect();
        assert_eq!(read, built, "{name}");
        for document in &read {
            assert!(document["apiVersion"].is_string() && document["kind"].is_string(), "{name}: {document}");
        }
    }
}

#[test]
fn the_install_holds_only_installable_objects() {
    for (name, objects) in sets().into_iter().take(2) {
        let kinds: Vec<&str> = objects
            .iter()
            .map(|object| match object {
                Object::Pod(_) => "Pod",
                Object::Secret(_) => "Secret",
                Object::Service(_) => "Service",
                Object::Job(_) => "Job",
                Object::ConfigMap(_) => "ConfigMap",
                Object::Route(_) => "Route",
                _ => "",
            })
            .filter(|kind| !kind.is_empty())
            .collect();
        assert!(kinds.is_empty(), "{name} holds per-migration objects {kinds:?}");
    }
    let node = to_yaml(&sets()[1].1).unwrap();
    assert!(node.contains("path: /var/vcap/data/kubelet/pods\n"), "{node}");
}
