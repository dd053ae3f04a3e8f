//! Membership changes end to end, exactly as the operator drives them:
//! replicas run with `--key-file` (a read-only Secret mount) and a
//! membership file; the admin key signs a `MembershipChange` submitted with
//! [`KvClient`]; the cluster switches epochs at the next checkpoint boundary
//! without further client traffic; the operator then writes the new epoch's
//! membership file and starts the new member with a fresh data dir, which
//! joins by state transfer.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pbft::crypto::Keypair;
use pbft::kvclient::KvClient;
use pbft::proto::{op_result::Status as OpStatus, operation::Kind, MembershipChange};
use pbft::server::membership_file::MembershipFile;

/// Submits the change that puts `next` in force (from epoch `next.epoch - 1`), signed by the admin key.
async fn submit_change(cluster: &Cluster, next: &MembershipFile) {
    let change: MembershipChange = next.to_change(&cluster.membership).expect("membership change");
    let mut admin = KvClient::with_key(cluster.endpoints(), admin_key());
    admin.timeout = Duration::from_secs(30);
    let r = admin.execute(Kind::Membership(change)).await.expect("membership change ordered");
    assert_eq!(r.status, OpStatus::Ok as i32, "membership change refused: {r:?}");
}

/// Waits until every replica of `ids` passed one stable checkpoint above `above` and they all
/// report the same stable checkpoint and state digest.
async fn wait_same_state(cluster: &Cluster, ids: &[u32], above: u64) {
    let t = Instant::now();
    loop {
        let st = cluster.statuses().await;
        let views: Vec<(u64, Vec<u8>)> =
            ids.iter().filter_map(|i| st.get(i)).map(|s| (s.stable_seq, s.state_digest.to_vec())).collect();
        if views.len() == ids.len() && views[0].0 > above && views.iter().all(|v| *v == views[0]) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "replicas {ids:?} do not agree on a stable state: {views:?}");
        // Stable checkpoints need traffic: one more write moves everyone on.
        if t.elapsed() > Duration::from_secs(2) {
            put_keys(cluster, &format!("nudge-{}", t.elapsed().as_millis()), 1).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_members_key_switches_epoch_and_the_new_member_joins_by_state_transfer() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new("member-replace", 4);
    cluster.wait_ready(&[0, 1, 2, 3], Duration::from_secs(20)).await;
    let mut acked = put_keys(&cluster, "before", 10).await;

    // Epoch 1: member 3 gets a new key (same id, same address: the same pod name).
    let new_key = Keypair::from_secret([77; 32]);
    let mut next = cluster.read_membership();
    next.epoch = 1;
    next.members[3].public_key = hex::encode(new_key.public_bytes());
    let submitted = Instant::now();
    submit_change(&cluster, &next).await;
    // No further client traffic: the primary pads to the boundary checkpoint by itself.
    let switch = cluster.wait_for("epoch 1", &[0, 1, 2], Duration::from_secs(30), |s| s.epoch == 1).await;
    let switched = Instant::now();
    // The old member 3 saw the same boundary and retired (it serves nothing and is not ready).
    cluster.wait_for("old r3 retired", &[3], Duration::from_secs(10), |s| s.retired && !s.ready).await;
    let old = cluster.statuses().await;
    assert!(old[&3].membership.as_ref().is_some_and(|m| m.epoch == 1), "old r3 did not see epoch 1");

    // The operator deletes the old pod, writes the epoch-1 file and starts the new member with a fresh data dir.
    cluster.kill9(3);
    cluster.replace_key(3, new_key.clone(), 1);
    cluster.write_membership(&next);
    let started = Instant::now();
    cluster.start(3);
    let joined = cluster
        .wait_for("new r3 ready", &[3], Duration::from_secs(30), |s| {
            s.epoch == 1 && s.active && s.caught_up && s.ready && !s.retired
        })
        .await;
    let st = cluster.statuses().await;
    assert_eq!(st[&3].public_key.as_ref(), new_key.public_bytes(), "r3 runs with the new key");
    assert!(st[&3].executed_seq >= st[&0].stable_seq, "r3 has the boundary state: {:?}", st[&3]);
    eprintln!(
        "MEASURE membership change: submit -> epoch 1 on r0-r2 {:.0} ms (wait {:.0} ms); new r3 start -> ready {:.0} ms; submit -> new member ready {:.0} ms (incl. test steps)",
        switched.duration_since(submitted).as_secs_f64() * 1000.0,
        switch.as_secs_f64() * 1000.0,
        joined.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1000.0 + switched.duration_since(submitted).as_secs_f64() * 1000.0
    );

    // More writes commit, and the new member's state agrees at the next stable checkpoint.
    let boundary = st[&0].stable_seq;
    acked.extend(put_keys(&cluster, "after", 20).await);
    wait_same_state(&cluster, &[0, 1, 2, 3], boundary).await;
    // The new member takes part in the quorum: with r1 down, writes need r3's votes.
    cluster.kill9(1);
    acked.extend(put_keys(&cluster, "without-r1", 5).await);
    check_all(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_fifth_member_then_removing_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::prepare("member-add-remove", 4, &[]);
    cluster.extra_args = vec!["--watermark-window".into(), "48".into()];
    for i in 0..4 {
        cluster.start(i);
    }
    cluster.wait_ready(&[0, 1, 2, 3], Duration::from_secs(20)).await;
    let st = cluster.statuses().await;
    assert!(st.values().all(|s| s.watermark_window == 48 && s.checkpoint_interval == 16), "--watermark-window");
    let mut acked = put_keys(&cluster, "four", 5).await;

    // Epoch 1: a fifth member.
    let id = cluster.add_slot(Keypair::from_secret([55; 32]));
    let mut next = cluster.read_membership();
    next.epoch = 1;
    next.members.push(cluster.member_entry(id));
    submit_change(&cluster, &next).await;
    cluster.wait_for("epoch 1", &[0, 1, 2, 3], Duration::from_secs(30), |s| s.epoch == 1).await;
    cluster.write_membership(&next);
    cluster.start(id);
    cluster
        .wait_for("r4 ready", &[0, 1, 2, 3, 4], Duration::from_secs(30), |s| {
            s.epoch == 1 && s.ready && s.membership.as_ref().is_some_and(|m| m.members.len() == 5)
        })
        .await;
    let boundary = cluster.statuses().await[&0].stable_seq;
    acked.extend(put_keys(&cluster, "five", 20).await);
    wait_same_state(&cluster, &[0, 1, 2, 3, 4], boundary).await;

    // Epoch 2: remove it again.
    let mut back = cluster.read_membership();
    back.epoch = 2;
    back.members.retain(|m| m.id != id);
    submit_change(&cluster, &back).await;
    cluster.wait_for("epoch 2", &[0, 1, 2, 3], Duration::from_secs(30), |s| s.epoch == 2).await;
    cluster.wait_for("r4 retired", &[id], Duration::from_secs(10), |s| s.retired && !s.ready).await;
    cluster.write_membership(&back);
    cluster.kill9(id);
    let boundary = cluster.statuses().await[&0].stable_seq;
    acked.extend(put_keys(&cluster, "four-again", 20).await);
    wait_same_state(&cluster, &[0, 1, 2, 3], boundary).await;
    check_all(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_over_an_existing_write_ahead_log_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new("wal-owner", 4);
    cluster.wait_ready(&[0, 1, 2, 3], Duration::from_secs(20)).await;
    put_keys(&cluster, "k", 3).await;
    cluster.terminate(2);
    // Same data dir, another key: refused with a clear error, nothing written.
    let data_dir = cluster.slots[2].data_dir.clone();
    cluster.replace_key(2, Keypair::from_secret([99; 32]), 1);
    cluster.slots[2].data_dir = data_dir;
    cluster.start(2);
    let t = Instant::now();
    let code = loop {
        if let Some(Ok(Some(status))) = cluster.slots[2].child.as_mut().map(|c| c.try_wait()) {
            break status.code();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "replica with a foreign key over the WAL kept running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(1));
    let log = std::fs::read_to_string(cluster.dir.join("r2.log")).unwrap();
    assert!(log.contains("needs a fresh data dir"), "no clear error in the log: {log}");
    cluster.slots[2].child = None;
}
