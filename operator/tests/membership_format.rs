//! The membership ConfigMap the operator writes is read by the replica server
//! (`pbft::server::membership_file`), which refuses unknown fields: check the
//! two agree, with real ed25519 keys.

use pbft::crypto::Keypair;
use pbft::server::membership_file::MembershipFile;
use pbft_operator::build::{build_all, MembershipInput, ObservedMember, MEMBERSHIP_KEY};
use pbft_operator::validate::{validate, OperatorDefaults};
use pbft_operator::ConsensusCluster;

fn cluster(f: u32) -> pbft_operator::validate::ValidatedCluster {
    let mut cc = ConsensusCluster::new("ledger", serde_yaml::from_str(&format!("faultTolerance: {f}")).expect("spec"));
    cc.metadata.namespace = Some("prod".into());
    cc.metadata.uid = Some("u-1".into());
    validate(&cc, None, &OperatorDefaults::default()).expect("valid")
}

fn written(m: &MembershipInput, f: u32) -> (std::path::PathBuf, String) {
    let objects = build_all(&cluster(f), m).expect("built");
    let text = objects.config_map.data.expect("data")[MEMBERSHIP_KEY].clone();
    let dir = std::env::temp_dir().join(format!("pbft-operator-mf-{}-{f}-{}", std::process::id(), m.members.len()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("membership.yaml");
    std::fs::write(&path, &text).expect("write");
    (path, text)
}

/// Members 0.. with the public keys of `keys`.
fn members_with_keys(keys: &[Keypair]) -> impl Iterator<Item = ObservedMember> + '_ {
    keys.iter().enumerate().map(|(i, k)| ObservedMember {
        id: i as u32,
        public_key: Some(hex::encode(k.public_bytes())),
        key_secret: None,
    })
}

#[test]
fn replica_reads_a_complete_membership() {
    let keys: Vec<Keypair> = (1..=7u8).map(|i| Keypair::from_secret([i; 32])).collect();
    let admin = Keypair::from_secret([99; 32]);
    let m = MembershipInput {
        epoch: 0,
        admin_key: Some(hex::encode(admin.public_bytes())),
        members: members_with_keys(&keys).collect(),
    };
    let (path, text) = written(&m, 2);
    let file = MembershipFile::read(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let membership = file.to_membership(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(membership.n(), 7);
    assert_eq!(membership.f(), 2);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(file.id_of(&k.public_bytes()), Some(i as u32));
    }
    assert_eq!(file.members[6].address, "ledger-6.ledger-peers.prod.svc:7000");
    std::fs::remove_dir_all(path.parent().expect("dir")).expect("cleanup");
}

#[test]
fn replica_waits_on_a_bootstrap_file() {
    // Three of four keys known: the file must not let any replica start.
    let keys: Vec<Keypair> = (1..=3u8).map(|i| Keypair::from_secret([i; 32])).collect();
    let m = MembershipInput {
        epoch: 0,
        admin_key: Some(hex::encode(Keypair::from_secret([99; 32]).public_bytes())),
        members: members_with_keys(&keys)
            .chain([ObservedMember { id: 3, public_key: None, key_secret: None }])
            .collect(),
    };
    let (path, text) = written(&m, 1);
    let file = MembershipFile::read(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for k in &keys {
        assert_eq!(file.id_of(&k.public_bytes()), None, "a replica would start from a partial genesis:\n{text}");
    }
    std::fs::remove_dir_all(path.parent().expect("dir")).expect("cleanup");
}
