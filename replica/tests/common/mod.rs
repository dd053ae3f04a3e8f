//! Shared helpers of the multi-process tests: a cluster of real
//! `pbft-replica` processes on loopback, each with its own data dir, ports
//! and a read-only key file (as a Kubernetes Secret mount gives it).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbft::crypto::Keypair;
use pbft::kvclient::{Endpoints, KvClient};
use pbft::proto::op_result::Status as OpStatus;
use pbft::server::membership_file::{MemberEntry, MembershipFile};
use pbft::server::rpc::StatusReply;

/// The tests of one binary run one at a time (they share two cores with everything else).
pub static SERIAL: Mutex<()> = Mutex::new(());

/// The administrator's key of every test cluster.
pub fn admin_key() -> Keypair {
    Keypair::from_secret([200; 32])
}

/// Ports the tests' replicas listen on: below the kernel's ephemeral range
/// (32768 and up by default) and below Kubernetes' NodePorts (30000 and up).
/// A port the kernel handed out as free can be taken by any outgoing
/// connection between this check and the replica's bind: under the client
/// flood, replicas failed to start with "Address already in use".
const TEST_PORTS: std::ops::Range<u16> = 20_000..30_000;

/// A loopback port free now, from [`TEST_PORTS`]; each test process starts
/// at its own offset and never hands out a port twice.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let offset = std::process::id().wrapping_mul(97) % span;
    for _ in 0..span {
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = TEST_PORTS.start + ((offset + k) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}")
}

/// Writes `key` as 64 hex digits to `path`, read-only (mode 0400) in a read-only directory.
pub fn write_key_file(path: &Path, key: &Keypair) {
    let dir = path.parent().expect("key file has a directory");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(path, hex::encode(key.secret_bytes())).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
}

/// One replica slot: ports, key file and data dir (both replaceable), process.
pub struct Slot {
    pub ports: [u16; 4],
    pub key: Keypair,
    pub key_file: PathBuf,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    /// Binary to run instead of the tested `pbft-replica` (a fault-injection build).
    pub binary: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub slots: Vec<Slot>,
    pub membership: PathBuf,
    pub env: Vec<(String, String)>,
    pub extra_args: Vec<String>,
}

impl Cluster {
    pub fn new(tag: &str, n: u32) -> Cluster {
        Cluster::with_env(tag, n, &[])
    }

