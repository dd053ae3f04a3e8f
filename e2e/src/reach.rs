//! Reaching a pod's port from the test process: directly at the pod IP when
//! this machine routes the pod network (the local test bed), else through the
//! apiserver's port-forward (kind, any remote cluster): a local listener per
//! (pod, port) whose every connection becomes one port-forward stream to the
//! pod of that name. Pods are addressed by name, so a replaced pod (same
//! name, new IP) is reached again without the caller noticing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::report::{Error, Result};
use crate::settings::ReachMode;

/// How pods are reached.
pub struct Reach {
    client: kube::Client,
    mode: Mutex<ReachMode>,
    forwards: Mutex<HashMap<(String, String, u16), SocketAddr>>,
}

impl Reach {
    pub fn new(client: kube::Client, mode: ReachMode) -> Arc<Reach> {
        Arc::new(Reach { client, mode: Mutex::new(mode), forwards: Mutex::new(HashMap::new()) })
    }

    /// The mode in use (`Auto` until the first pod was tried).
    pub fn mode(&self) -> ReachMode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Settles `Auto`: direct when `ip:port` of a running pod answers within 2 s.
    pub async fn detect(&self, ip: &str, port: u16) -> ReachMode {
        if self.mode() != ReachMode::Auto {
            return self.mode();
        }
        let direct = matches!(
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(host_port(ip, port))).await,
            Ok(Ok(_))
        );
        let mode = if direct { ReachMode::Direct } else { ReachMode::PortForward };
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        mode
    }

    /// `host:port` at which the test process reaches `port` of pod `name` (IP `ip`) in `ns`.
    pub async fn addr(&self, ns: &str, name: &str, ip: Option<&str>, port: u16) -> Result<String> {
        let mode = match (self.mode(), ip) {
            (ReachMode::Auto, Some(ip)) => self.detect(ip, port).await,
            (m, _) => m,
        };
        match mode {
            ReachMode::PortForward => self.forward(ns, name, port).await.map(|a| a.to_string()),
            ReachMode::Direct | ReachMode::Auto => {
                ip.map(|ip| host_port(ip, port)).ok_or_else(|| Error::Other(format!("pod {ns}/{name} has no IP yet")))
            }
        }
    }

    async fn forward(&self, ns: &str, name: &str, port: u16) -> Result<SocketAddr> {
        let key = (ns.to_string(), name.to_string(), port);
        if let Some(a) = self.forwards.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(*a);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Other(format!("port-forward listener: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::Other(format!("port-forward listener: {e}")))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = name.to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (pods, pod) = (pods.clone(), pod.clone());
                tokio::spawn(async move {
                    let Ok(mut pf) = pods.portforward(&pod, &[port]).await else { return };
                    if let Some(mut upstream) = pf.take_stream(port) {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    }
                    pf.abort();
                });
            }
        });
        self.forwards.lock().unwrap_or_else(|e| e.into_inner()).insert(key, local);
        Ok(local)
    }
}

/// `ip:port`, with brackets for IPv6.
pub fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}
