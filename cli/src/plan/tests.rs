use std::path::Path;
use std::time::Duration;

use super::*;

fn parse_at(text: &str) -> anyhow::Result<Plan> {
    parse(text, Path::new("/plans/plan.yaml"))
}

fn error(text: &str) -> String {
    format!("{:#}", parse_at(text).expect_err("the plan should be refused"))
}

const HEAD: &str = "apiVersion: mover/v1alpha1\nkind: MigrationPlan\nname: p\n";

#[test]
fn the_annotated_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plan.yaml");
    let plan = load(&path).unwrap();
    assert_eq!(plan.name, "shop-migration");
    assert_eq!(plan.hook_environment()[1], ("migration_namespaces".to_owned(), "shop,shop-db".to_owned()));
    assert_eq!(plan.volumes.len(), 2);
    assert_eq!(plan.volumes[0].copy_options(false, false).bwlimit, 50 << 20);
    assert!(plan.volumes[1].copy_options(true, false).stage);
    assert_eq!(plan.volumes[0].copy_options(false, false).excludes[3], b"logs/**/*.gz");
    assert_eq!(plan.hooks.len(), 3);
    assert_eq!(plan.hooks[1].timeout, Duration::from_secs(600));
    assert_eq!(plan.hooks[2].side, Side::Target);
    assert_eq!(plan.hooks[2].timeout, DEFAULT_HOOK_TIMEOUT);
    assert!(matches!(&plan.hooks[0].action, HookAction::Playbook(p) if p.ends_with("examples/hooks/environment.yml")));
    assert!(plan.certs.unwrap().ends_with("examples/certs"));
}

#[test]
fn exclude_rules_are_checked_where_they_stand() {
    let volume = "volumes:\n  - source: ./a\n    target: ./b\n    options:\n      exclude:\n";
    let plan = parse_at(&format!("{HEAD}{volume}        - \"- *.tmp\"\n        - /cache\n")).unwrap();
    assert_eq!(plan.volumes[0].copy_options(false, false).excludes, [&b"*.tmp"[..], b"/cache"]);
    let unclosed = error(&format!("{HEAD}{volume}        - ok\n        - \"x[\"\n"));
    assert!(unclosed.contains("line 10") && unclosed.contains("`[` is not closed"), "{unclosed}");
    let include = error(&format!("{HEAD}{volume}        - \"+ keep\"\n"));
    assert!(include.contains("include rule"), "{include}");
}

#[test]
fn relative_paths_and_defaults() {
    let plan = parse_at(&format!(
        "{HEAD}volumes:\n  - source: ./a\n    target: ../b\nimages:\n  - source: docker://r:5000/x/y:1\n    destination: oci:/tmp/l\n  - sync: {{source: docker://r/x, destination: docker://s/x}}\n"
    ))
    .unwrap();
    assert_eq!(plan.volumes[0].name, "b");
    assert_eq!(plan.volumes[0].source, Location::Local("/plans/a".into()));
    assert_eq!(plan.volume_concurrency, 2);
    assert!(plan.namespaces.is_empty());
    assert_eq!(plan.images.len(), 2);
    assert!(plan.certs.is_none(), "no agent, no certificates needed");
}

#[test]
fn unknown_fields_carry_line_and_column() {
    let message = error(&format!("{HEAD}volumes:\n  - source: ./a\n    target: ./b\n    optoins: {{}}\n"));
    assert!(message.contains("line 7, column 5"), "{message}");
    assert!(message.contains("optoins"), "{message}");
    let message = error(&format!("{HEAD}volumes:\n  - source: ./a\n    target: ./b\n    options:\n      bwlimt: 1M\n"));
    assert!(message.contains("line 8, column 7") && message.contains("bwlimt"), "{message}");
}

