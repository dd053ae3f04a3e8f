//! `pbft-replica dev`: n replicas as tasks of this process on 127.0.0.1 with
//! a generated membership, each with its own data dir, key and ports.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::server::config::Overrides;
use crate::server::membership_file::{MemberEntry, MembershipFile};
use crate::server::{keys, node, ServerError};

/// Options of the dev cluster.
#[derive(Clone, Debug, clap::Args)]
pub struct DevArgs {
    /// Number of replicas (3f+1).
    #[arg(long, default_value_t = 4)]
    pub replicas: u32,
    /// First port; replica i uses base+10i (peers), +1 (clients), +2 (admin), +3 (metrics).
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Directory for data dirs, keys and the membership file.
    #[arg(long, default_value = "/tmp/pbft-dev")]
    pub dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io { path: path.into(), source }
}

/// Writes keys and the membership file (kept if present), then runs the replicas until `shutdown`.
pub async fn run(args: DevArgs, shutdown: watch::Receiver<bool>) -> Result<(), ServerError> {
    std::fs::create_dir_all(&args.dir).map_err(io(&args.dir))?;
    let admin_path = args.dir.join("admin.key");
    let (admin, _) = keys::load_or_generate(&admin_path)?;
    let port = |i: u32, k: u16| args.base_port + (i as u16) * 10 + k;
    let mut members = vec![];
    for i in 0..args.replicas {
        let data = args.dir.join(format!("r{i}"));
        let (key, _) = keys::load_or_generate(&data.join("replica.key"))?;
        members.push(MemberEntry {
            id: i,
            public_key: hex::encode(key.public_bytes()),
            address: format!("127.0.0.1:{}", port(i, 0)),
        });
    }
    let file = MembershipFile { epoch: 0, admin_key: hex::encode(admin.public_bytes()), members };
    let mpath = args.dir.join("membership.yaml");
    let yaml = serde_yaml::to_string(&file).map_err(|e| ServerError::Genesis(e.to_string()))?;
    std::fs::write(&mpath, yaml).map_err(io(&mpath))?;
    let mut tasks = vec![];
    for i in 0..args.replicas {
        let o = Overrides {
            data_dir: Some(args.dir.join(format!("r{i}"))),
            membership_file: Some(mpath.clone()),
            peer_listen: Some(format!("127.0.0.1:{}", port(i, 0))),
            client_listen: Some(format!("127.0.0.1:{}", port(i, 1))),
            admin_listen: Some(format!("127.0.0.1:{}", port(i, 2))),
            metrics_listen: Some(format!("127.0.0.1:{}", port(i, 3))),
            ..Default::default()
        };
        let mut settings = o.resolve()?;
        // The replicas share this process: each is charged an equal share of
        // its memory (or each would see all of it and shed for the others).
        settings.memory_sharers = args.replicas.into();
        tasks.push(tokio::spawn(node::run(settings, shutdown.clone(), None)));
    }
    println!(
        "dev cluster: {} replicas on 127.0.0.1 (data in {})\n  membership: {}\n  try:   pbftctl --membership {} put hello world\n         pbftctl --membership {} get hello\n         pbftctl --membership {} status\n         pbftctl --membership {} bench --clients 16 --duration 10s\n  metrics: http://127.0.0.1:{}/metrics\n  Ctrl-C stops it.",
        args.replicas,
        args.dir.display(),
        mpath.display(),
        mpath.display(),
        mpath.display(),
        mpath.display(),
        mpath.display(),
        port(0, 3)
    );
    for t in tasks {
        match t.await {
            Ok(r) => r?,
            Err(e) => return Err(ServerError::Core(format!("replica task failed: {e}"))),
        }
    }
    Ok(())
}
