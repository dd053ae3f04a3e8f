//! The JSON written per run (`bench/results/<timestamp>.json`), from which
//! the report and the plot are generated.

use std::path::Path;

use serde::{Deserialize, Serialize};

use pbft::bench::CryptoCosts;

use crate::error::{io, BenchError};
use crate::load::Point;
use crate::procstat::{Machine, RunNoise};

/// 2: crypto costs from `pbft::bench` (best of rounds, batches of 8 and 64), the run's noise.
pub const SCHEMA: u32 = 2;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResults {
    pub schema: u32,
    pub started_utc: String,
    pub finished_utc: Option<String>,
    pub git_commit: String,
    /// "quick" (a smoke run: the figures mean little) or "full".
    pub mode: String,
    pub command: String,
    pub machine: Machine,
    /// Load average, CPU pressure, busy and stolen cores from the start to the end of the run.
    #[serde(default)]
    pub noise: Option<RunNoise>,
    pub settings: serde_json::Value,
    pub crypto: Vec<CryptoCosts>,
    pub systems: Vec<SystemResult>,
    pub comet_timeout_probe: Vec<TimeoutProbe>,
    pub comet_timeout_commit: Option<String>,
    pub byzantine: Vec<FaultResult>,
    pub view_change: Option<ViewChangeResult>,
    /// Things the reader must know (saturation not reached, skipped parts, errors).
    pub notes: Vec<String>,
}

/// One system at one value size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SystemResult {
    /// "ours-n4", "ours-n7", "etcd", "cometbft".
    pub system: String,
    pub label: String,
    pub version: String,
    pub config: serde_json::Value,
    pub value_size: usize,
    pub processes: usize,
    pub sweep: Vec<Point>,
    pub saturation_clients: usize,
    /// Throughput stopped rising within the client list (false: the list's end was reached first).
    pub saturated: bool,
    /// Closed-loop repeats at `saturation_clients`.
    pub saturation: Vec<Point>,
    /// Open-loop rate: half of the median saturation throughput.
    pub half_rate: f64,
    pub half: Vec<Point>,
    /// Peak RSS (VmHWM) per process over the whole run of this system, bytes.
    pub peak_rss: Vec<(String, u64)>,
    /// Client 0's last committed put read back with the same value (None: not checked).
    pub read_back: Option<bool>,
    pub read_back_note: String,
}

/// A CometBFT `timeout_commit` candidate at one closed-loop point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimeoutProbe {
    pub timeout_commit: String,
    pub point: Point,
}

/// Our n=4 cluster with one Byzantine replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultResult {
    pub faults: String,
    pub faulty_replica: u32,
    pub value_size: usize,
    pub clients: usize,
    pub points: Vec<Point>,
    pub peak_rss: Vec<(String, u64)>,
    /// Admin Status of each replica afterwards (view, evidence, memory).
    pub status: Vec<serde_json::Value>,
}

/// Our n=4 cluster whose primary is killed mid-window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViewChangeResult {
    pub value_size: usize,
    pub clients: usize,
    pub killed_replica: usize,
    pub view_before: u64,
    pub view_after: Option<u64>,
    /// Kill time from the start of the run (warm-up included), seconds.
    pub kill_at_s: f64,
    pub point: Point,
    /// Longest stretch without a committed put, ending after the kill, ms (None: no put committed after it).
    pub gap_ms: Option<f64>,
    pub throughput_before: f64,
    /// From 1 s after the gap to the end of the window (None: that is past the window's end).
    pub throughput_after: Option<f64>,
    pub status: Vec<serde_json::Value>,
}

impl RunResults {
    pub fn save(&self, path: &Path) -> Result<(), BenchError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| BenchError::Json { path: path.into(), msg: e.to_string() })?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    }

    pub fn load(path: &Path) -> Result<RunResults, BenchError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let r: RunResults =
            serde_json::from_str(&text).map_err(|e| BenchError::Json { path: path.into(), msg: e.to_string() })?;
        if r.schema != SCHEMA {
            return Err(BenchError::Json {
                path: path.into(),
                msg: format!("schema {} (this harness reads {SCHEMA})", r.schema),
            });
        }
        Ok(r)
    }
}

/// min / median / max of some values.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
        Spread { min: v[0], median, max: v[v.len() - 1] }
    }
}

/// UTC time as `YYYY-MM-DDTHH:MM:SSZ` (and a file-name form without separators).
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"), format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z"))
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_dates() {
        assert_eq!(Spread::of([3.0, 1.0, 2.0]), Spread { min: 1.0, median: 2.0, max: 3.0 });
        assert_eq!(Spread::of([4.0, 1.0]).median, 2.5);
        assert_eq!(Spread::of([]), Spread::default());
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    #[test]
    fn load_refuses_other_schemas_and_garbage() {
        let d = std::env::temp_dir().join(format!("pbft-bench-results-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("r.json");
        let mut r = RunResults { schema: SCHEMA, ..Default::default() };
        r.save(&p).unwrap();
        assert!(RunResults::load(&p).is_ok());
        r.schema = 99;
        r.save(&p).unwrap();
        assert!(RunResults::load(&p).unwrap_err().to_string().contains("schema 99"));
        std::fs::write(&p, "{not json").unwrap();
        assert!(RunResults::load(&p).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