    /// Prepares `n` slots and the epoch-0 membership file without starting anything.
    pub fn prepare(tag: &str, n: u32, env: &[(&str, &str)]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("pbft-it-{tag}-{}", std::process::id()));
        if dir.exists() {
            let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&dir).status();
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut c = Cluster { membership: dir.join("membership.yaml"), dir, slots: vec![], env, extra_args: vec![] };
        for i in 0..n {
            c.add_slot(Keypair::from_secret([i as u8 + 1; 32]));
        }
        let members = (0..n).map(|i| c.member_entry(i)).collect();
        c.write_membership(&MembershipFile { epoch: 0, admin_key: hex::encode(admin_key().public_bytes()), members });
        c
    }

    pub fn with_env(tag: &str, n: u32, env: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::prepare(tag, n, env);
        for i in 0..n {
            c.start(i);
        }
        c
    }

    /// A new slot with fresh ports, `key` in a key file of its own and a fresh data dir; returns its id.
    pub fn add_slot(&mut self, key: Keypair) -> u32 {
        let id = self.slots.len() as u32;
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let key_file = self.dir.join(format!("secrets/r{id}-{}/replica.key", hex::encode(&key.public_bytes()[..4])));
        write_key_file(&key_file, &key);
        let data_dir = self.dir.join(format!("r{id}"));
        self.slots.push(Slot { ports, key, key_file, data_dir, child: None, binary: None, env: vec![] });
        id
    }

    /// Gives slot `i` a new key (in a new key file) and a fresh, empty data dir.
    pub fn replace_key(&mut self, i: u32, key: Keypair, generation: u32) {
        let key_file = self.dir.join(format!("secrets/r{i}-{}/replica.key", hex::encode(&key.public_bytes()[..4])));
        write_key_file(&key_file, &key);
        let s = &mut self.slots[i as usize];
        s.key = key;
        s.key_file = key_file;
        s.data_dir = self.dir.join(format!("r{i}-gen{generation}"));
    }

    /// The membership entry of slot `i` (its peer address and current key).
    pub fn member_entry(&self, i: u32) -> MemberEntry {
        let s = &self.slots[i as usize];
        MemberEntry {
            id: i,
            public_key: hex::encode(s.key.public_bytes()),
            address: format!("127.0.0.1:{}", s.ports[0]),
        }
    }

    /// Replaces the membership file atomically (what the operator's ConfigMap update does).
    pub fn write_membership(&self, file: &MembershipFile) {
        let tmp = self.membership.with_extension("tmp");
        std::fs::write(&tmp, serde_yaml::to_string(file).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.membership).unwrap();
    }

    pub fn read_membership(&self) -> MembershipFile {
        MembershipFile::read(&self.membership).unwrap()
    }

    pub fn start(&mut self, i: u32) {
        let s = &self.slots[i as usize];
        let p = s.ports;
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("r{i}.log"))).unwrap();
        let bin = s.binary.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pbft-replica")));
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(&s.data_dir)
            .arg("--key-file")
            .arg(&s.key_file)
            .arg("--membership-file")
            .arg(&self.membership)
            .args(["--peer-listen", &format!("127.0.0.1:{}", p[0])])
            .args(["--client-listen", &format!("127.0.0.1:{}", p[1])])
            .args(["--admin-listen", &format!("127.0.0.1:{}", p[2])])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", p[3])])
            .args(["--view-change-timeout-ms", "500", "--checkpoint-interval", "16"])
            .args(&self.extra_args)
            .env("PBFT_LOG", "info")
            .envs(self.env.iter().chain(s.env.iter()).map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pbft-replica");
        self.slots[i as usize].child = Some(child);
    }

    pub fn kill9(&mut self, i: u32) {
        if let Some(mut c) = self.slots[i as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns how long the process took to exit.
    pub fn terminate(&mut self, i: u32) -> Duration {
        let Some(mut c) = self.slots[i as usize].child.take() else { return Duration::ZERO };
        let t = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = c.kill();
        let _ = c.wait();
        panic!("replica {i} did not exit within 5 s of SIGTERM");
    }

    pub fn pid(&self, i: u32) -> Option<u32> {
        self.slots[i as usize].child.as_ref().map(|c| c.id())
    }

    pub fn alive(&mut self, i: u32) -> bool {
        matches!(self.slots[i as usize].child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Client endpoints from the current membership file, dialling the client ports.
    pub fn endpoints(&self) -> Endpoints {
        let o: Vec<(u32, String)> =
            self.slots.iter().enumerate().map(|(i, s)| (i as u32, format!("127.0.0.1:{}", s.ports[1]))).collect();
        Endpoints::from_file(&self.membership, &o).unwrap()
    }

    pub fn client(&self) -> KvClient {
        let mut c = KvClient::new(self.endpoints());
        c.timeout = Duration::from_secs(20);
        c
    }

    /// Status of every slot (running or not), by id.
    pub async fn statuses(&self) -> BTreeMap<u32, StatusReply> {
        let mut out = BTreeMap::new();
        for (i, s) in self.slots.iter().enumerate() {
            let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", s.ports[2])) else {
                continue;
            };
            let ep = ep.connect_timeout(Duration::from_millis(300)).timeout(Duration::from_secs(2));
            let Ok(ch) = ep.connect().await else { continue };
            let mut c = pbft::server::rpc::admin_client::AdminClient::new(ch);
            if let Ok(r) = c.status(pbft::server::rpc::StatusRequest {}).await {
                out.insert(i as u32, r.into_inner());
            }
        }
        out
    }

    /// Polls the statuses until `pred` holds for each of `ids`; panics after `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        ids: &[u32],
        within: Duration,
        pred: impl Fn(&StatusReply) -> bool,
    ) -> Duration {
        let t = Instant::now();
        loop {
            let st = self.statuses().await;
            if ids.iter().all(|id| st.get(id).is_some_and(&pred)) {
                return t.elapsed();
            }
            if t.elapsed() > within {
                let brief: Vec<String> = st
                    .iter()
                    .map(|(i, s)| {
                        format!(
                            "r{i}: epoch {} view {} active {} ready {} caught_up {} retired {} exec {} stable {}",
                            s.epoch, s.view, s.active, s.ready, s.caught_up, s.retired, s.executed_seq, s.stable_seq
                        )
                    })
                    .collect();
                panic!("{what}: replicas {ids:?} not there within {within:?}: {brief:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_ready(&self, ids: &[u32], within: Duration) {
        self.wait_for("ready", ids, within, |s| s.ready).await;
    }

    pub async fn executed(&self) -> BTreeMap<u32, (u64, u64)> {
        self.statuses().await.into_iter().map(|(id, s)| (id, (s.executed_seq, s.view))).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in self.slots.iter_mut() {
            if let Some(c) = s.child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if !std::thread::panicking() {
            let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&self.dir).status();
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

/// Writes distinct keys from `clients` clients until `stop`; returns acknowledged (key, value).
pub fn load(
    cluster: &Cluster,
    clients: usize,
    prefix: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, String)>>> {
    (0..clients)
        .map(|c| {
            let mut cl = cluster.client();
            let stop = stop.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut acked = vec![];
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (k, v) = (format!("{prefix}-{c}-{i}"), format!("v{i}"));
                    if cl.put(k.as_bytes(), v.as_bytes()).await.is_ok() {
                        acked.push((k, v));
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect()
}

/// Every acknowledged write reads back (through f+1 matching replies).
pub async fn check_all(cluster: &Cluster, acked: &[(String, String)]) {
    let mut cl = cluster.client();
    for (k, v) in acked {
        let r = cl.get(k.as_bytes()).await.expect("get");
        assert_eq!(r.status, OpStatus::Ok as i32, "key {k} lost");
        assert_eq!(r.value.as_deref(), Some(v.as_bytes()), "key {k} has another value");
    }
}

pub async fn collect(handles: Vec<tokio::task::JoinHandle<Vec<(String, String)>>>) -> Vec<(String, String)> {
    let mut all = vec![];
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

/// Sequential puts `prefix-0..n` through one client; returns them.
pub async fn put_keys(cluster: &Cluster, prefix: &str, n: usize) -> Vec<(String, String)> {
    let mut cl = cluster.client();
    let mut out = vec![];
    for i in 0..n {
        let (k, v) = (format!("{prefix}-{i}"), format!("v{i}"));
        let r = cl.put(k.as_bytes(), v.as_bytes()).await.unwrap_or_else(|e| panic!("put {k}: {e}"));
        assert_eq!(r.status, OpStatus::Ok as i32, "put {k}: {r:?}");
        out.push((k, v));
    }
    out
}

pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return String::new() };
    let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}
