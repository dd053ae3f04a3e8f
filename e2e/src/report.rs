//! Output of the suite: every figure a scenario measured is printed as it is
//! measured (`MEASURE <scenario> <name>=<value> [unit]`), every check as
//! `PASS`/`FAIL`, and the figures are repeated in the final summary.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a scenario failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {what}: {source}")]
    Kube { what: String, source: kube::Error },
    #[error("{cmd}: {msg}")]
    Command { cmd: String, msg: String },
    #[error("timed out after {secs:.0} s waiting for {what}")]
    Timeout { what: String, secs: f64 },
    #[error("check failed: {0}")]
    Check(String),
    #[error("{0}")]
    Other(String),
}

/// The suite's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Maps a kube error with what was being done.
pub fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// Fails with `msg` unless `cond`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Check(msg()))
    }
}

static STARTED: Mutex<Option<Instant>> = Mutex::new(None);

fn elapsed() -> String {
    let mut s = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = *s.get_or_insert_with(Instant::now);
    format!("{:>7.1}s", t0.elapsed().as_secs_f64())
}

/// A progress line.
pub fn log(scenario: &str, msg: impl AsRef<str>) {
    println!("[e2e {} {scenario}] {}", elapsed(), msg.as_ref());
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    pub scenario: String,
    pub name: String,
    pub value: String,
    pub unit: String,
}

/// The figures and check results of one scenario.
pub struct Scenario {
    pub name: String,
    pub started: Instant,
    pub figures: Vec<Figure>,
    pub passes: Vec<String>,
}

impl Scenario {
    pub fn new(name: &str) -> Scenario {
        log(name, "---- start");
        Scenario { name: name.into(), started: Instant::now(), figures: vec![], passes: vec![] }
    }

    /// Prints and records a figure.
    pub fn measure(&mut self, name: &str, value: impl std::fmt::Display, unit: &str) {
        let f = Figure { scenario: self.name.clone(), name: name.into(), value: value.to_string(), unit: unit.into() };
        println!("MEASURE {} {}={} {}", f.scenario, f.name, f.value, f.unit);
        self.figures.push(f);
    }

    /// A duration figure in seconds.
    pub fn measure_secs(&mut self, name: &str, d: Duration) {
        self.measure(name, format!("{:.2}", d.as_secs_f64()), "s");
    }

    /// Records a check that held.
    pub fn pass(&mut self, what: impl Into<String>) {
        let what = what.into();
        log(&self.name, format!("PASS {what}"));
        self.passes.push(what);
    }

    /// Checks `cond`; records the pass or fails the scenario with `what` and the detail.
    pub fn check(&mut self, cond: bool, what: &str, detail: impl FnOnce() -> String) -> Result<()> {
        if cond {
            self.pass(what);
            Ok(())
        } else {
            Err(Error::Check(format!("{what}: {}", detail())))
        }
    }

    pub fn log(&self, msg: impl AsRef<str>) {
        log(&self.name, msg);
    }
}
