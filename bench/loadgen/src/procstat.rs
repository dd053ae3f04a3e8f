//! What the kernel says about processes and the machine: CPU seconds
//! (utime+stime from /proc/PID/stat), peak RSS (VmHWM), the machine's busy
//! time (/proc/stat), and its description (cores, model, kernel).

use serde::{Deserialize, Serialize};

/// Clock ticks per second of /proc's CPU times (USER_HZ; 100 on Linux/x86-64,
/// read from `getconf CLK_TCK` when available).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime+stime of a process (all its threads), in ticks; `None` if it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// Fields 14 and 15 of /proc/PID/stat, counted after the `(comm)` field (which may hold spaces).
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11, stime index 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Peak resident set size (VmHWM) in bytes; `None` if the process is gone.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// Busy and total ticks of all CPUs from /proc/stat (busy = all but idle and iowait).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&stat)
}

pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest counted in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// A CPU snapshot of a set of processes, of this process and of the machine.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    pub at: std::time::Instant,
    pub system: Vec<Option<u64>>,
    pub own: u64,
    pub machine_busy: u64,
}

impl CpuSnapshot {
    pub fn take(pids: &[u32]) -> CpuSnapshot {
        CpuSnapshot {
            at: std::time::Instant::now(),
            system: pids.iter().map(|p| cpu_ticks(*p)).collect(),
            own: cpu_ticks(std::process::id()).unwrap_or(0),
            machine_busy: machine_ticks().map_or(0, |t| t.0),
        }
    }
}

/// CPU used between two snapshots, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct CpuUse {
    /// Sum over the system's processes.
    pub system_s: f64,
    /// This load generator.
    pub loadgen_s: f64,
    /// Everything else on the machine (other helpers, the kernel): the noise.
    pub foreign_s: f64,
    pub wall_s: f64,
}

impl CpuUse {
    pub fn between(a: &CpuSnapshot, b: &CpuSnapshot, ticks_per_s: f64) -> CpuUse {
        let sys: u64 = a.system.iter().zip(&b.system).map(|(x, y)| y.unwrap_or(0).saturating_sub(x.unwrap_or(0))).sum();
        let own = b.own.saturating_sub(a.own);
        let busy = b.machine_busy.saturating_sub(a.machine_busy);
        CpuUse {
            system_s: sys as f64 / ticks_per_s,
            loadgen_s: own as f64 / ticks_per_s,
            foreign_s: busy.saturating_sub(sys + own) as f64 / ticks_per_s,
            wall_s: (b.at - a.at).as_secs_f64(),
        }
    }
}

/// The machine the run was on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub model: String,
    pub kernel: String,
    pub memory_gib: f64,
    /// 1-minute load average when the run started.
    pub loadavg_at_start: f64,
    pub hostname: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_kib = status_kib(&read("/proc/meminfo"), "MemTotal:").unwrap_or(0);
        Machine {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            memory_gib: mem_kib as f64 / (1024.0 * 1024.0),
            loadavg_at_start: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        let s = "1234 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 2000 300";
        assert_eq!(parse_stat_cpu(s), Some(300));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert_eq!(parse_stat_cpu("1 (x) S 1 2"), None);
        let p = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(p), Some((161, 1181)));
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(peak_rss(std::process::id()).is_some_and(|b| b > 0));
    }
}
