//! One container as one process: its program, arguments and environment as a kubelet builds them,
//! its user, its log file, and the child-side set-up (network namespace, mount namespace, user,
//! working directory) between `fork` and `exec`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use rustix::process::{Gid, Uid};

use super::images::Image;
use super::mounts::{MountPlan, c_path, config_error};
use crate::pods::StartError;

/// What every container of a pod shares.
pub(crate) struct PodContext<'a> {
    pub(crate) pod: &'a Pod,
    pub(crate) ip: Ipv4Addr,
    pub(crate) host_ip: Ipv4Addr,
    /// Variables the runner gives every container (as a kubelet gives its service variables).
    pub(crate) runner_env: &'a [(String, String)],
    pub(crate) volumes: &'a BTreeMap<String, PathBuf>,
    pub(crate) log_dir: &'a Path,
    pub(crate) netns: &'a Arc<File>,
}

/// The user a container runs as, from the pod's and the container's `securityContext`.
#[derive(Debug, Default, PartialEq, Eq)]
struct User {
    uid: Option<u32>,
    gid: Option<u32>,
    groups: Option<Vec<u32>>,
}

/// Starts `container` of the pod in `context`.
pub(crate) fn spawn(container: &Container, image: &Image, context: &PodContext<'_>) -> Result<Child, StartError> {
    let env = environment(container, image, context)?;
    let expand_all = |words: &Option<Vec<String>>| -> Vec<String> {
        words.iter().flatten().map(|word| expand(word, &env)).collect()
    };
    let (program, mut arguments) = image.resolve(&expand_all(&container.command))?;
    arguments.extend(expand_all(&container.args));
    let user = user(container, context.pod)?;
    let mut mounts = MountPlan::new(container, context.volumes, &program)?;
    // An image without WORKDIR starts in `/`, not wherever the runner happens to be.
    let working_dir = container.working_dir.as_deref().filter(|dir| !dir.is_empty()).unwrap_or("/");
    let working_dir = c_path(Path::new(working_dir))?;
    let log = open_log(context.log_dir, &container.name)?;
    let duplicate = |log: &File| log.try_clone().map_err(|e| config_error(&container.name, &format!("log file: {e}")));

    let mut command = Command::new(&program);
    command
        .args(&arguments)
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(duplicate(&log)?)
        .stderr(log)
        .process_group(0);
    let netns = Arc::clone(context.netns);
    let groups: Vec<Gid> = user.groups.iter().flatten().map(|g| Gid::from_raw(*g)).collect();
    let setup = move || -> std::io::Result<()> {
        rustix::thread::move_into_link_name_space(netns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
        mounts.apply()?;
        if user.groups.is_some() {
            rustix::thread::set_thread_groups(&groups)?;
        }
        if let Some(gid) = user.gid {
            rustix::thread::set_thread_gid(Gid::from_raw(gid))?;
        }
        if let Some(uid) = user.uid {
            rustix::thread::set_thread_uid(Uid::from_raw(uid))?;
        }
        rustix::process::chdir(working_dir.as_c_str())?;
        Ok(())
    };
    // SAFETY: `setup` only makes system calls (setns, unshare, mount, setgroups, setgid, setuid,
    // chdir) on values prepared before the fork; it allocates nothing and takes no lock. The child
    // is single-threaded, so the per-thread credential calls change the whole process.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(setup);
    }
    command.spawn().map_err(|e| StartError {
        reason: "RunContainerError".to_owned(),
        message: format!(
            "container {:?}: cannot start {} (entering the pod's namespaces, mounting its volumes, switching user or working directory): {e}",
            container.name,
            program.display()
        ),
    })
}

/// `<log_dir>/<container>.log`, appended to (stdout and stderr both go there).
fn open_log(log_dir: &Path, container: &str) -> Result<File, StartError> {
    let path = log_dir.join(format!("{container}.log"));
    fs::create_dir_all(log_dir)
        .and_then(|()| File::options().create(true).append(true).open(&path))
        .map_err(|e| config_error(container, &format!("cannot open the log file {}: {e}", path.display())))
}

/// The container's environment: the image's `ENV`, `HOSTNAME`, the runner's variables, then the
/// container's `env` in order, each value expanded with the variables before it.
fn environment(
    container: &Container,
    image: &Image,
    context: &PodContext<'_>,
) -> Result<Vec<(String, String)>, StartError> {
    let mut env = image.env();
    let pod_name = context.pod.metadata.name.clone().unwrap_or_default();
    set(&mut env, "HOSTNAME", pod_name);
    for (name, value) in context.runner_env {
        set(&mut env, name, value.clone());
    }
    for var in container.env.iter().flatten() {
        let value = env_value(var, context)
            .map_err(|what| config_error(&container.name, &format!("env {}: {what}", var.name)))?;
        let value = expand(&value, &env);
        set(&mut env, &var.name, value);
    }
    if container.env_from.as_ref().is_some_and(|from| !from.is_empty()) {
        return Err(config_error(
            &container.name,
            "envFrom is not supported by the simulated kubelet; list env entries",
        ));
    }
    Ok(env)
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(existing, _)| existing == name) {
        Some(entry) => entry.1 = value,
        None => env.push((name.to_owned(), value)),
    }
}

