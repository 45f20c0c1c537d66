//! Which cluster: a kubeconfig context (or the pod's own service account inside a cluster)
//! turned into a client. The front end says where the kubeconfig is; this library reads no
//! environment.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::KubeError;

/// Where cluster access comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Kubeconfig files, merged in order as kubectl merges `KUBECONFIG`'s list.
    Kubeconfig(Vec<PathBuf>),
    /// The service account of the pod this runs in.
    InCluster,
}

/// One cluster, reached.
#[derive(Clone)]
pub struct Cluster {
    /// The context's name (`in-cluster` inside a pod), for messages.
    pub context: String,
    /// The client.
    pub client: kube::Client,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("context", &self.context).finish_non_exhaustive()
    }
}

/// Reads `access` and makes a client for `context` (`None`: the kubeconfig's current context).
pub async fn connect(access: &Access, context: Option<&str>) -> Result<Cluster, KubeError> {
    let (name, config) = match access {
        Access::InCluster => {
            if let Some(context) = context {
                return Err(KubeError::Config(format!(
                    "context `{context}` was asked for, but no kubeconfig was found and in-cluster access has no contexts; \
                     point KUBECONFIG at a kubeconfig that has it"
                )));
            }
            let config = kube::Config::incluster().map_err(|e| {
                KubeError::Config(format!(
                    "no kubeconfig was found and this is not a pod with a service account ({e}); set KUBECONFIG"
                ))
            })?;
            ("in-cluster".to_owned(), config)
        }
        Access::Kubeconfig(paths) => {
            let kubeconfig = read(paths)?;
            let name = match context {
                Some(context) => context.to_owned(),
                None => kubeconfig.current_context.clone().ok_or_else(|| {
                    KubeError::Config(format!(
                        "the kubeconfig ({}) has no current context: name one (`k8s://CONTEXT/…`, or a plan's \
                         `clusters:`); it has {}",
                        shown(paths),
                        contexts(&kubeconfig)
                    ))
                })?,
            };
            if !kubeconfig.contexts.iter().any(|c| c.name == name) {
                return Err(KubeError::Config(format!(
                    "the kubeconfig ({}) has no context `{name}`; it has {}",
                    shown(paths),
                    contexts(&kubeconfig)
                )));
            }
            let options = KubeConfigOptions { context: Some(name.clone()), ..KubeConfigOptions::default() };
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| KubeError::Config(format!("context `{name}` in {}: {e}", shown(paths))))?;
            (name, config)
        }
    };
    let client = kube::Client::try_from(config)
        .map_err(|e| KubeError::Config(format!("cannot make a client for context `{name}`: {e}")))?;
    Ok(Cluster { context: name, client })
}

fn read(paths: &[PathBuf]) -> Result<Kubeconfig, KubeError> {
    let mut merged: Option<Kubeconfig> = None;
    for path in paths {
        let next = Kubeconfig::read_from(path)
            .map_err(|e| KubeError::Config(format!("cannot read the kubeconfig `{}`: {e}", path.display())))?;
        merged = Some(match merged {
            None => next,
            Some(merged) => merged
                .merge(next)
                .map_err(|e| KubeError::Config(format!("cannot merge the kubeconfigs {}: {e}", shown(paths))))?,
        });
    }
    merged.ok_or_else(|| KubeError::Config("no kubeconfig was given".to_owned()))
}

fn shown(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
}

fn contexts(kubeconfig: &Kubeconfig) -> String {
    if kubeconfig.contexts.is_empty() {
        return "no contexts".to_owned();
    }
    let names: Vec<String> = kubeconfig.contexts.iter().map(|c| format!("`{}`", c.name)).collect();
    format!("the contexts {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: one
  cluster: {server: 'https://127.0.0.1:1'}
users:
- name: admin
  user: {token: secret}
contexts:
- name: source
  context: {cluster: one, user: admin}
- name: target
  context: {cluster: one, user: admin}
";

    #[tokio::test]
    async fn a_missing_context_names_the_ones_there_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, KUBECONFIG).unwrap();
        let access = Access::Kubeconfig(vec![path]);
        let error = connect(&access, Some("prod")).await.unwrap_err().to_string();
        assert!(error.contains("no context `prod`") && error.contains("`source`, `target`"), "{error}");
        let error = connect(&access, None).await.unwrap_err().to_string();
        assert!(error.contains("no current context"), "{error}");
        let cluster = connect(&access, Some("target")).await.unwrap();
        assert_eq!(cluster.context, "target");
    }
}
