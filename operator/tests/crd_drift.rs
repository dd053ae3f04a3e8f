//! Fails when the committed CRD in `crds/` differs from what the code generates.

use std::path::PathBuf;

#[test]
fn committed_crd_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/consensuscluster.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let generated = pbft_operator::crd_yaml().expect("CRD renders");
    if committed != generated {
        let first_diff = committed
            .lines()
            .zip(generated.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("first difference at line {}:\n  committed: {a}\n  generated: {b}", i + 1))
            .unwrap_or_else(|| {
                format!(
                    "one is a prefix of the other ({} vs {} lines)",
                    committed.lines().count(),
                    generated.lines().count()
                )
            });
        panic!(
            "crds/consensuscluster.yaml is out of date with operator/src/crd.rs; {first_diff}\n\
             Regenerate it with:\n  cargo run -p operator --bin pbft-operator -- crd > crds/consensuscluster.yaml"
        );
    }
}

#[test]
fn crd_has_the_names_columns_and_subresources() {
    let crd: serde_yaml::Value = serde_yaml::from_str(&pbft_operator::crd_yaml().expect("CRD renders")).expect("yaml");
    let spec = &crd["spec"];
    assert_eq!(spec["group"], serde_yaml::Value::from("consensus.pbft.dev"));
    assert_eq!(spec["scope"], serde_yaml::Value::from("Namespaced"));
    assert_eq!(spec["names"]["shortNames"][0], serde_yaml::Value::from("cc"));
    let version = &spec["versions"][0];
    assert_eq!(version["name"], serde_yaml::Value::from("v1alpha1"));
    assert!(version["subresources"]["status"].is_mapping());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_sequence()
        .expect("columns")
        .iter()
        .filter(|c| c["priority"].as_i64().unwrap_or(0) == 0)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["F", "Replicas", "Ready", "View", "Primary", "Quarantined", "Age"]);
}