#[test]
fn type_errors_carry_line_and_column() {
    let message = error(&format!("{HEAD}concurrency:\n  volumes: many\n"));
    assert!(message.contains("line 5, column 12"), "{message}");
    let message = error(&format!("{HEAD}volumes:\n  - source: ./a\n    target: ./b\n    options: {{checksum: 3}}\n"));
    assert!(message.contains("line 7"), "{message}");
}

#[test]
fn bad_values_carry_line_and_column() {
    for (body, line, needle) in [
        ("volumes:\n  - source: agent://h/x\n    target: ./b\n", 5, "HOST:PORT"),
        ("volumes:\n  - source: ./a\n    target: ./b\n    options: {bwlimit: 10Mb}\n", 7, "unknown unit"),
        ("volumes:\n  - source: ./a\n    target: ./b\n    options: {compress: 25}\n", 7, "zstd level"),
        ("namespaces: [Shop]\n", 4, "namespace"),
        ("hooks:\n  - name: h\n    phase: PreBackup\n    timeout: 5 minutes\n    command: [x]\n", 7, "duration"),
        ("hooks:\n  - name: h\n    phase: BeforeBackup\n    command: [x]\n", 6, "PreBackup"),
        ("images:\n  - source: registry/x:1\n    destination: oci:/d\n", 5, "transport"),
        ("proxy: socks5://p:1\n", 4, "proxy"),
    ] {
        let message = error(&format!("{HEAD}{body}"));
        assert!(message.contains(&format!("line {line},")), "expected line {line}: {message}");
        assert!(message.contains(needle), "expected `{needle}`: {message}");
    }
}

#[test]
fn header_is_checked() {
    let message = error("apiVersion: mover/v1\nkind: MigrationPlan\nname: p\n");
    assert!(message.contains("line 1") && message.contains("mover/v1alpha1"), "{message}");
    let message = error("apiVersion: mover/v1alpha1\nkind: MigPlan\nname: p\n");
    assert!(message.contains("line 2") && message.contains("MigrationPlan"), "{message}");
    let message = error("apiVersion: mover/v1alpha1\nkind: MigrationPlan\n");
    assert!(message.contains("name"), "{message}");
}

#[test]
fn whole_entry_checks_point_at_the_entry() {
    let message =
        error(&format!("{HEAD}hooks:\n  - name: both\n    phase: PreBackup\n    command: [x]\n    playbook: p.yml\n"));
    assert!(message.contains("line 5") && message.contains("exactly one of"), "{message}");
    let message = error(&format!(
        "{HEAD}volumes:\n  - {{name: v, source: ./a, target: ./b}}\n  - {{name: v, source: ./c, target: ./d}}\n"
    ));
    assert!(message.contains("line 6") && message.contains("second volume named `v`"), "{message}");
    let message = error(&format!("{HEAD}images:\n  - source: docker://r/x:1\n"));
    assert!(message.contains("line 5") && message.contains("either"), "{message}");
    let message = error(&format!("{HEAD}volumes:\n  - {{source: agent://h:1/v, target: agent://g:1/v}}\n"));
    assert!(message.contains("certs"), "{message}");
    let message = error(&format!("{HEAD}volumes:\n  - {{source: agent://h:1/v, target: ./dir}}\n"));
    assert!(message.contains("line 5") && message.contains("not supported"), "{message}");
}

/// The plan file is a decoder of untrusted text too (cargo-fuzz cannot link a binary crate, so
/// it is fuzzed here): any bytes, and any mutation of the annotated example, give a plan or an
/// error, never a panic; YAML errors carry a line.
mod fuzzing {
    use proptest::prelude::*;

    use super::*;

