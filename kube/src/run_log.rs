//! Where a cluster plan's final run is kept between runs ([`mover_plan::RunLog`]): the
//! `ConfigMap` `mover-run-<plan>` in the agents namespace of the source cluster, whose
//! `record.json` is the run's [`RunRecord`]. In the cluster rather than on the coordinator's
//! machine, so that a rerun from another machine resumes too; beside the install (not in an
//! application namespace, which the migration may delete).

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use mover_plan::{Plan, RunLog, RunRecord};

use crate::context::{Access, Cluster, connect};
use crate::error::KubeError;
use crate::objects::labels::{MANAGED_BY, PLAN_ANNOTATION, dns_name};

/// The key of the record in the `ConfigMap`.
const RECORD_KEY: &str = "record.json";

/// Final runs kept in the source cluster.
pub struct ClusterRunLog {
    access: Access,
    /// The source cluster's context (`None`: the current one).
    context: Option<String>,
    /// The agents namespace there.
    namespace: String,
    /// The source cluster's client, made on first use (a run keeps its record at every step).
    cluster: tokio::sync::OnceCell<Cluster>,
}

impl ClusterRunLog {
    /// Records in namespace `namespace` of the cluster of `context`.
    #[must_use]
    pub fn new(access: Access, context: Option<String>, namespace: String) -> Self {
        ClusterRunLog { access, context, namespace, cluster: tokio::sync::OnceCell::new() }
    }

    /// The `ConfigMap`'s name for plan `plan`.
    #[must_use]
    pub fn name(plan: &str) -> String {
        dns_name("mover-run-", plan)
    }

    async fn api(&self) -> Result<(Api<ConfigMap>, String), KubeError> {
        let cluster = self.cluster.get_or_try_init(|| connect(&self.access, self.context.as_deref())).await?.clone();
        Ok((Api::namespaced(cluster.client, &self.namespace), cluster.context))
    }

    async fn read(&self, plan: &Plan) -> anyhow::Result<Option<RunRecord>> {
        let name = Self::name(&plan.name);
        let (api, context) = self.api().await?;
        let shown = format!("ConfigMap `{}/{name}`", self.namespace);
        let found = api.get_opt(&name).await.map_err(KubeError::api(&context, format!("reading {shown}")))?;
        let Some(text) = found.and_then(|map| map.data).and_then(|mut data| data.remove(RECORD_KEY)) else {
            return Ok(None);
        };
        let record = serde_json::from_str(&text).map_err(|error| {
            anyhow::anyhow!(
                "{shown} (context `{context}`) is not a record of a mover run ({error}); delete it to start the final run from the beginning"
            )
        })?;
        Ok(Some(record))
    }

    async fn write(&self, plan: &Plan, record: &RunRecord) -> anyhow::Result<()> {
        let name = Self::name(&plan.name);
        let (api, context) = self.api().await?;
        let data = BTreeMap::from([(RECORD_KEY.to_owned(), serde_json::to_string(record)?)]);
        let patch = serde_json::json!({"data": data});
        let doing = format!("keeping the run's record in ConfigMap `{}/{name}`", self.namespace);
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(KubeError::api(&context, doing)(error).into()),
        }
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name),
                labels: Some(BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])),
                annotations: Some(BTreeMap::from([(PLAN_ANNOTATION.to_owned(), plan.name.clone())])),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        match api.create(&PostParams::default(), &map).await {
            Ok(_) => Ok(()),
            // The namespace itself is missing: say what makes it, not only the 404.
            Err(kube::Error::Api(status)) if status.code == 404 => Err(anyhow::anyhow!(
                "the namespace `{}` does not exist in context `{context}`; mover's install makes it \
                 (`mover k8s manifests | kubectl apply -f -`), or name another with the agents namespace option",
                self.namespace
            )),
            Err(error) => Err(KubeError::api(&context, doing)(error).into()),
        }
    }

    /// Forgets plan `plan`'s record (a rollback's last step): the next final run starts from
    /// the beginning. A record that is not there is no error.
    pub async fn forget(&self, plan: &str) -> Result<(), KubeError> {
        let name = Self::name(plan);
        let (api, context) = self.api().await?;
        match api.delete(&name, &kube::api::DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => {
                Err(KubeError::api(&context, format!("deleting ConfigMap `{}/{name}`", self.namespace))(error))
            }
        }
    }
}

impl RunLog for ClusterRunLog {
    fn load<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, anyhow::Result<Option<RunRecord>>> {
        Box::pin(self.read(plan))
    }

    fn save<'a>(&'a self, plan: &'a Plan, record: &'a RunRecord) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.write(plan, record))
    }
}
