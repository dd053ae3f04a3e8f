//! Talking to replicas: their admin API (status, evidence) and, signed with
//! the cluster's admin key, membership changes through the client API (f+1
//! matching signed replies, like any client).

use std::time::Duration;

use pbft::crypto::Keypair;
use pbft::kvclient::{Endpoints, KvClient};
use pbft::proto::{op_result::Status as OpStatus, operation::Kind, Member as WireMember, MembershipChange};
use pbft::server::rpc::{admin_client::AdminClient, EvidenceRequest, StatusReply, StatusRequest};
use tonic::transport::Endpoint;

use super::evidence::wire_membership;
use super::model::{Committed, Member, PendingChange, Report};
use crate::build::{ADMIN_PORT, CLIENT_PORT};

/// How long one admin call may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a membership change may wait for f+1 replies.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(15);

/// The admin API of the replica at `ip`.
pub fn admin_url(ip: &str) -> String {
    url(ip, ADMIN_PORT)
}

fn url(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

fn committed_of(reply: &StatusReply) -> Option<Committed> {
    let m = reply.membership.as_ref()?;
    let mut members: Vec<Member> =
        m.members.iter().map(|x| Member { id: x.id, public_key: hex::encode(&x.public_key) }).collect();
    members.sort();
    Some(Committed { epoch: m.epoch, admin_key: hex::encode(&m.admin_key), members })
}

/// The status of the replica at `ip` and the evidence it holds (encoded `pbft.v1.Evidence`).
pub async fn observe(ip: &str) -> Result<(Report, Vec<Vec<u8>>), String> {
    let channel = Endpoint::from_shared(admin_url(ip))
        .map_err(|e| e.to_string())?
        .connect_timeout(ADMIN_TIMEOUT)
        .timeout(ADMIN_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("connecting to {ip}:{ADMIN_PORT}: {e}"))?;
    let mut admin = AdminClient::new(channel).max_decoding_message_size(16 << 20);
    let s = admin.status(StatusRequest {}).await.map_err(|e| format!("status: {}", e.message()))?.into_inner();
    let evidence = if s.evidence_count > 0 {
        admin
            .evidence(EvidenceRequest {})
            .await
            .map_err(|e| format!("evidence: {}", e.message()))?
            .into_inner()
            .evidence
            .into_iter()
            .map(|b| b.to_vec())
            .collect()
    } else {
        vec![]
    };
    let report = Report {
        id: s.id,
        public_key: hex::encode(&s.public_key),
        member: s.member,
        active: s.active,
        ready: s.ready,
        view: s.view,
        primary: s.primary,
        epoch: s.epoch,
        executed: s.executed_seq,
        stable: s.stable_seq,
        evidence_count: s.evidence_count,
        membership: committed_of(&s),
    };
    Ok((report, evidence))
}

/// Submits `change`, signed by `admin`, to the members of `committed` at
/// their pod IPs; `address` gives each member's peer address for the new
/// membership. Ok: the cluster ordered it (or already has a change pending,
/// which the caller sees through the epoch). Err: no f+1 replies, or refused.
pub async fn submit_change(
    committed: &Committed,
    ips: &[(u32, String)],
    admin: &Keypair,
    change: &PendingChange,
    address: impl Fn(u32) -> String,
) -> Result<(), String> {
    let membership = wire_membership(committed)?;
    let mut replicas = vec![];
    for (id, ip) in ips {
        let u = url(ip, CLIENT_PORT);
        let ch = Endpoint::from_shared(u.clone())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect_lazy();
        replicas.push((*id, u, ch));
    }
    let mut client = KvClient::with_key(Endpoints::members(membership, replicas), admin.clone());
    client.timeout = SUBMIT_TIMEOUT;
    let members = change
        .members
        .iter()
        .map(|m| {
            Ok(WireMember {
                id: m.id,
                public_key: hex::decode(&m.public_key).map_err(|e| format!("member {} key: {e}", m.id))?.into(),
                address: address(m.id),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let result = client
        .execute(Kind::Membership(MembershipChange { from_epoch: change.from_epoch, members }))
        .await
        .map_err(|e| e.to_string())?;
    match OpStatus::try_from(result.status) {
        Ok(OpStatus::Ok) => Ok(()),
        _ if result.error.contains("already pending") => Ok(()),
        _ => Err(format!("the cluster refused the membership change: {}", result.error)),
    }
}
