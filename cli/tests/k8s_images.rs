//! Images from the source cluster's internal registry (`images: {fromNamespaces: true}`): found
//! from a Deployment's pod template and an `ImageStream` tag of an `OpenShift`-flavoured simulated
//! cluster, pulled from a real `docker-registry` with TLS standing in for the internal registry
//! (its CA published as the cluster's ingress CA, its token server accepting only tokens the
//! cluster issued through the `TokenRequest` API and not yet expired), pushed into a second
//! registry under the namespace mapping, by digest. As the install's coordinator service account,
//! whose every request its `ClusterRole` must allow. Root only; skipped otherwise, with the
//! reason printed.
//!
//! The registry's route host (`*.apps.sim.example`) cannot be dialled here (no DNS, loopback
//! only): reading it, and the remedy when it is missing, are tested with `--dry-run
//! --skip-preflight` (nothing is dialled); the copies dial the plan's `sourceRegistry`, the
//! registry's loopback address.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::k8s::{coordinator_audit, mover, runtime};
use common::{bin, is_root, text};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use mover_kube::objects::rbac;
use mover_testdata::cluster::{ClusterPair, Flavor, write_kubeconfig_entries};
use mover_testdata::oci::{self, Sample};
use mover_testdata::registry::{Auth, Registry, RegistryOptions};
use serde_json::{Value, json};

const INTERNAL: &str = "image-registry.openshift-image-registry.svc:5000";
const ROUTE_HOST: &str = "default-route-openshift-image-registry.apps.sim.example";

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The plan: the images of namespace `shop` go to `target`, under `store`; `source` names the
/// exposed registry (`None`: read from the route).
fn plan_text(source: Option<&str>, target: &str) -> String {
    let source = source.map_or_else(String::new, |host| format!("  sourceRegistry: {host}\n"));
    format!(
        "apiVersion: mover/v1alpha1
kind: MigrationPlan
name: shop-images
namespaces: [shop]
clusters:
  source: {{context: source}}
  target: {{context: target}}
  namespaceMapping: {{shop: store}}
registries:
  target: {{plainHttp: true}}
images:
  fromNamespaces: true
{source}  targetRegistry: {target}
  serviceAccount: {{namespace: mover-system, name: mover-registry}}
  tokenLifetime: 10m
"
    )
}

/// Seeds the source registry: the sample's index as `shop/web:v1`, its amd64 image as `shop/api:2`.
fn seed(registry: &Registry, sample: &Sample) {
    let ca = registry.ca_pem.as_ref().unwrap().to_str().unwrap().to_owned();
    for (tag, to) in [("multi", "shop/web:v1"), ("single", "shop/api:2")] {
        let output = common::mover(&[
            "image",
            "copy",
            "--dest-ca-bundle",
            &ca,
            "--dest-creds",
            "seed:seed-pw",
            &format!("oci:{}:{tag}", sample.dir.display()),
            &format!("docker://{}/{to}", registry.addr),
        ]);
        assert!(output.status.success(), "seeding {to}: {}", text(&output));
    }
}

/// The application: a Deployment whose pod template runs the web image by digest and an image
/// of another registry, an `ImageStream` whose tag `2` is the api image, the ingress CA, the
/// service account whose token pulls.
fn objects(sample: &Sample, ca_pem: &str) -> Vec<Value> {
    let web = format!("{INTERNAL}/shop/web@{}", sample.index.digest);
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mover-system"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "openshift-config-managed"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "openshift-image-registry"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "mover-registry", "namespace": "mover-system"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "default-ingress-cert", "namespace": "openshift-config-managed"},
            "data": {"ca-bundle.crt": ca_pem}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "web", "image": web},
                {"name": "proxy", "image": "docker.io/library/nginx:1.27"},
            ]}}}}),
        json!({"apiVersion": "image.openshift.io/v1", "kind": "ImageStream",
            "metadata": {"name": "api", "namespace": "shop"}, "spec": {}}),
    ]
}

fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

