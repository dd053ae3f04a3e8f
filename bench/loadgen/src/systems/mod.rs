//! Launchers of the systems under test, all on loopback: our replicas
//! ([`ours`]), an etcd cluster ([`etcd`]), CometBFT validators ([`comet`]).
//! Each returns a [`Cluster`]: its processes (killed when it is dropped) and
//! the [`Target`] the load generator talks to.

pub mod comet;
pub mod etcd;
pub mod ours;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::clients::Target;
use crate::error::{io, BenchError};
use crate::procstat::peak_rss;

/// One process of a cluster.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub pid: u32,
    /// VmHWM read just before it was stopped (the kernel forgets it at exit).
    pub final_peak_rss: Option<u64>,
}

/// A running system.
pub struct Cluster {
    pub name: String,
    pub procs: Vec<Proc>,
    pub target: Target,
    pub dir: PathBuf,
    /// Keep the data dirs and logs after stopping.
    pub keep: bool,
    /// Prometheus endpoints of our replicas (empty for the other systems).
    pub metrics: Vec<SocketAddr>,
}

impl Cluster {
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter(|p| p.child.is_some()).map(|p| p.pid).collect()
    }

    /// Peak RSS of every process (live ones now, stopped ones when they were stopped).
    pub fn peak_rss(&self) -> Vec<(String, u64)> {
        self.procs.iter().map(|p| (p.name.clone(), peak_rss(p.pid).or(p.final_peak_rss).unwrap_or(0))).collect()
    }

    /// Fails if a process has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        for p in &mut self.procs {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(BenchError::Exited {
                        what: p.name.clone(),
                        status: status.to_string(),
                        log: p.log.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// SIGKILL process `i` now (a crash).
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.procs.get_mut(i) {
            p.final_peak_rss = peak_rss(p.pid);
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// SIGTERM everything, SIGKILL what is still there after 10 s; removes the data unless `keep`.
    pub fn stop(mut self) {
        self.stop_all();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn stop_all(&mut self) {
        for p in &mut self.procs {
            if p.child.is_some() {
                p.final_peak_rss = peak_rss(p.pid);
                let _ = Command::new("kill").args(["-TERM", &p.pid.to_string()]).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Starts `binary args` with its stdout and stderr in `log`.
pub fn spawn(
    name: &str,
    binary: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Proc, BenchError> {
    let out = std::fs::File::create(log).map_err(io(log))?;
    let err = out.try_clone().map_err(io(log))?;
    let child = Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| BenchError::Spawn { what: name.to_string(), binary: binary.to_path_buf(), source })?;
    Ok(Proc {
        name: name.to_string(),
        pid: child.id(),
        child: Some(child),
        log: log.to_path_buf(),
        final_peak_rss: None,
    })
}

/// A TCP port free on 127.0.0.1 right now (the OS picks it).
pub fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(io("127.0.0.1:0"))?.port())
}

/// A port free on every one of `ips` (for CometBFT, whose validators use 127.0.0.1, .2, ...).
pub fn free_port_on(ips: &[Ipv4Addr]) -> Result<u16, BenchError> {
    for _ in 0..50 {
        let p = free_port()?;
        if ips.iter().all(|ip| TcpListener::bind(SocketAddr::from((*ip, p))).is_ok()) {
            return Ok(p);
        }
    }
    Err(BenchError::Setup(format!("no port free on all of {ips:?}")))
}

/// Polls `probe` every 200 ms until it returns Ok, failing after `secs` or if a process exits.
pub async fn wait_until<F, Fut>(cluster: &mut Cluster, what: &str, secs: u64, mut probe: F) -> Result<(), BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let t = Instant::now();
    let mut last = String::from("no answer yet");
    while t.elapsed() < Duration::from_secs(secs) {
        cluster.check_alive()?;
        match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(BenchError::NotReady { what: what.to_string(), secs, last })
}

/// A fresh directory `base/name` (emptied if it exists).
pub fn fresh_dir(base: &Path, name: &str) -> Result<PathBuf, BenchError> {
    let d = base.join(name);
    if d.exists() {
        std::fs::remove_dir_all(&d).map_err(io(&d))?;
    }
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    Ok(d)
}
