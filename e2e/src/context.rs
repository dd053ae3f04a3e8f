//! What every scenario shares: the API client, how pods are reached, the
//! settings, and the steps scenarios have in common (make a cluster and wait
//! for it, run pbftctl in a pod, read the operator's metrics).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams, PostParams};

use pbft_operator::crd::ConsensusCluster;

use crate::cmd;
use crate::k8s;
use crate::prom;
use crate::reach::Reach;
use crate::report::{kube_err, Error, Result};
use crate::settings::Settings;
use crate::topology::{Topology, Watcher};

/// The shared state of a run.
pub struct Ctx {
    pub settings: Settings,
    pub client: kube::Client,
    pub reach: Arc<Reach>,
}

/// Port of the operator's `/metrics` (the chart's default `metricsPort`).
pub const OPERATOR_METRICS_PORT: u16 = 8080;

impl Ctx {
    /// Connects with the default kubeconfig (`KUBECONFIG`, else ~/.kube/config, else in-cluster).
    pub async fn new(settings: Settings) -> Result<Ctx> {
        let client = kube::Client::try_default().await.map_err(kube_err("connecting with the kubeconfig"))?;
        let reach = Reach::new(client.clone(), settings.reach);
        Ok(Ctx { settings, client, reach })
    }

    /// Runs helm; must succeed.
    pub async fn helm(&self, args: &[&str], timeout: Duration) -> Result<String> {
        cmd::must(&self.settings.helm, args, None, timeout).await
    }

    /// Runs kubectl (stdin `input`); must succeed.
    pub async fn kubectl(&self, args: &[&str], input: Option<&str>, timeout: Duration) -> Result<String> {
        cmd::must(&self.settings.kubectl, args, input, timeout).await
    }

    /// Creates ConsensusCluster `ns/name` with `spec` (JSON) and `annotations`, in a fresh namespace.
    pub async fn create_cluster(
        &self,
        ns: &str,
        name: &str,
        spec: serde_json::Value,
        annotations: BTreeMap<String, String>,
    ) -> Result<()> {
        k8s::ensure_namespace(&self.client, ns).await?;
        let mut cc: ConsensusCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "consensus.pbft.dev/v1alpha1",
            "kind": "ConsensusCluster",
            "metadata": { "name": name, "namespace": ns, "annotations": annotations },
            "spec": spec,
        }))
        .map_err(|e| Error::Other(format!("test ConsensusCluster {name}: {e}")))?;
        cc.metadata.namespace = Some(ns.into());
        let api: Api<ConsensusCluster> = Api::namespaced(self.client.clone(), ns);
        api.create(&PostParams::default(), &cc).await.map_err(kube_err(format!("creating {ns}/{name}")))?;
        Ok(())
    }

    /// Waits until every member of `ns/name` is healthy (Available, all Active).
    pub async fn wait_available(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<(ConsensusCluster, Duration)> {
        k8s::wait_cc(&self.client, ns, name, &format!("{ns}/{name} fully Available"), timeout, k8s::fully_available)
            .await
    }

    /// The cluster as a client sees it now.
    pub async fn topology(&self, ns: &str, name: &str) -> Result<Topology> {
        Topology::fetch(&self.client, &self.reach, ns, name).await
    }

    /// A topology kept current every 500 ms.
    pub async fn watcher(&self, ns: &str, name: &str) -> Result<Arc<Watcher>> {
        Ok(Arc::new(
            Watcher::start(self.client.clone(), self.reach.clone(), ns, name, Duration::from_millis(500)).await?,
        ))
    }

    /// Runs pbftctl `args` in a pod in `ns` (the replica image, which ships
    /// it), with cluster `name`'s membership mounted at /etc/pbft; returns
    /// whether it exited 0, and its output.
    pub async fn pbftctl_pod(&self, ns: &str, name: &str, pod: &str, args: &[String]) -> Result<(bool, String)> {
        let mut full = vec!["--membership".to_string(), "/etc/pbft/membership.yaml".into()];
        full.extend(args.iter().cloned());
        let p: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": pod, "namespace": ns, "labels": { "pbft.dev/e2e": "client" } },
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "securityContext": { "runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": { "type": "RuntimeDefault" } },
                "containers": [{
                    "name": "pbftctl",
                    "image": self.settings.replica_image(),
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/usr/local/bin/pbftctl"],
                    "args": full,
                    "securityContext": { "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": { "drop": ["ALL"] } },
                    "resources": { "requests": { "cpu": "10m", "memory": "16Mi" }, "limits": { "memory": "64Mi" } },
                    "volumeMounts": [{ "name": "membership", "mountPath": "/etc/pbft", "readOnly": true }],
                }],
                "volumes": [{ "name": "membership", "configMap": { "name": format!("{name}-membership") } }],
            }
        }))
        .map_err(|e| Error::Other(format!("client pod: {e}")))?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.create(&PostParams::default(), &p).await.map_err(kube_err(format!("creating pod {pod}")))?;
        let (phase, _) = k8s::wait_for(
            &format!("pod {pod} to finish"),
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let api = api.clone();
                async move {
                    let p = api.get(pod).await.map_err(kube_err("reading client pod"))?;
                    let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                    Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
                }
            },
        )
        .await?;
        let logs = api.logs(pod, &LogParams::default()).await.unwrap_or_else(|e| format!("(no logs: {e})"));
        let _ = k8s::delete_pod(&self.client, ns, pod, Some(0)).await;
        Ok((phase == "Succeeded", logs))
    }

    /// The operator pods (label `app.kubernetes.io/name=pbft-operator`) in namespace `ns`.
    pub async fn operator_pods(&self, ns: &str) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().labels("app.kubernetes.io/name=pbft-operator");
        Ok(api.list(&lp).await.map_err(kube_err("listing operator pods"))?.items)
    }

    /// The leading operator's `/metrics` in namespace `ns`.
    pub async fn operator_metrics(&self, ns: &str) -> Result<Vec<prom::Sample>> {
        let mut last = Error::Other(format!("no running operator pod in {ns}"));
        for p in self.operator_pods(ns).await? {
            if !k8s::pod_ready(&p) {
                continue;
            }
            let name = p.metadata.name.clone().unwrap_or_default();
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
            let addr = self.reach.addr(ns, &name, ip.as_deref(), OPERATOR_METRICS_PORT).await?;
            match prom::http_get(&addr, "/metrics").await {
                Ok(text) => {
                    let samples = prom::parse(&text);
                    if prom::sum(&samples, "pbft_operator_leader", &[]) >= 1.0 {
                        return Ok(samples);
                    }
                    last = Error::Other(format!("{name} is not the leader"));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