    fn example() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plan.yaml");
        std::fs::read_to_string(path).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse_at(&text);
            let _ = parse_at(&format!("{HEAD}{text}"));
        }

        #[test]
        fn mutated_examples_never_panic(cuts in proptest::collection::vec((0usize..6000, 0usize..40, "\\PC{0,12}"), 1..4)) {
            let mut text = example();
            for (at, len, insert) in cuts {
                let mut at = at % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let mut end = (at + len).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.replace_range(at..end, &insert);
            }
            if let Err(error) = parse_at(&text) {
                let message = format!("{error:#}");
                prop_assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn yaml_errors_name_a_line() {
        for broken in ["name: [unclosed\n", "volumes:\n  - source: ./a\n   target: ./b\n", "name: p\nname: q\n"] {
            let message = error(&format!("{HEAD}{broken}"));
            assert!(message.contains("line "), "{message}");
        }
    }
}

#[test]
fn a_bare_bwlimit_is_kib_per_second_as_in_mtc() {
    for (written, expected) in [("5000", 5000 << 10), ("\"5000\"", 5000 << 10), ("2M", 2 << 20), ("100B", 100)] {
        let plan = parse_at(&format!(
            "{HEAD}volumes:\n  - source: ./a\n    target: ./b\n    options: {{bwlimit: {written}}}\n"
        ))
        .unwrap();
        assert_eq!(plan.volumes[0].copy_options(false, false).bwlimit, expected, "bwlimit: {written}");
    }
}

#[test]
fn run_in_stage_runs_is_a_strict_boolean_off_by_default() {
    let hook = |extra: &str| format!("{HEAD}hooks:\n  - name: h\n    phase: PreBackup\n{extra}    command: [x]\n");
    assert!(!parse_at(&hook("")).unwrap().hooks[0].run_in_stage_runs);
    assert!(parse_at(&hook("    runInStageRuns: true\n")).unwrap().hooks[0].run_in_stage_runs);
    let message = error(&hook("    runInStageRuns: sometimes\n"));
    assert!(message.contains("line 7"), "{message}");
    let message = error(&hook("    runInStageRun: true\n"));
    assert!(message.contains("line 7") && message.contains("runInStageRun"), "{message}");
}

#[test]
fn claim_volumes_go_to_the_mapped_namespace_of_the_target_cluster() {
    let plan = parse_at(&format!(
        "{HEAD}namespaces: [shop]\nclusters:\n  source: {{context: old}}\n  target: {{context: new}}\n  \
         namespaceMapping: {{shop: shop-v2}}\n  storageClassMap: {{gp2: standard}}\n\
         volumes:\n  - claim: shop/data\n    targetName: data2\n    storageClass: fast\n    accessModes: [ReadWriteMany]\n  \
         - claim: shop/logs\n"
    ))
    .unwrap();
    let claim = |context: &str, namespace: &str, name: &str| {
        Location::Kube(ClaimRef { context: Some(context.into()), namespace: namespace.into(), name: Some(name.into()) })
    };
    assert_eq!(plan.volumes[0].name, "shop/data");
    assert_eq!(plan.volumes[0].source, claim("old", "shop", "data"));
    assert_eq!(plan.volumes[0].target, claim("new", "shop-v2", "data2"));
    assert_eq!(plan.volumes[1].target, claim("new", "shop-v2", "logs"));
    let clusters = plan.clusters.unwrap();
    assert!(!clusters.every_claim);
    assert_eq!(clusters.storage_class_map["gp2"], "standard");
    assert_eq!(clusters.claims["shop/data"].access_modes.as_deref(), Some(&["ReadWriteMany".to_owned()][..]));
    assert!(!clusters.claims.contains_key("shop/logs"));
}

#[test]
fn a_plan_with_clusters_and_no_volumes_takes_every_claim_of_its_namespaces() {
    let plan = parse_at(&format!("{HEAD}namespaces: [shop, db]\nclusters:\n  exclude: [shop/scratch]\n")).unwrap();
    let clusters = plan.clusters.unwrap();
    assert!(clusters.every_claim);
    assert_eq!(clusters.exclude, ["shop/scratch"]);
    assert_eq!(clusters.contexts.source, None);
}

#[test]
fn claim_entries_are_checked() {
    let no_clusters = error(&format!("{HEAD}volumes:\n  - claim: shop/data\n"));
    assert!(no_clusters.contains("line 5") && no_clusters.contains("needs the plan's `clusters:`"), "{no_clusters}");
    let with = |volume: &str| error(&format!("{HEAD}clusters: {{}}\nvolumes:\n  - {volume}\n"));
    assert!(with("claim: data").contains("is not `NAMESPACE/NAME`"));
    assert!(with("claim: Shop/data").contains("is not `NAMESPACE/NAME`"));
    assert!(with("{claim: shop/data, source: ./a, target: ./b}").contains("not both"));
    assert!(with("{source: ./a, target: ./b, storageClass: x}").contains("belong to `claim:` volumes"));
    let nothing = error(&format!("{HEAD}clusters: {{}}\n"));
    assert!(nothing.contains("neither volumes nor `namespaces:`"), "{nothing}");
}

const CLUSTERS: &str = "namespaces: [shop, shop-db]\nclusters:\n  source: {context: src}\n  target: {context: dst}\n  \
                        namespaceMapping: {shop: shop-new}\n";

#[test]
fn hooks_of_a_plan_with_clusters_are_jobs_with_mtc_defaults() {
    let plan = parse_at(&format!(
        "{HEAD}{CLUSTERS}hooks:\n  - name: show\n    phase: PreBackup\n    playbook: show.yml\n  \
         - name: restore\n    phase: PostRestore\n    image: quay.io/org/tools:2\n    command: [sh, -c, true]\n    \
         serviceAccount: hook-runner\n  - name: there\n    phase: PreBackup\n    cluster: target\n    \
         executionNamespace: other\n    playbook: p.yml\n  - name: here\n    phase: PreBackup\n    local: true\n    \
         command: [true]\n  - name: old-spelling\n    phase: PostBackup\n    side: target\n    playbook: p.yml\n"
    ))
    .unwrap();
    let jobs: Vec<_> = plan.hooks.iter().map(|hook| (hook.side, hook.job.clone())).collect();
    let job = |image: &str, namespace: &str, service_account: Option<&str>| {
        Some(HookJob {
            image: image.into(),
            namespace: namespace.into(),
            service_account: service_account.map(Into::into),
        })
    };
    assert_eq!(jobs[0], (Side::Source, job(DEFAULT_HOOK_IMAGE, "shop", None)));
    // On the target, the first namespace is mapped.
    assert_eq!(jobs[1], (Side::Target, job("quay.io/org/tools:2", "shop-new", Some("hook-runner"))));
    assert_eq!(jobs[2], (Side::Target, job(DEFAULT_HOOK_IMAGE, "other", None)));
    assert_eq!(jobs[3], (Side::Source, None));
    assert_eq!(jobs[4], (Side::Target, job(DEFAULT_HOOK_IMAGE, "shop-new", None)));
    assert_eq!(plan.hooks[0].timeout, Duration::from_secs(1800));
}

#[test]
fn hooks_without_clusters_stay_local() {
    let plan = parse_at(&format!("{HEAD}hooks:\n  - name: h\n    phase: PreBackup\n    command: [x]\n")).unwrap();
    assert_eq!(plan.hooks[0].job, None);
}

#[test]
fn job_fields_are_checked() {
    let hook = |extra: &str| format!("{HEAD}{CLUSTERS}hooks:\n  - name: h\n    phase: PreBackup\n{extra}");
    for (body, needle) in [
        ("    command: [x]\n", "add `image: IMAGE`, or `local: true`"),
        ("    image: docker://quay.io/x:1\n    command: [x]\n", "without a transport"),
        ("    image: 'a b'\n    command: [x]\n", "not an image reference"),
        ("    serviceAccount: Hooks\n    playbook: p.yml\n", "not a service account name"),
        ("    executionNamespace: Bad_NS\n    playbook: p.yml\n", "namespace"),
        ("    timeout: 0s\n    playbook: p.yml\n", "above zero"),
        ("    local: true\n    image: quay.io/x:1\n    command: [x]\n", "runs on this machine (`local: true`)"),
        ("    cluster: elsewhere\n    playbook: p.yml\n", "source"),
        ("    cluster: source\n    side: source\n    playbook: p.yml\n", "duplicate"),
    ] {
        let message = error(&hook(body));
        assert!(message.contains(needle), "expected `{needle}`: {message}");
        assert!(message.contains("line "), "no position: {message}");
    }
    let message =
        error(&format!("{HEAD}hooks:\n  - name: h\n    phase: PreBackup\n    image: quay.io/x:1\n    command: [x]\n"));
    assert!(message.contains("the plan has no `clusters:`"), "{message}");
    let message = error(&format!(
        "{HEAD}clusters:\n  source: {{context: a}}\nvolumes:\n  - claim: shop/data\nhooks:\n  - name: h\n    phase: PreBackup\n    playbook: p.yml\n"
    ));
    assert!(message.contains("no `namespaces:`") && message.contains("executionNamespace"), "{message}");
}

#[test]
fn images_from_namespaces_is_a_mapping_checked_as_strictly_as_the_rest() {
    let clusters = "namespaces: [shop]\nclusters: {source: {context: a}, target: {context: b}}\n";
    let found = "images:\n  fromNamespaces: true\n  targetRegistry: registry.target:5000\n  serviceAccount: {namespace: mover-system, name: mover-registry}\n";
    let plan = parse_at(&format!(
        "{HEAD}{clusters}{found}  copy:\n    - {{source: docker://r/x:1, destination: docker://s/x:1}}\n"
    ))
    .unwrap();
    let discovery = plan.image_discovery.expect("a discovery");
    assert_eq!(discovery.target_registry, "registry.target:5000");
    assert_eq!(discovery.service_account, ("mover-system".to_owned(), "mover-registry".to_owned()));
    assert_eq!(discovery.token_lifetime, mover_plan::DEFAULT_TOKEN_LIFETIME);
    assert_eq!((discovery.internal_registry, discovery.source_registry), (None, None));
    assert_eq!(plan.images.len(), 1, "the copies listed under `copy:`");
    // The list form still reads as before.
    assert!(parse_at(&format!("{HEAD}images:\n  - {{source: docker://r/x:1, destination: docker://s/x:1}}\n")).is_ok());

    let unknown = error(&format!("{HEAD}{clusters}{found}  fromNamespace: true\n"));
    assert!(unknown.contains("line 10") && unknown.contains("fromNamespace"), "{unknown}");
    let host = error(&format!("{HEAD}{clusters}{found}  sourceRegistry: https://route.example/v2\n"));
    assert!(host.contains("is not a registry host"), "{host}");
    let short = error(&format!("{HEAD}{clusters}{found}  tokenLifetime: 5m\n"));
    assert!(short.contains("at least 10 minutes"), "{short}");
    let no_target = error(&format!(
        "{HEAD}{clusters}images:\n  fromNamespaces: true\n  serviceAccount: {{namespace: a, name: b}}\n"
    ));
    assert!(no_target.contains("needs `targetRegistry:"), "{no_target}");
    let no_account = error(&format!("{HEAD}{clusters}images:\n  fromNamespaces: true\n  targetRegistry: t:5000\n"));
    assert!(
        no_account.contains("needs `serviceAccount:") && no_account.contains("system:image-puller"),
        "{no_account}"
    );
    // The role may mint tokens for `mover-registry` only.
    let other = error(&format!(
        "{HEAD}{clusters}images:\n  fromNamespaces: true\n  targetRegistry: t:5000\n  serviceAccount: {{namespace: a, name: b}}\n"
    ));
    assert!(other.contains("named `b`") && other.contains("create `mover-registry` in namespace `a`"), "{other}");
    let no_clusters = error(&format!("{HEAD}namespaces: [shop]\n{found}"));
    assert!(no_clusters.contains("needs `clusters:`"), "{no_clusters}");
}
