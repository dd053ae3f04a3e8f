//! n `pbft-replica` processes on 127.0.0.1: keys, a membership file, one
//! data dir each (the write-ahead log is always on and fsynced), default
//! protocol settings unless told otherwise.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pbft::crypto::Keypair;
use pbft::kvclient::Endpoints;
use pbft::server::membership_file::{MemberEntry, MembershipFile};

use super::{free_port, fresh_dir, spawn, wait_until, Cluster};
use crate::clients::Target;
use crate::error::{io, BenchError};

/// A Byzantine replica: which one, the fault-injection build, and `PBFT_FAULTS`.
#[derive(Clone, Debug)]
pub struct Faulty {
    pub id: u32,
    pub binary: PathBuf,
    pub faults: String,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct OursConfig {
    pub n: u32,
    pub binary: PathBuf,
    pub faulty: Option<Faulty>,
    /// Extra `pbft-replica` flags, the same for every replica.
    pub extra_args: Vec<String>,
}

fn write_private(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))
}

/// Starts the replicas and waits until every one reports `ready`.
pub async fn start(cfg: &OursConfig, base: &Path, name: &str, keep: bool) -> Result<Cluster, BenchError> {
    let dir = fresh_dir(base, name)?;
    let admin = Keypair::from_secret([200; 32]);
    let keys: Vec<Keypair> = (0..cfg.n).map(|i| Keypair::from_secret([i as u8 + 1; 32])).collect();
    let mut ports = vec![];
    for _ in 0..cfg.n {
        ports.push([free_port()?, free_port()?, free_port()?, free_port()?]);
    }
    let members = (0..cfg.n)
        .map(|i| MemberEntry {
            id: i,
            public_key: hex::encode(keys[i as usize].public_bytes()),
            address: format!("127.0.0.1:{}", ports[i as usize][0]),
        })
        .collect();
    let file = MembershipFile { epoch: 0, admin_key: hex::encode(admin.public_bytes()), members };
    let membership = dir.join("membership.yaml");
    let yaml = serde_yaml::to_string(&file).map_err(|e| BenchError::Setup(format!("membership file: {e}")))?;
    std::fs::write(&membership, yaml).map_err(io(&membership))?;
    let mut procs = vec![];
    for i in 0..cfg.n {
        let p = ports[i as usize];
        let key_file = dir.join(format!("r{i}.key"));
        write_private(&key_file, &hex::encode(keys[i as usize].secret_bytes()))?;
        let data = dir.join(format!("r{i}"));
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            data.display().to_string(),
            "--key-file".into(),
            key_file.display().to_string(),
            "--membership-file".into(),
            membership.display().to_string(),
            "--peer-listen".into(),
            format!("127.0.0.1:{}", p[0]),
            "--client-listen".into(),
            format!("127.0.0.1:{}", p[1]),
            "--admin-listen".into(),
            format!("127.0.0.1:{}", p[2]),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", p[3]),
        ];
        args.extend(cfg.extra_args.iter().cloned());
        let mut env = vec![("PBFT_LOG".to_string(), "warn".to_string())];
        let mut binary = cfg.binary.clone();
        let mut pname = format!("r{i}");
        if let Some(f) = cfg.faulty.as_ref().filter(|f| f.id == i) {
            binary = f.binary.clone();
            env.push(("PBFT_FAULTS".into(), f.faults.clone()));
            pname = format!("r{i}-byzantine-{}", f.faults);
        }
        procs.push(spawn(&pname, &binary, &args, &env, &dir.join(format!("r{i}.log")))?);
    }
    let overrides: Vec<(u32, String)> =
        (0..cfg.n).map(|i| (i, format!("127.0.0.1:{}", ports[i as usize][1]))).collect();
    let endpoints = Endpoints::from_file(&membership, &overrides)?;
    let metrics = ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], p[3]))).collect();
    let mut cluster = Cluster {
        name: name.to_string(),
        procs,
        target: Target::Ours { endpoints: endpoints.clone() },
        dir,
        keep,
        metrics,
    };
    let n = cfg.n as usize;
    wait_until(&mut cluster, name, 60, || {
        let endpoints = endpoints.clone();
        async move {
            let st = endpoints.status().await;
            let ready = st.iter().filter(|(_, _, r)| r.as_ref().is_ok_and(|s| s.ready)).count();
            if ready == n {
                Ok(())
            } else {
                Err(format!("{ready}/{n} replicas ready"))
            }
        }
    })
    .await?;
    Ok(cluster)
}

/// The current primary's index (as most replicas report it) and view.
pub async fn primary(cluster: &Cluster) -> Option<(usize, u64)> {
    let Target::Ours { endpoints } = &cluster.target else { return None };
    let mut votes = std::collections::BTreeMap::new();
    for (_, _, r) in endpoints.status().await {
        if let Ok(s) = r {
            *votes.entry((s.primary as usize, s.view)).or_insert(0) += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, c)| *c).map(|(k, _)| k)
}

/// Each replica's memory limit and evidence count (from admin Status).
pub async fn status_summary(cluster: &Cluster) -> Vec<serde_json::Value> {
    let Target::Ours { endpoints } = &cluster.target else { return vec![] };
    endpoints
        .status()
        .await
        .into_iter()
        .map(|(id, _, r)| match r {
            Ok(s) => serde_json::json!({"id": id, "view": s.view, "primary": s.primary, "executed_seq": s.executed_seq,
                "memory_used_bytes": s.memory_used_bytes, "memory_limit_bytes": s.memory_limit_bytes,
                "evidence": s.evidence_count, "ready": s.ready}),
            Err(e) => serde_json::json!({"id": id, "error": e}),
        })
        .collect()
}

/// Counters of one replica's /metrics that explain its throughput.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    pub batches: f64,
    pub batched_requests: f64,
    pub verifications: f64,
    pub fsyncs: f64,
}

/// Reads the counters from Prometheus text (`pbft_batch_requests_{sum,count}`,
/// `pbft_signature_verifications_total`, `pbft_wal_fsyncs_total`).
pub fn parse_counters(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut it = line.split_whitespace();
        let (Some(name), Some(value)) = (it.next(), it.next()) else { continue };
        let Ok(v) = value.parse::<f64>() else { continue };
        match name {
            "pbft_batch_requests_count" => c.batches = v,
            "pbft_batch_requests_sum" => c.batched_requests = v,
            "pbft_signature_verifications_total" => c.verifications = v,
            "pbft_wal_fsyncs_total" => c.fsyncs = v,
            _ => {}
        }
    }
    c
}

/// Scrapes one replica's counters (None when it does not answer).
pub async fn scrape(addr: SocketAddr) -> Option<Counters> {
    let (status, body) =
        crate::http::HttpConn::new(addr).get("/metrics", std::time::Duration::from_secs(2)).await.ok()?;
    (status == 200).then(|| parse_counters(&String::from_utf8_lossy(&body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_prometheus_text() {
        let t = "# HELP x\npbft_batch_requests_sum 300.0\npbft_batch_requests_count 10\npbft_batch_requests_bucket{le=\"1.0\"} 2\n\
                 pbft_signature_verifications_total 1234\npbft_wal_fsyncs_total 55\ngarbage\npbft_wal_fsyncs_total x\n";
        assert_eq!(
            parse_counters(t),
            Counters { batches: 10.0, batched_requests: 300.0, verifications: 1234.0, fsyncs: 55.0 }
        );
    }
}
