//! What a run of the suite is told by its environment.

use std::path::PathBuf;

/// How the test process reaches replica pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReachMode {
    /// Pod IPs are routed to this machine (the local test bed, a node of the cluster).
    Direct,
    /// Through the apiserver's pod port-forward (kind, any remote cluster).
    PortForward,
    /// Try a pod IP once; fall back to port-forward.
    Auto,
}

/// Settings from the environment (see e2e/README.md).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `PBFT_E2E=1` runs the suite; otherwise the test binary only says it was skipped.
    pub enabled: bool,
    /// `PBFT_E2E_SCENARIOS`: comma-separated scenario names, or `all` (default);
    /// `-name` leaves one out (`all,-memory`).
    pub scenarios: Vec<String>,
    /// `PBFT_E2E_REACH`: direct, port-forward or auto (default).
    pub reach: ReachMode,
    /// The repository (charts/, deploy/, examples/).
    pub repo: PathBuf,
    /// `HELM` / `KUBECTL`: the binaries (default: on PATH).
    pub helm: String,
    pub kubectl: String,
    /// `PBFT_E2E_OPERATOR_NAMESPACE` (default pbft-system; the plain manifest's namespace is fixed).
    pub operator_namespace: String,
    /// `PBFT_IMAGE_VERSION`: tag of the images under test (default: the crate version).
    pub image_version: String,
    /// `PBFT_UPGRADE_TAG`: the replica image tag of the rolling upgrade (default `<version>-upgrade`).
    pub upgrade_tag: String,
    /// `PBFT_E2E_KEEP=1`: keep the namespaces of failed scenarios for a look.
    pub keep_on_failure: bool,
    /// `PBFT_E2E_STORAGE_CLASS`: StorageClass of the persistent cluster (default: the cluster's default).
    pub storage_class: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Settings, String> {
        let reach = match var("PBFT_E2E_REACH").as_deref() {
            None | Some("auto") => ReachMode::Auto,
            Some("direct") => ReachMode::Direct,
            Some("port-forward") => ReachMode::PortForward,
            Some(other) => return Err(format!("PBFT_E2E_REACH must be direct, port-forward or auto, not {other:?}")),
        };
        let version = var("PBFT_IMAGE_VERSION").unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(PathBuf::from)
            .ok_or("the e2e crate has no parent directory")?;
        Ok(Settings {
            enabled: var("PBFT_E2E").as_deref() == Some("1"),
            scenarios: var("PBFT_E2E_SCENARIOS")
                .unwrap_or_else(|| "all".into())
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            reach,
            repo,
            helm: var("HELM").unwrap_or_else(|| "helm".into()),
            kubectl: var("KUBECTL").unwrap_or_else(|| "kubectl".into()),
            operator_namespace: var("PBFT_E2E_OPERATOR_NAMESPACE").unwrap_or_else(|| "pbft-system".into()),
            upgrade_tag: var("PBFT_UPGRADE_TAG").unwrap_or_else(|| format!("{version}-upgrade")),
            image_version: version,
            keep_on_failure: var("PBFT_E2E_KEEP").as_deref() == Some("1"),
            storage_class: var("PBFT_E2E_STORAGE_CLASS"),
        })
    }

    /// Whether scenario `name` is selected.
    pub fn wants(&self, name: &str) -> bool {
        selected(&self.scenarios, name)
    }

    /// The replica image of this build.
    pub fn replica_image(&self) -> String {
        format!("pbft-replica:{}", self.image_version)
    }

    /// The replica image the rolling upgrade moves to.
    pub fn upgrade_image(&self) -> String {
        format!("pbft-replica:{}", self.upgrade_tag)
    }
}

/// Whether `name` is among `scenarios` (`all` or its name) and not left out (`-name`).
fn selected(scenarios: &[String], name: &str) -> bool {
    let left_out = scenarios.iter().any(|s| s.strip_prefix('-') == Some(name));
    !left_out && scenarios.iter().any(|s| s == "all" || s == name)
}

#[cfg(test)]
mod tests {
    use super::selected;

    #[test]
    fn all_names_and_left_out_ones() {
        let list = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        assert!(selected(&list("all"), "memory"));
        assert!(!selected(&list("all,-memory"), "memory"));
        assert!(selected(&list("all,-memory"), "crash"));
        assert!(selected(&list("install,crash"), "crash"));
        assert!(!selected(&list("install,crash"), "memory"));
        assert!(!selected(&list("-memory"), "crash"), "leaving one out selects nothing else");
    }
}
