//! mover's own policy checks over the objects it builds: the transfer pod passes every Pod
//! Security Standards `baseline` rule (written here as code over the Pod, after
//! kubernetes.io/docs/concepts/security/pod-security-standards), the node `DaemonSet` is flagged
//! privileged, and no RBAC rule uses a wildcard. Each rule of the checker is itself shown to
//! flag a pod that breaks it.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, HostPathVolumeSource, Pod, PodSpec, SELinuxOptions, SeccompProfile, SecurityContext,
    Sysctl, Volume, WindowsSecurityContextOptions,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mover_kube::objects::hook_job::{HookJobSpec, HookProgram, hook_job};
use mover_kube::objects::labels::Migration;
use mover_kube::objects::rbac::{self, Request, has_wildcard};
use mover_kube::objects::{
    DEFAULT_IMAGE, End, Install, NodeAgent, Object, Strategy, TransferPod, install_objects, node_agent, transfer_pod,
};

/// Capabilities `baseline` allows to add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
/// Sysctls `baseline` allows (the "safe" set, as of Kubernetes 1.33).
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const SELINUX_TYPES: [&str; 5] = ["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// Every `baseline` rule `spec` (with `meta`'s annotations) breaks, named.
fn baseline_violations(meta: &ObjectMeta, spec: &PodSpec) -> Vec<String> {
    let mut found = Vec::new();
    let mut flag = |broken: bool, what: &str| {
        if broken {
            found.push(what.to_owned());
        }
    };
    flag(spec.host_network == Some(true), "hostNetwork");
    flag(spec.host_pid == Some(true), "hostPID");
    flag(spec.host_ipc == Some(true), "hostIPC");
    for volume in spec.volumes.iter().flatten() {
        flag(volume.host_path.is_some(), "hostPath volume");
    }
    let pod = spec.security_context.clone().unwrap_or_default();
    let windows_host_process = |options: Option<&WindowsSecurityContextOptions>| {
        options.is_some_and(|options| options.host_process == Some(true))
    };
    let selinux_bad = |options: Option<&SELinuxOptions>| {
        options.is_some_and(|options| {
            !SELINUX_TYPES.contains(&options.type_.as_deref().unwrap_or(""))
                || options.user.is_some()
                || options.role.is_some()
        })
    };
    let seccomp_bad = |profile: Option<&SeccompProfile>| profile.is_some_and(|profile| profile.type_ == "Unconfined");
    let apparmor_bad = |profile: Option<&AppArmorProfile>| {
        profile.is_some_and(|profile| !["RuntimeDefault", "Localhost"].contains(&profile.type_.as_str()))
    };
    flag(windows_host_process(pod.windows_options.as_ref()), "hostProcess");
    flag(selinux_bad(pod.se_linux_options.as_ref()), "SELinux options");
    flag(seccomp_bad(pod.seccomp_profile.as_ref()), "seccomp Unconfined");
    flag(apparmor_bad(pod.app_armor_profile.as_ref()), "AppArmor profile");
    for sysctl in pod.sysctls.iter().flatten() {
        flag(!SAFE_SYSCTLS.contains(&sysctl.name.as_str()), "unsafe sysctl");
    }
    for (key, value) in meta.annotations.iter().flatten() {
        let allowed = value == "runtime/default" || value.starts_with("localhost/");
        flag(key.starts_with("container.apparmor.security.beta.kubernetes.io/") && !allowed, "AppArmor annotation");
    }
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    for container in containers {
        for port in container.ports.iter().flatten() {
            flag(port.host_port.is_some_and(|port| port != 0), "hostPort");
        }
        let context = container.security_context.clone().unwrap_or_default();
        flag(context.privileged == Some(true), "privileged");
        flag(windows_host_process(context.windows_options.as_ref()), "hostProcess");
        flag(selinux_bad(context.se_linux_options.as_ref()), "SELinux options");
        flag(seccomp_bad(context.seccomp_profile.as_ref()), "seccomp Unconfined");
        flag(apparmor_bad(context.app_armor_profile.as_ref()), "AppArmor profile");
        flag(context.proc_mount.as_deref().is_some_and(|mount| mount != "Default"), "procMount");
        let added = context.capabilities.and_then(|capabilities| capabilities.add).unwrap_or_default();
        flag(added.iter().any(|capability| !BASELINE_CAPABILITIES.contains(&capability.as_str())), "capabilities");
    }
    found
}

fn migration() -> Migration {
    Migration::new("m1", "plan").unwrap()
}

fn pod_of(end: End) -> Pod {
    let migration = migration();
    transfer_pod(&TransferPod {
        migration: &migration,
        namespace: "app",
        claim: "data",
        end,
        node: Some("node-1"),
        image: DEFAULT_IMAGE,
        identity_secret: "mover-m1-identity",
        port: 7443,
        owner: None,
    })
}

#[test]
fn transfer_pods_pass_pod_security_baseline() {
    for end in [End::Source, End::Target] {
        let pod = pod_of(end);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(baseline_violations(&pod.metadata, spec), Vec::<String>::new(), "{end:?}");
        // And what the brief asks beyond baseline: no token, no escalation, all else dropped.
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let context = spec.containers[0].security_context.as_ref().unwrap();
        assert_eq!(context.allow_privilege_escalation, Some(false));
        assert_eq!(context.capabilities.as_ref().unwrap().drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(context.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let claim = spec.volumes.as_ref().unwrap()[0].persistent_volume_claim.as_ref().unwrap();
        assert_eq!(claim.read_only, Some(end == End::Source), "{end:?}");
    }
}

#[test]
fn hook_jobs_pass_pod_security_baseline_and_keep_the_images_user() {
    let migration = migration();
    let argv = ["sh".to_owned(), "-c".to_owned(), "true".to_owned()];
    for program in [HookProgram::Playbook, HookProgram::Command(&argv)] {
        let spec = HookJobSpec {
            migration: &migration,
            hook: "h",
            phase: "PreBackup",
            namespace: "app",
            image: "quay.io/konveyor/hook-runner:latest",
            service_account: Some("hooks"),
            program,
            env: &[],
            deadline: Duration::from_secs(60),
        };
        let job = hook_job(&spec, "mover-hook-prebackup-h-abcde");
        let template = job.spec.unwrap().template;
        let pod = template.spec.as_ref().unwrap();
        assert_eq!(baseline_violations(template.metadata.as_ref().unwrap(), pod), Vec::<String>::new(), "{program:?}");
        let context = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!((context.run_as_user, context.run_as_non_root), (None, None), "the image's user is kept");
        assert_eq!(context.allow_privilege_escalation, Some(false));
    }
}

#[test]
fn the_baseline_checker_flags_each_rule() {
    type Break = fn(&mut Pod);
    let breaks: [(&str, Break); 14] = [
        ("hostNetwork", |pod| pod.spec.as_mut().unwrap().host_network = Some(true)),
        ("hostPID", |pod| pod.spec.as_mut().unwrap().host_pid = Some(true)),
        ("hostIPC", |pod| pod.spec.as_mut().unwrap().host_ipc = Some(true)),
        ("hostPath volume", |pod| {
            pod.spec.as_mut().unwrap().volumes.as_mut().unwrap().push(Volume {
                name: "host".to_owned(),
                host_path: Some(HostPathVolumeSource { path: "/".to_owned(), type_: None }),
                ..Volume::default()
            });
        }),
        ("hostPort", |pod| pod.spec.as_mut().unwrap().containers[0].ports.as_mut().unwrap()[0].host_port = Some(7443)),
        ("privileged", |pod| context(pod).privileged = Some(true)),
        ("capabilities", |pod| {
            context(pod).capabilities = Some(Capabilities { add: Some(vec!["SYS_ADMIN".to_owned()]), drop: None });
        }),
        ("seccomp Unconfined", |pod| {
            context(pod).seccomp_profile =
                Some(SeccompProfile { type_: "Unconfined".to_owned(), localhost_profile: None });
        }),
        ("procMount", |pod| context(pod).proc_mount = Some("Unmasked".to_owned())),
        ("SELinux options", |pod| {
            context(pod).se_linux_options =
                Some(SELinuxOptions { type_: Some("spc_t".to_owned()), ..SELinuxOptions::default() });
        }),
        ("AppArmor profile", |pod| {
            context(pod).app_armor_profile =
                Some(AppArmorProfile { type_: "Unconfined".to_owned(), localhost_profile: None });
        }),
        ("AppArmor annotation", |pod| {
            pod.metadata.annotations.get_or_insert_default().insert(
                "container.apparmor.security.beta.kubernetes.io/mover-agent".to_owned(),
                "unconfined".to_owned(),
            );
        }),
        ("unsafe sysctl", |pod| {
            let context = pod.spec.as_mut().unwrap().security_context.get_or_insert_default();
            context.sysctls = Some(vec![Sysctl { name: "kernel.msgmax".to_owned(), value: "1".to_owned() }]);
        }),
        ("hostProcess", |pod| {
            context(pod).windows_options = Some(WindowsSecurityContextOptions {
                host_process: Some(true),
                ..WindowsSecurityContextOptions::default()
            });
        }),
    ];
    for (rule, break_it) in breaks {
        let mut pod = pod_of(End::Target);
        break_it(&mut pod);
        let found = baseline_violations(&pod.metadata, pod.spec.as_ref().unwrap());
        assert_eq!(found, vec![rule.to_owned()], "breaking {rule}");
    }
}

fn context(pod: &mut Pod) -> &mut SecurityContext {
    pod.spec.as_mut().unwrap().containers[0].security_context.get_or_insert_default()
}

#[test]
fn the_node_agent_is_flagged_privileged_and_its_namespace_allows_it() {
    let daemon_set = node_agent(&NodeAgent {
        namespace: "mover-system",
        image: DEFAULT_IMAGE,
        kubelet_root: "/var/lib/kubelet",
        port: 7443,
    });
    let template = daemon_set.spec.unwrap().template;
    let found = baseline_violations(&template.metadata.unwrap_or_default(), &template.spec.unwrap());
    assert_eq!(found, ["hostPath volume", "privileged"]);
    for (strategy, level) in [(Strategy::Pod, "baseline"), (Strategy::Node, "privileged")] {
        let objects = install_objects(&Install { strategy, ..Install::default() });
        let Object::Namespace(namespace) = &objects[0] else { panic!("the namespace comes first") };
        let labels = namespace.metadata.labels.as_ref().unwrap();
        for mode in ["enforce", "audit", "warn"] {
            assert_eq!(labels[&format!("pod-security.kubernetes.io/{mode}")], level, "{strategy:?} {mode}");
        }
    }
}

#[test]
fn no_rbac_rule_uses_a_wildcard_and_port_forwards_are_granted_only_when_asked() {
    for (strategy, port_forward) in [(Strategy::Pod, false), (Strategy::Node, false), (Strategy::Pod, true)] {
        let install = Install { namespace: "mover-system", strategy, port_forward, ..Install::default() };
        let rbac = rbac::rbac(&install);
        let mut rules = rbac.all_rules().peekable();
        assert!(rules.peek().is_some());
        let mut forwards = false;
        for rule in rules {
            assert!(!has_wildcard(rule), "{rule:?}");
            assert!(rule.non_resource_urls.is_none(), "{rule:?}");
            forwards |= rule.resources.iter().flatten().any(|r| r == "pods/portforward");
        }
        assert_eq!(forwards, port_forward, "{strategy:?}");
    }
    let mut wild = rbac::coordinator_rules(false).remove(0);
    wild.verbs.push("*".to_owned());
    assert!(has_wildcard(&wild));
}

fn request(
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Request {
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) => (resource, Some(sub.to_owned())),
        None => (resource, None),
    };
    Request {
        user: user.to_owned(),
        verb: verb.to_owned(),
        group: group.to_owned(),
        resource: resource.to_owned(),
        subresource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    }
}

#[test]
fn the_audit_checks_requests_against_each_identity() {
    let install = rbac::rbac(&Install { namespace: "mover-system", strategy: Strategy::Node, ..Install::default() });
    let coordinator = rbac::service_account_user("mover-system", "mover");
    let agent = rbac::service_account_user("mover-system", "mover-agent");
    let grants = install.grants_of(&coordinator);
    let ok = request(&coordinator, "get", "", "persistentvolumeclaims", Some("app"), Some("data"));
    assert!(grants.allows(&ok));
    assert!(grants.allows(&request(&coordinator, "list", "storage.k8s.io", "storageclasses", None, None)));
    for denied in [
        request(&coordinator, "update", "", "namespaces", None, Some("app")),
        request(&coordinator, "patch", "", "namespaces", None, Some("app")),
        request(&coordinator, "delete", "", "serviceaccounts", Some("app"), Some("default")),
        request(&coordinator, "get", "", "pods/exec", Some("app"), Some("p")),
        request(&coordinator, "create", "apps", "deployments", Some("app"), None),
        request(&coordinator, "delete", "apps", "deployments", Some("app"), Some("web")),
        request(&coordinator, "update", "", "secrets", Some("app"), Some("s")),
        request(&coordinator, "create", "", "pods/portforward", Some("app"), Some("p")),
    ] {
        assert!(!grants.allows(&denied), "{denied:?}");
    }
    let agent_grants = install.grants_of(&agent);
    let own = request(&agent, "get", "", "secrets", Some("mover-system"), Some("mover-agent-identity"));
    assert!(agent_grants.allows(&own));
    assert!(!agent_grants.allows(&request(&agent, "get", "", "secrets", Some("mover-system"), Some("other"))));
    assert!(!agent_grants.allows(&request(&agent, "get", "", "secrets", Some("app"), Some("mover-agent-identity"))));
    assert!(!agent_grants.allows(&request(&agent, "list", "", "pods", Some("mover-system"), None)));
    assert!(install.grants_of("system:anonymous").cluster.is_empty());
    // Unused: everything but the one verb and resource used.
    assert_eq!(agent_grants.unused(std::slice::from_ref(&own)), ["watch core/secrets"]);
    let unused = grants.unused(&[ok]);
    assert!(!unused.contains(&"get core/persistentvolumeclaims".to_owned()));
    assert!(unused.contains(&"create core/pods".to_owned()));
    assert!(unused.contains(&"list storage.k8s.io/storageclasses".to_owned()));
}

#[test]
fn recorded_requests_parse_from_the_simulated_servers_json_lines() {
    let line = r#"{"user":"u","verb":"create","apiGroup":"","resource":"pods","subresource":"portforward","namespace":"app","name":"p","code":201}"#;
    let request: Request = serde_json::from_str(line).unwrap();
    assert_eq!(request.rbac_resource(), "pods/portforward");
    assert_eq!(request.namespace.as_deref(), Some("app"));
}
