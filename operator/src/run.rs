//! `pbft-operator run`: the controller process. Serves `/metrics`,
//! `/healthz` and `/readyz`, waits for the leader lease (when enabled), then
//! runs the ConsensusCluster controller until SIGTERM or until it loses the lease.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::Api;
use kube::runtime::events::Reporter;
use kube::runtime::{watcher, Controller};

use crate::build::MANAGED_BY;
use crate::events::EventPublisher;
use crate::leader::Election;
use crate::metrics::Metrics;
use crate::reconcile::evidence_watch::EvidenceWatch;
use crate::reconcile::{error_policy, reconcile, Context};
use crate::validate::OperatorDefaults;
use crate::ConsensusCluster;

/// Settings of the controller process (the flags of `pbft-operator run`).
#[derive(Clone, Debug, clap::Args)]
pub struct RunSettings {
    /// Replica image for clusters whose spec names none.
    #[arg(long, env = "PBFT_REPLICA_IMAGE", default_value = crate::validate::DEFAULT_REPLICA_IMAGE)]
    pub replica_image: String,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "PBFT_OPERATOR_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Elect one active instance through a Lease (turn off only when running a single instance).
    #[arg(long, env = "PBFT_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "pbft-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Identity in the Lease (default: the pod name, else pbft-operator-<pid>).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "PBFT_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// TEST ONLY: honour the `consensus.pbft.dev/fault-injection` annotation of
    /// new ConsensusClusters (chosen members run --fault-injection-image). Never
    /// in production: a faulty member is a Byzantine replica on purpose.
    #[arg(long, env = "PBFT_ALLOW_FAULT_INJECTION", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub allow_fault_injection: bool,
    /// The replica image built with the `fault-injection` feature (used only with --allow-fault-injection).
    #[arg(long, env = "PBFT_FAULT_INJECTION_IMAGE", default_value = crate::validate::DEFAULT_FAULT_INJECTION_IMAGE)]
    pub fault_injection_image: String,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[from] kube::Error),
    #[error("listening on {addr} for metrics: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("leader election needs the lease namespace (--lease-namespace or POD_NAMESPACE)")]
    NoLeaseNamespace,
    #[error("lost the leader lease")]
    LostLease,
}

async fn serve_http(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    use axum::{extract::State, routing::get, Router};
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    m.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        // Ready once the process runs: a standby instance is ready to take over.
        .route("/readyz", get(|| async { "ready\n" }))
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics server: {e}");
    }
}

/// Runs the operator until SIGTERM/SIGINT (Ok) or a lost lease (Err).
pub async fn run(mut s: RunSettings) -> Result<(), RunError> {
    let identity = s.identity.take().unwrap_or_else(|| format!("pbft-operator-{}", std::process::id()));
    s.watch_namespace = s.watch_namespace.take().filter(|n| !n.is_empty());
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(s.metrics_listen)
        .await
        .map_err(|source| RunError::Listen { addr: s.metrics_listen, source })?;
    tokio::spawn(serve_http(listener, metrics.clone()));
    let client = kube::Client::try_default().await?;

    let mut lost_lease = None;
    if s.leader_election {
        let ns = s.lease_namespace.clone().ok_or(RunError::NoLeaseNamespace)?;
        let election = Election {
            api: Api::<Lease>::namespaced(client.clone(), &ns),
            lease_name: s.lease_name.clone(),
            identity: identity.clone(),
        };
        tokio::select! {
            _ = election.acquire() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        metrics.set_leader(true);
        lost_lease = Some(tokio::spawn(async move { election.keep().await }));
    } else {
        metrics.set_leader(true);
    }

    let reporter = Reporter { controller: "pbft-operator".into(), instance: Some(identity) };
    let (evidence_watch, evidence_trigger) = EvidenceWatch::new();
    tokio::spawn(evidence_watch.clone().run());
    let ctx = Arc::new(Context {
        client: client.clone(),
        defaults: OperatorDefaults {
            replica_image: s.replica_image.clone(),
            fault_injection_image: s.allow_fault_injection.then(|| s.fault_injection_image.clone()),
        },
        events: EventPublisher::new(client.clone(), reporter),
        metrics: metrics.clone(),
        evidence_watch,
    });
    fn api<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let controller = Controller::new(api::<ConsensusCluster>(&client, &s.watch_namespace), watcher::Config::default())
        .owns(api::<Pod>(&client, &s.watch_namespace), owned.clone())
        .owns(api::<ConfigMap>(&client, &s.watch_namespace), owned.clone())
        .owns(api::<Service>(&client, &s.watch_namespace), owned.clone())
        .owns(api::<Secret>(&client, &s.watch_namespace), owned.clone())
        .owns(api::<PersistentVolumeClaim>(&client, &s.watch_namespace), owned)
        .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(evidence_trigger))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            match r {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, namespace = ?obj.namespace, "reconciled"),
                Err(e) => tracing::debug!("controller: {e}"),
            }
        });
    if s.allow_fault_injection {
        tracing::warn!(image = %s.fault_injection_image, "FAULT INJECTION ALLOWED (test-only): clusters may ask for Byzantine members");
    }
    tracing::info!(watch_namespace = ?s.watch_namespace, replica_image = %s.replica_image, "controller started");
    match lost_lease {
        None => {
            controller.await;
            Ok(())
        }
        Some(lease) => tokio::select! {
            _ = controller => Ok(()),
            _ = lease => Err(RunError::LostLease),
        },
    }
}