/// One `env` entry's value: literal, or from the downward API's `fieldRef`.
fn env_value(var: &EnvVar, context: &PodContext<'_>) -> Result<String, String> {
    let Some(source) = &var.value_from else {
        return Ok(var.value.clone().unwrap_or_default());
    };
    let Some(field) = &source.field_ref else {
        return Err("only value and valueFrom.fieldRef are supported by the simulated kubelet".into());
    };
    let (metadata, spec) = (&context.pod.metadata, context.pod.spec.as_ref());
    let from_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    let path = field.field_path.as_str();
    Ok(match path {
        "metadata.name" => metadata.name.clone().unwrap_or_default(),
        "metadata.namespace" => metadata.namespace.clone().unwrap_or_default(),
        "metadata.uid" => metadata.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => context.ip.to_string(),
        "status.hostIP" | "status.hostIPs" => context.host_ip.to_string(),
        _ => {
            let key = |prefix: &str| path.strip_prefix(prefix).and_then(|k| k.strip_suffix("']"));
            if let Some(key) = key("metadata.labels['") {
                from_map(&metadata.labels, key)
            } else if let Some(key) = key("metadata.annotations['") {
                from_map(&metadata.annotations, key)
            } else {
                return Err(format!("fieldRef {path:?} is not supported by the simulated kubelet"));
            }
        }
    })
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an undefined reference is kept
/// as written, and `$$` is a literal `$`.
fn expand(word: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|inner| inner.split_once(')')) {
            if let Some((_, value)) = env.iter().find(|(existing, _)| existing == name) {
                out.push_str(value);
            } else {
                out.push_str("$(");
                out.push_str(name);
                out.push(')');
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The user from the container's `securityContext`, else the pod's; refuses root under
/// `runAsNonRoot` with the kubelet's message.
fn user(container: &Container, pod: &Pod) -> Result<User, StartError> {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let own = container.security_context.as_ref();
    let id = |value: Option<i64>, what: &str| {
        value
            .map(|v| {
                u32::try_from(v).map_err(|_| config_error(&container.name, &format!("{what} {v} is not a valid id")))
            })
            .transpose()
    };
    let uid = id(own.and_then(|c| c.run_as_user).or(pod_context.and_then(|p| p.run_as_user)), "runAsUser")?;
    let gid = id(own.and_then(|c| c.run_as_group).or(pod_context.and_then(|p| p.run_as_group)), "runAsGroup")?;
    let non_root = own.and_then(|c| c.run_as_non_root).or(pod_context.and_then(|p| p.run_as_non_root));
    if non_root == Some(true) && uid.unwrap_or(0) == 0 {
        return Err(config_error(&container.name, "container has runAsNonRoot and image will run as root"));
    }
    let supplemental = pod_context.and_then(|p| p.supplemental_groups.clone());
    let groups = match supplemental {
        Some(groups) => Some(
            groups
                .into_iter()
                .map(|g| id(Some(g), "supplementalGroups").map(Option::unwrap_or_default))
                .collect::<Result<_, _>>()?,
        ),
        // Switching user drops root's supplementary groups, as a runtime does.
        None if uid.is_some() || gid.is_some() => Some(Vec::new()),
        None => None,
    };
    Ok(User { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let env = vec![("A".to_owned(), "one".to_owned()), ("B".to_owned(), "two".to_owned())];
        assert_eq!(expand("$(A)-$(B)", &env), "one-two");
        assert_eq!(expand("$(MISSING) $$(A) $A $", &env), "$(MISSING) $(A) $A $");
        assert_eq!(expand("--listen=:$(A)", &env), "--listen=:one");
    }

    #[test]
    fn run_as_non_root_refuses_root() {
        let pod = Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                security_context: Some(k8s_openapi::api::core::v1::PodSecurityContext {
                    run_as_non_root: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container = Container { name: "c".into(), ..Default::default() };
        let error = user(&container, &pod).unwrap_err();
        assert_eq!(error.reason, "CreateContainerConfigError");
        let container = Container {
            name: "c".into(),
            security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
                run_as_user: Some(1000),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(user(&container, &pod).unwrap(), User { uid: Some(1000), gid: None, groups: Some(vec![]) });
    }
}
