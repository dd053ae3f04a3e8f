//! What the kernel says about processes (through `pbft::bench::sample_process`)
//! and about the machine: its busy time (/proc/stat), load average and
//! description (cores, model, kernel).

use serde::{Deserialize, Serialize};

use pbft::bench::sample_process;

/// CPU seconds (utime+stime, all threads) of a process; `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    sample_process(pid).map(|s| s.cpu_seconds)
}

/// Peak resident set size (VmHWM) in bytes; `None` if it is gone.
pub fn peak_rss(pid: u32) -> Option<u64> {
    sample_process(pid).map(|s| s.peak_rss_bytes)
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// Ticks of all CPUs from /proc/stat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// All but idle and iowait (steal included: the hypervisor gave the time to someone else).
    pub busy: u64,
    pub total: u64,
    /// Time the hypervisor ran other guests while this one wanted the CPU.
    pub steal: u64,
}

pub fn machine_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&stat)
}

pub fn parse_proc_stat(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest counted in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some(MachineTicks { busy: total.saturating_sub(idle), total, steal: v.get(7).copied().unwrap_or(0) })
}

/// The 1, 5 and 15-minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text.split_whitespace().map(|x| x.parse::<f64>().unwrap_or(0.0));
    [v.next().unwrap_or(0.0), v.next().unwrap_or(0.0), v.next().unwrap_or(0.0)]
}

/// /proc/pressure/cpu "some avg60": the share of time some runnable task waited for a CPU (percent).
pub fn cpu_pressure_avg60() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = text.lines().find(|l| l.starts_with("some"))?;
    some.split_whitespace().find_map(|f| f.strip_prefix("avg60=")).and_then(|v| v.parse().ok())
}

/// The machine at one moment: load, pressure, ticks.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct MachineSample {
    pub utc: Option<u64>,
    pub loadavg: [f64; 3],
    pub cpu_pressure_some_avg60: Option<f64>,
    #[serde(skip)]
    pub ticks: MachineTicks,
}

impl MachineSample {
    pub fn take() -> MachineSample {
        MachineSample {
            utc: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs()),
            loadavg: loadavg(),
            cpu_pressure_some_avg60: cpu_pressure_avg60(),
            ticks: machine_ticks().unwrap_or_default(),
        }
    }
}

/// How busy the machine was over the whole run (everything on it, ours included).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct RunNoise {
    pub start: MachineSample,
    pub end: MachineSample,
    /// Mean cores busy over the run (of `Machine::cores`).
    pub busy_cores: f64,
    /// Mean cores stolen by the hypervisor over the run.
    pub steal_cores: f64,
}

impl RunNoise {
    pub fn between(start: MachineSample, end: MachineSample) -> RunNoise {
        let total = end.ticks.total.saturating_sub(start.ticks.total) as f64;
        let cores = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
        let share = |a: u64, b: u64| if total > 0.0 { b.saturating_sub(a) as f64 / total * cores } else { 0.0 };
        RunNoise {
            start,
            end,
            busy_cores: share(start.ticks.busy, end.ticks.busy),
            steal_cores: share(start.ticks.steal, end.ticks.steal),
        }
    }
}

/// A CPU snapshot of a set of processes, of this process and of the machine.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    pub at: std::time::Instant,
    /// CPU seconds of each process.
    pub system: Vec<Option<f64>>,
    pub own: f64,
    /// Busy and stolen ticks of the machine.
    pub machine_busy: u64,
    pub machine_steal: u64,
}

impl CpuSnapshot {
    pub fn take(pids: &[u32]) -> CpuSnapshot {
        let m = machine_ticks().unwrap_or_default();
        CpuSnapshot {
            at: std::time::Instant::now(),
            system: pids.iter().map(|p| cpu_seconds(*p)).collect(),
            own: cpu_seconds(std::process::id()).unwrap_or(0.0),
            machine_busy: m.busy,
            machine_steal: m.steal,
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
    /// CPU time the hypervisor gave to other guests (part of `foreign_s`).
    #[serde(default)]
    pub steal_s: f64,
    pub wall_s: f64,
}

impl CpuUse {
    pub fn between(a: &CpuSnapshot, b: &CpuSnapshot, ticks_per_s: f64) -> CpuUse {
        let sys: f64 =
            a.system.iter().zip(&b.system).map(|(x, y)| (y.unwrap_or(0.0) - x.unwrap_or(0.0)).max(0.0)).sum();
        let own = (b.own - a.own).max(0.0);
        let busy = b.machine_busy.saturating_sub(a.machine_busy) as f64 / ticks_per_s;
        CpuUse {
            system_s: sys,
            loadgen_s: own,
            foreign_s: (busy - sys - own).max(0.0),
            steal_s: b.machine_steal.saturating_sub(a.machine_steal) as f64 / ticks_per_s,
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
        let p = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(p), Some(MachineTicks { busy: 161, total: 1181, steal: 3 }));
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(peak_rss(std::process::id()).is_some_and(|b| b > 0));
    }
}
