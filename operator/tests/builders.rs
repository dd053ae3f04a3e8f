//! Builders from YAML fixtures: `tests/fixtures/<case>/cluster.yaml` (a
//! ConsensusCluster, as the apiserver would return it: namespace and uid set)
//! and optionally `membership.yaml` (what the operator observed) go in;
//! `expected.yaml` (every object, in apply order) must come out.
//!
//! After an intended change, regenerate and review the diff:
//!   PBFT_REGENERATE_FIXTURES=1 cargo test -p operator --test builders
//! The test still compares afterwards, so it never passes by writing alone.

use std::path::{Path, PathBuf};

use pbft_operator::build::{build_all, MembershipInput};
use pbft_operator::validate::{validate, OperatorDefaults};
use pbft_operator::ConsensusCluster;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn render(case: &Path) -> String {
    let cc: ConsensusCluster = serde_yaml::from_str(&read(&case.join("cluster.yaml")))
        .unwrap_or_else(|e| panic!("{}: cluster.yaml: {e}", case.display()));
    let membership_path = case.join("membership.yaml");
    let membership: MembershipInput = if membership_path.exists() {
        serde_yaml::from_str(&read(&membership_path))
            .unwrap_or_else(|e| panic!("{}: membership.yaml: {e}", case.display()))
    } else {
        MembershipInput::default()
    };
    let defaults = OperatorDefaults { replica_image: "pbft-replica:0.1.0".into(), fault_injection_image: None };
    let cluster = validate(&cc, None, &defaults).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    build_all(&cluster, &membership).and_then(|o| o.to_yaml()).unwrap_or_else(|e| panic!("{}: {e}", case.display()))
}

#[test]
fn builders_match_fixtures() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("cluster.yaml").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 3, "expected at least 3 fixture cases, found {cases:?}");
    let regenerate = std::env::var_os("PBFT_REGENERATE_FIXTURES").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let got = render(case);
        let expected_path = case.join("expected.yaml");
        if regenerate {
            std::fs::write(&expected_path, &got).unwrap_or_else(|e| panic!("writing {}: {e}", expected_path.display()));
        }
        let expected = read(&expected_path);
        if got != expected {
            let line = got
                .lines()
                .zip(expected.lines())
                .position(|(a, b)| a != b)
                .map(|i| i + 1)
                .unwrap_or_else(|| got.lines().count().min(expected.lines().count()) + 1);
            failures.push(format!("{}: differs from expected.yaml at line {line}", case.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nIf the change is intended: PBFT_REGENERATE_FIXTURES=1 cargo test -p operator --test builders, then review git diff",
        failures.join("\n")
    );
}

#[test]
fn invalid_fixture_specs_are_refused_before_building() {
    let cc: ConsensusCluster = serde_yaml::from_str(
        "apiVersion: consensus.pbft.dev/v1alpha1\nkind: ConsensusCluster\nmetadata: {name: bad, namespace: ns, uid: u}\nspec: {faultTolerance: 1, resources: {limits: {memory: 32Mi}}}\n",
    )
    .expect("parses");
    let err = validate(&cc, None, &OperatorDefaults::default()).expect_err("below the memory floor");
    assert_eq!(err.reason(), "InvalidMemory");
}
