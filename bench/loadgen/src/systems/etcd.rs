//! A 3-member etcd cluster on 127.0.0.1 (ports picked free, never the test
//! bed's 2379-2381), data dirs on disk, etcd's defaults otherwise (fsync on,
//! snapshot count, no auto-compaction); logs at warn.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::{free_port, fresh_dir, spawn, wait_until, Cluster};
use crate::clients::Target;
use crate::error::BenchError;
use crate::etcdpb;

/// Members of the cluster.
pub const MEMBERS: usize = 3;

pub async fn start(binary: &Path, base: &Path, name: &str, keep: bool) -> Result<Cluster, BenchError> {
    let dir = fresh_dir(base, name)?;
    let mut ports = vec![];
    for _ in 0..MEMBERS {
        let (client, peer) = (free_port()?, free_port()?);
        if [2379u16, 2380, 2381].contains(&client) || [2379u16, 2380, 2381].contains(&peer) {
            return Err(BenchError::Setup("the OS offered a test-bed etcd port".into()));
        }
        ports.push((client, peer));
    }
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}")).collect();
    let mut procs = vec![];
    for (i, (c, p)) in ports.iter().enumerate() {
        let args: Vec<String> = [
            "--name",
            &format!("e{i}"),
            "--data-dir",
            &dir.join(format!("e{i}")).display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{c}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{c}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{p}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{p}"),
            "--initial-cluster",
            &initial.join(","),
            "--initial-cluster-token",
            &format!("pbft-bench-{}", std::process::id()),
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        procs.push(spawn(&format!("e{i}"), binary, &args, &[], &dir.join(format!("e{i}.log")))?);
    }
    let mut channels: Vec<Channel> = vec![];
    for (c, _) in &ports {
        let ep = Endpoint::from_shared(format!("http://127.0.0.1:{c}"))
            .map_err(|e| BenchError::Setup(e.to_string()))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        channels.push(ep.connect_lazy());
    }
    let mut cluster = Cluster {
        name: name.to_string(),
        procs,
        target: Target::Etcd { channels: channels.clone() },
        dir,
        keep,
        metrics: vec![],
    };
    // Ready: a put through every member commits.
    wait_until(&mut cluster, name, 60, || {
        let channels = channels.clone();
        async move {
            for (i, ch) in channels.into_iter().enumerate() {
                let mut c = etcdpb::kv_client::KvClient::new(ch);
                let mut req = tonic::Request::new(etcdpb::PutRequest {
                    key: bytes::Bytes::from(format!("ready-{i}")),
                    value: bytes::Bytes::from_static(b"1"),
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(2));
                c.put(req).await.map_err(|s| format!("e{i}: {}", s.message()))?;
            }
            Ok(())
        }
    })
    .await?;
    Ok(cluster)
}

/// `etcd --version`'s first line.
pub fn version(binary: &PathBuf) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