/// Sets the `ImageStream`'s status as the registry would: tag `2` at the api image's digest.
async fn tag_image_stream(admin: &kube::Client, sample: &Sample) {
    let streams: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), "shop", &resource("image.openshift.io", "ImageStream", "imagestreams"));
    let digest = &sample.images[0].manifest.digest;
    let status = json!({"status": {"dockerImageRepository": format!("{INTERNAL}/shop/api"), "tags": [{"tag": "2",
        "items": [{"dockerImageReference": format!("{INTERNAL}/shop/api@{digest}"), "image": digest,
            "generation": 1}]}]}});
    streams.patch_status("api", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
}

/// The manifest digest the target registry serves for `repo:reference`.
fn served_digest(registry: &Registry, repo: &str, reference: &str) -> String {
    let (status, _, bytes) = registry.get_manifest(repo, reference).unwrap();
    assert_eq!(status, 200, "{repo}:{reference} is missing from the target");
    oci::sha256_bytes(&bytes)
}

#[test]
#[allow(clippy::too_many_lines, reason = "one cluster pair and two registries for every case, in order")]
fn images_of_the_namespaces_move_from_the_internal_registry_with_a_short_lived_token() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let pair =
        ClusterPair::start_flavored(&tmp.path().join("clusters"), &bin("mover-agent"), (47, 48), Flavor::OpenShift)
            .unwrap();
    let internal = Registry::start(
        RegistryOptions { tls: true, auth: Auth::Token { user: "seed".into(), password: "seed-pw".into() } },
        tmp.path(),
    )
    .expect("start docker-registry (apt-get install docker-registry)");
    let target = Registry::start(RegistryOptions { tls: false, auth: Auth::None }, tmp.path()).unwrap();
    // The registry accepts, besides the seeding user, any user whose password is a token the
    // source cluster issued and that has not expired.
    let tokens = pair.source.service_account_tokens();
    let valid = tokens.clone();
    internal.token_server().unwrap().also_accept(Arc::new(move |_, password| valid.valid(password).is_some()));
    let sample = oci::sample_multiarch(&tmp.path().join("layout"), 64 << 10).unwrap();
    seed(&internal, &sample);
    let ca_pem = std::fs::read_to_string(internal.ca_pem.as_ref().unwrap()).unwrap();
    let admin = runtime.block_on(mover_testdata::cluster::app::client(&pair, "source")).unwrap();
    runtime.block_on(mover_testdata::cluster::app::apply(&admin, &objects(&sample, &ca_pem))).unwrap();
    runtime.block_on(tag_image_stream(&admin, &sample));

    let user = rbac::service_account_user("mover-system", rbac::COORDINATOR_SERVICE_ACCOUNT);
    let kubeconfig = tmp.path().join("coordinator.kubeconfig");
    write_kubeconfig_entries(&kubeconfig, &[pair.source.kubeconfig_entry(&user), pair.target.kubeconfig_entry(&user)])
        .unwrap();
    let pair = ClusterPair { kubeconfig, ..pair };
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(&plan, plan_text(Some(&internal.addr), &target.addr)).unwrap();
    let plan = plan.to_str().unwrap();

    // Preflight: the registry answers at its exposed host and the token pulls.
    let output = mover(&pair, &["preflight", plan]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("internal registry: exposed, the token can pull"), "{}", text(&output));

    // The first run copies both images, by digest, under the mapped namespace.
    let first = tmp.path().join("first.json");
    let output = mover(&pair, &["plan", "run", plan, "--report", first.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let first = report(&first);
    let copies: Vec<(String, String, String)> = first["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            let field = |name: &str| image[name].as_str().unwrap().to_owned();
            (field("source"), field("destination"), field("result"))
        })
        .collect();
    let api_digest = &sample.images[0].manifest.digest;
    assert_eq!(
        copies,
        [
            (
                format!("docker://{}/shop/web@{}", internal.addr, sample.index.digest),
                format!("docker://{}/store/web", target.addr),
                "succeeded".to_owned()
            ),
            (
                format!("docker://{}/shop/api@{api_digest}", internal.addr),
                format!("docker://{}/store/api:2", target.addr),
                "succeeded".to_owned()
            ),
        ]
    );
    assert!(first["images"][0]["bytes_copied"].as_u64().unwrap() > 0, "{first:#}");
    assert_eq!(served_digest(&target, "store/web", &sample.index.digest), sample.index.digest);
    assert_eq!(served_digest(&target, "store/api", "2"), *api_digest);
    // The image of another registry is listed, not copied.
    let skipped = &first["images_skipped"];
    assert_eq!(skipped.as_array().unwrap().len(), 1, "{skipped:#}");
    assert_eq!(skipped[0]["reference"], "docker.io/library/nginx:1.27");
    assert_eq!(skipped[0]["used_by"], json!(["Deployment shop/web"]));
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("not in the source cluster's internal registry"),
        "{skipped:#}"
    );
    // The token: asked of the TokenRequest API for the plan's account and lifetime, accepted.
    let issued = tokens.issued();
    assert!(!issued.is_empty());
    assert!(
        issued.iter().all(|t| (t.namespace.as_str(), t.service_account.as_str(), t.expiration_seconds)
            == ("mover-system", "mover-registry", 600)),
        "{issued:?}"
    );
    let requests = internal.token_server().unwrap().requests();
    assert!(requests.iter().any(|r| r.authenticated && r.scopes.iter().any(|s| s == "repository:shop/web:pull")));

    // A second run copies no byte.
    let second = tmp.path().join("second.json");
    let output = mover(&pair, &["plan", "run", plan, "--report", second.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let second = report(&second);
    for image in second["images"].as_array().unwrap() {
        assert_eq!(image["result"], "succeeded", "{second:#}");
        assert_eq!(image["bytes_copied"], 0, "{second:#}");
    }

    // Without `sourceRegistry`, the exposed host is the default route's; a missing route says
    // how to enable it. (A dry run without preflight dials nothing.)
    let routed = tmp.path().join("routed.yaml");
    std::fs::write(&routed, plan_text(None, &target.addr)).unwrap();
    let routed = routed.to_str().unwrap();
    let output = mover(&pair, &["plan", "run", routed, "--dry-run", "--skip-preflight"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("oc patch configs.imageregistry.operator.openshift.io/cluster --type merge"),
        "{}",
        text(&output)
    );
    let route_api: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        "openshift-image-registry",
        &resource("route.openshift.io", "Route", "routes"),
    );
    let route: DynamicObject = serde_json::from_value(json!({"apiVersion": "route.openshift.io/v1", "kind": "Route",
        "metadata": {"name": "default-route", "namespace": "openshift-image-registry"},
        "spec": {"host": ROUTE_HOST, "to": {"kind": "Service", "name": "image-registry"},
            "tls": {"termination": "reencrypt"}}}))
    .unwrap();
    runtime.block_on(route_api.create(&kube::api::PostParams::default(), &route)).unwrap();
    let dry = tmp.path().join("dry.json");
    let output =
        mover(&pair, &["plan", "run", routed, "--dry-run", "--skip-preflight", "--report", dry.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let dry = report(&dry);
    assert_eq!(dry["images"][0]["source"], format!("docker://{ROUTE_HOST}/shop/web@{}", sample.index.digest));
    assert_eq!(dry["images"][0]["result"], "not_run", "{dry:#}");

    // A token that comes back expired is a clear error naming the TokenRequest.
    tokens.issue_expired(true);
    let output = mover(&pair, &["plan", "run", plan]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let said = text(&output);
    assert!(
        said.contains("TokenRequest for service account `mover-system/mover-registry`") && said.contains("expired"),
        "{said}"
    );
    tokens.issue_expired(false);

    // Every request the coordinator made is one its role allows, and the image rules are used.
    let unused = coordinator_audit(&pair, &user);
    for rule in [
        "list image.openshift.io/imagestreams",
        "get route.openshift.io/routes",
        "create core/serviceaccounts/token",
        "get core/configmaps",
        "list apps/deployments",
    ] {
        assert!(!unused.contains(&rule.to_owned()), "{rule} unused: {unused:?}");
    }
}
