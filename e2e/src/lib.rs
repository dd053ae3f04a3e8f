//! The end-to-end suite of pbft-operator, as a library the test binary
//! (`tests/e2e.rs`) drives: it works against any kubeconfig (the local test
//! bed, kind, an existing cluster), talks to the apiserver with kube and to
//! the replicas with the replica crate's client library, and prints every
//! figure it measures. See e2e/README.md.
//!
//! Pure parts (the linearizability checker, the metrics parser) are unit-tested
//! here; everything that needs a cluster lives in the scenarios.

pub mod cmd;
pub mod context;
pub mod garbage;
pub mod k8s;
pub mod linearizability;
pub mod load;
pub mod prom;
pub mod reach;
pub mod report;
pub mod settings;
pub mod topology;

pub use context::Ctx;
pub use report::{ensure, Error, Result, Scenario};
