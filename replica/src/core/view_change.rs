//! Choosing what the new view re-proposes (the O set of NEW-VIEW).
//!
//! A pure function of the view-change messages, so that the new primary and
//! every backup compute it identically and a backup can check the primary.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::crypto::{sha256, Digest};
use crate::membership::ReplicaId;
use crate::proto::Envelope;

/// The digest of a batch: SHA-256 over each request's SHA-256.
pub fn batch_digest(requests: &[Bytes]) -> Digest {
    let mut parts: Vec<Digest> = Vec::with_capacity(requests.len());
    for r in requests {
        parts.push(sha256(&[r]));
    }
    let refs: Vec<&[u8]> =
        std::iter::once(b"pbft/batch/v1".as_slice()).chain(parts.iter().map(|d| d.as_slice())).collect();
    sha256(&refs)
}

/// A prepared certificate as carried in a view change (already validated).
#[derive(Clone, Debug)]
pub struct PreparedInfo {
    pub view: u64,
    pub seq: u64,
    pub digest: Digest,
    pub requests: Vec<Bytes>,
}

/// A validated view-change message.
#[derive(Clone, Debug)]
pub struct ViewChangeInfo {
    pub sender: ReplicaId,
    pub stable_seq: u64,
    pub stable_digest: Option<Digest>,
    pub checkpoint_proof: Vec<Envelope>,
    pub prepared: Vec<PreparedInfo>,
}

/// One sequence number the new view re-proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSlot {
    pub seq: u64,
    pub digest: Digest,
    /// Empty for a null request.
    pub requests: Vec<Bytes>,
}

/// The outcome of a view change.
#[derive(Clone, Debug)]
pub struct NewViewPlan {
    /// The latest stable checkpoint any view change proves (min-s).
    pub min_s: u64,
    pub stable_digest: Option<Digest>,
    pub checkpoint_proof: Vec<Envelope>,
    /// The highest prepared sequence number (max-s), at least `min_s`.
    pub max_s: u64,
    /// One entry per sequence number in (min_s, max_s].
    pub slots: Vec<PlannedSlot>,
}

/// Computes min-s, max-s and the O set: for each sequence number between
/// them, the request prepared in the highest view, or a null request.
pub fn plan_new_view(vcs: &[ViewChangeInfo]) -> NewViewPlan {
    let best = vcs.iter().max_by_key(|v| v.stable_seq);
    let min_s = best.map_or(0, |v| v.stable_seq);
    let mut chosen: BTreeMap<u64, &PreparedInfo> = BTreeMap::new();
    for vc in vcs {
        for p in &vc.prepared {
            if p.seq <= min_s {
                continue;
            }
            match chosen.get(&p.seq) {
                Some(c) if c.view >= p.view => {}
                _ => {
                    chosen.insert(p.seq, p);
                }
            }
        }
    }
    let max_s = chosen.keys().next_back().copied().unwrap_or(min_s).max(min_s);
    let null = batch_digest(&[]);
    let slots = (min_s + 1..=max_s)
        .map(|seq| match chosen.get(&seq) {
            Some(p) => PlannedSlot { seq, digest: p.digest, requests: p.requests.clone() },
            None => PlannedSlot { seq, digest: null, requests: vec![] },
        })
        .collect();
    NewViewPlan {
        min_s,
        stable_digest: best.and_then(|v| v.stable_digest),
        checkpoint_proof: best.map(|v| v.checkpoint_proof.clone()).unwrap_or_default(),
        max_s,
        slots,
    }
}

// ---------------------------------------------------------------------- the protocol

use super::*;

impl Replica {
    // ------------------------------------------------------------------ view change

    pub(super) fn start_view_change(&mut self, new_view: u64) {
        self.counters.view_changes += 1;
        self.view = new_view;
        self.active = false;
        self.settle_suspicions(new_view, false);
        self.out.push(Action::ViewChangeStarted { view: new_view });
        for (_, slot) in std::mem::take(&mut self.slots) {
            self.refund_slot(slot);
        }
        if let Some((_, _, c)) = self.new_view.take() {
            self.ledger.refund(c);
        }
        let prepared: Vec<PreparedCertificate> = self
            .certificates
            .iter()
            .filter(|(s, _)| **s > self.stable.seq)
            .map(|(_, c)| PreparedCertificate {
                pre_prepare: Some(c.pre_prepare.clone()),
                prepares: c.prepares.clone(),
                batch: Some(Batch { requests: c.requests.clone() }),
            })
            .collect();
        let body = Body::ViewChange(ViewChange {
            new_view,
            stable_seq: self.stable.seq,
            checkpoint_proof: self.stable.proof.clone(),
            prepared,
        });
        if let Some(env) = self.sign(body) {
            self.broadcast(&env);
            if let Ok(msg) = Message::decode(env.payload.as_ref()) {
                if let Some(Body::ViewChange(vc)) = msg.body {
                    match self.validate_view_change(self.cfg.id, &vc) {
                        Ok(info) => self.store_view_change(self.cfg.id, new_view, env, info),
                        Err(why) => {
                            self.out.push(Action::Warning(Warning::InvalidViewChange { from: self.cfg.id, why }))
                        }
                    }
                }
            }
        }
        self.arm_vc_timer();
        self.try_new_view();
    }

    pub(super) fn store_view_change(&mut self, sender: ReplicaId, view: u64, env: Envelope, info: ViewChangeInfo) {
        if let Some(old) = self.view_changes.remove(&sender) {
            self.ledger.refund(old.charge);
        }
        let Some(charge) = self.ledger.charge(Category::ViewChange, None, env_size(&env)) else {
            self.counters.dropped_over_budget += 1;
            return;
        };
        self.view_changes.insert(sender, StoredViewChange { view, env, info, charge });
    }

    /// Checks a view change's proofs: the checkpoint proof (a quorum of
    /// matching signed checkpoints) and each prepared certificate (a
    /// pre-prepare from that view's primary plus a quorum-minus-one of
    /// matching prepares from other replicas), all signatures in one batch.
    pub(super) fn validate_view_change(
        &mut self,
        sender: ReplicaId,
        vc: &ViewChange,
    ) -> Result<ViewChangeInfo, String> {
        let m = self.membership.clone();
        let q = m.quorum();
        let mut checks: Vec<(VerifyingKey, Envelope)> = vec![];
        // Checkpoint proof.
        let mut stable_digest = None;
        let mut proof_epoch: Option<u64> = None;
        let mut proof_quorum = q;
        if vc.stable_seq > 0 {
            let mut signers = BTreeSet::new();
            for env in &vc.checkpoint_proof {
                let msg = Message::decode(env.payload.as_ref()).map_err(|_| "checkpoint proof does not decode")?;
                let Some(Body::Checkpoint(c)) = &msg.body else {
                    return Err("checkpoint proof holds another message".into());
                };
                let signers_of = if msg.epoch == m.epoch() {
                    &m
                } else {
                    // Right after an epoch switch the proof may still be the old epoch's.
                    match self.transition.as_ref() {
                        Some(t) if t.membership.epoch() == msg.epoch && t.checkpoint.seq == vc.stable_seq => {
                            &t.membership
                        }
                        _ => return Err(format!("checkpoint proof from epoch {}", msg.epoch)),
                    }
                };
                if c.seq != vc.stable_seq || *proof_epoch.get_or_insert(msg.epoch) != msg.epoch {
                    return Err("checkpoint proof for another seq or mixed epochs".into());
                }
                let d = digest_of(&c.state_digest).ok_or("checkpoint digest is not 32 bytes")?;
                if *stable_digest.get_or_insert(d) != d || !signers.insert(msg.sender) {
                    return Err("checkpoint proof has differing digests or repeated signers".into());
                }
                proof_quorum = signers_of.quorum();
                checks.push((*signers_of.key(msg.sender).ok_or("checkpoint signer is not a member")?, env.clone()));
            }
            if signers.len() < proof_quorum {
                return Err(format!("checkpoint proof has {} signers, {proof_quorum} needed", signers.len()));
            }
        }
        // Prepared certificates.
        let mut prepared = vec![];
        let mut seqs = BTreeSet::new();
        for cert in &vc.prepared {
            let pp_env = cert.pre_prepare.as_ref().ok_or("certificate without pre-prepare")?;
            let pp_msg =
                Message::decode(pp_env.payload.as_ref()).map_err(|_| "certificate pre-prepare does not decode")?;
            let Some(Body::PrePrepare(pp)) = &pp_msg.body else {
                return Err("certificate holds no pre-prepare".into());
            };
            if pp_msg.epoch != m.epoch()
                || pp.view >= vc.new_view
                || pp.seq <= vc.stable_seq
                || pp.seq > vc.stable_seq + self.cfg.watermark_window
                || pp_msg.sender != m.primary(pp.view)
                || !seqs.insert(pp.seq)
            {
                return Err(format!("certificate for seq {} view {} is out of place", pp.seq, pp.view));
            }
            let digest = digest_of(&pp.digest).ok_or("certificate digest is not 32 bytes")?;
            let requests =
                pp.batch.as_ref().or(cert.batch.as_ref()).ok_or("certificate without requests")?.requests.clone();
            if batch_digest(&requests) != digest {
                return Err(format!("certificate for seq {}: requests do not match the digest", pp.seq));
            }
            checks.push((*m.key(pp_msg.sender).ok_or("primary is not a member")?, pp_env.clone()));
            let mut signers = BTreeSet::new();
            for p_env in &cert.prepares {
                let msg = Message::decode(p_env.payload.as_ref()).map_err(|_| "certificate prepare does not decode")?;
                let Some(Body::Prepare(p)) = &msg.body else { return Err("certificate holds a non-prepare".into()) };
                if msg.epoch != m.epoch()
                    || p.view != pp.view
                    || p.seq != pp.seq
                    || p.digest != pp.digest
                    || msg.sender == pp_msg.sender
                    || !signers.insert(msg.sender)
                {
                    return Err(format!("certificate for seq {}: a prepare does not match", pp.seq));
                }
                checks.push((*m.key(msg.sender).ok_or("prepare signer is not a member")?, p_env.clone()));
            }
            if signers.len() + 1 < q {
                return Err(format!("certificate for seq {} has {} prepares", pp.seq, signers.len()));
            }
            prepared.push(PreparedInfo { view: pp.view, seq: pp.seq, digest, requests });
        }
        if sender != self.cfg.id {
            let sig_checks: Vec<SignatureCheck> = checks
                .iter()
                .map(|(k, e)| SignatureCheck {
                    key: k,
                    domain: MESSAGE_DOMAIN,
                    body: &e.payload,
                    signature: &e.signature,
                })
                .collect();
            if !self.verifier.verify_all(&sig_checks).into_iter().all(|x| x) {
                return Err("a signature inside the view change does not verify".into());
            }
            for p in &prepared {
                if !self.batch_is_valid(&p.requests) {
                    return Err(format!("certificate for seq {} holds an invalid request", p.seq));
                }
            }
        }
        Ok(ViewChangeInfo {
            sender,
            stable_seq: vc.stable_seq,
            stable_digest,
            checkpoint_proof: vc.checkpoint_proof.clone(),
            prepared,
        })
    }

    pub(super) fn on_view_change(&mut self, env: Envelope, sender: ReplicaId, vc: ViewChange) {
        use crate::proto::evidence::Kind;
        if let Some(existing) = self.view_changes.get(&sender) {
            if existing.view == vc.new_view && existing.env.payload != env.payload {
                let slot = VoteSlot { kind: Kind::ConflictingViewChange as i32, view: vc.new_view, seq: 0 };
                let first = existing.env.clone();
                self.record_evidence(slot, sender, first, env);
                return;
            }
            if existing.view >= vc.new_view {
                return;
            }
        }
        let info = match self.validate_view_change(sender, &vc) {
            Ok(info) => info,
            Err(why) => {
                self.out.push(Action::Warning(Warning::InvalidViewChange { from: sender, why }));
                return;
            }
        };
        self.store_view_change(sender, vc.new_view, env, info);
        // Liveness: f+1 replicas asking for views above ours means at least
        // one honest replica does; join the smallest such view.
        let above: Vec<u64> = self
            .view_changes
            .iter()
            .filter(|(r, v)| **r != self.cfg.id && v.view > self.view)
            .map(|(_, v)| v.view)
            .collect();
        if above.len() >= self.membership.weak_quorum() {
            let target = *above.iter().min().expect("non-empty");
            self.start_view_change(target);
            return;
        }
        // A view change asks for its view like a SUSPECT does.
        self.count_suspicions();
        if !self.active {
            self.try_new_view();
        }
    }

    /// As the new view's primary, sends NEW-VIEW once a quorum asked for it.
    pub(super) fn try_new_view(&mut self) {
        if self.active || self.membership.primary(self.view) != self.cfg.id {
            return;
        }
        if self.new_view.as_ref().is_some_and(|(v, _, _)| *v == self.view) {
            return;
        }
        let view = self.view;
        let vcs: Vec<(Envelope, ViewChangeInfo)> =
            self.view_changes.values().filter(|v| v.view == view).map(|v| (v.env.clone(), v.info.clone())).collect();
        if vcs.len() < self.membership.quorum() {
            return;
        }
        let vcs: Vec<(Envelope, ViewChangeInfo)> = vcs.into_iter().take(self.membership.quorum()).collect();
        let infos: Vec<ViewChangeInfo> = vcs.iter().map(|(_, i)| i.clone()).collect();
        let plan = plan_new_view(&infos);
        let mut pre_prepares = vec![];
        for s in &plan.slots {
            let body = Body::PrePrepare(PrePrepare {
                view,
                seq: s.seq,
                digest: Bytes::copy_from_slice(&s.digest),
                batch: None,
            });
            match self.sign(body) {
                Some(env) => pre_prepares.push(env),
                None => return,
            }
        }
        let nv = NewView {
            view,
            view_changes: vcs.into_iter().map(|(e, _)| e).collect(),
            pre_prepares: pre_prepares.clone(),
        };
        let Some(env) = self.sign(Body::NewView(nv)) else { return };
        // Installing persists the NEW-VIEW; only then is it sent.
        self.install_new_view(view, env.clone(), plan, pre_prepares);
        self.broadcast(&env);
    }

    pub(super) fn on_new_view(&mut self, env: Envelope, sender: ReplicaId, nv: NewView) {
        let m = self.membership.clone();
        if sender != m.primary(nv.view) {
            return;
        }
        // Validate V: a quorum of valid view changes for this view from distinct replicas.
        let mut infos = vec![];
        let mut senders = BTreeSet::new();
        for vc_env in &nv.view_changes {
            let Ok(msg) = Message::decode(vc_env.payload.as_ref()) else { return };
            let Some(Body::ViewChange(vc)) = &msg.body else { return };
            if msg.epoch != m.epoch() || vc.new_view != nv.view || !senders.insert(msg.sender) {
                return;
            }
            let Some(key) = m.key(msg.sender).copied() else { return };
            if msg.sender != self.cfg.id {
                let ok = self.verifier.verify_all(&[SignatureCheck {
                    key: &key,
                    domain: MESSAGE_DOMAIN,
                    body: &vc_env.payload,
                    signature: &vc_env.signature,
                }]);
                if !ok[0] {
                    return;
                }
            }
            match self.validate_view_change(msg.sender, vc) {
                Ok(info) => infos.push(info),
                Err(why) => {
                    self.out.push(Action::Warning(Warning::InvalidViewChange { from: msg.sender, why }));
                    return;
                }
            }
        }
        if senders.len() < m.quorum() {
            return;
        }
        // Recompute O and compare with what the primary sent.
        let plan = plan_new_view(&infos);
        if plan.slots.len() != nv.pre_prepares.len() {
            return;
        }
        let key = *m.key(sender).expect("primary is a member");
        let mut checks = vec![];
        for (s, pp_env) in plan.slots.iter().zip(&nv.pre_prepares) {
            let Ok(msg) = Message::decode(pp_env.payload.as_ref()) else { return };
            let Some(Body::PrePrepare(pp)) = &msg.body else { return };
            if msg.sender != sender
                || msg.epoch != m.epoch()
                || pp.view != nv.view
                || pp.seq != s.seq
                || pp.digest.as_ref() != s.digest
            {
                return;
            }
            checks.push(pp_env);
        }
        let sig_checks: Vec<SignatureCheck> = checks
            .iter()
            .map(|e| SignatureCheck { key: &key, domain: MESSAGE_DOMAIN, body: &e.payload, signature: &e.signature })
            .collect();
        if !self.verifier.verify_all(&sig_checks).into_iter().all(|x| x) {
            return;
        }
        let pre_prepares = nv.pre_prepares.clone();
        self.install_new_view(nv.view, env, plan, pre_prepares);
    }

    /// Enters `view` with the O set of the NEW-VIEW.
    pub(super) fn install_new_view(
        &mut self,
        view: u64,
        env: Envelope,
        plan: NewViewPlan,
        pre_prepares: Vec<Envelope>,
    ) {
        let primary = self.membership.primary(view);
        self.out.push(Action::Persist(PersistRecord::NewView(env.clone())));
        self.view = view;
        self.active = true;
        self.settle_suspicions(view, true);
        for (_, slot) in std::mem::take(&mut self.slots) {
            self.refund_slot(slot);
        }
        if let Some((_, _, c)) = self.new_view.take() {
            self.ledger.refund(c);
        }
        let charge = self.ledger.charge(Category::ViewChange, None, env_size(&env));
        match charge {
            Some(c) => self.new_view = Some((view, env, c)),
            None => self.counters.dropped_over_budget += 1,
        }
        // View changes for this view or older are done.
        let done: Vec<ReplicaId> = self.view_changes.iter().filter(|(_, v)| v.view <= view).map(|(r, _)| *r).collect();
        for r in done {
            if let Some(v) = self.view_changes.remove(&r) {
                self.ledger.refund(v.charge);
            }
        }
        self.disarm_vc_timer();
        self.out.push(Action::NewView { view, primary });
        // Catch up to min-s if we are behind it.
        if plan.min_s > self.stable.seq {
            match (self.own_checkpoints.get(&plan.min_s), plan.stable_digest) {
                (Some(own), Some(d)) if own.digest == d => {
                    let snapshot = own.snapshot.clone();
                    let epoch = self.membership.epoch();
                    self.make_stable(StableCheckpoint {
                        seq: plan.min_s,
                        epoch,
                        digest: d,
                        snapshot,
                        proof: plan.checkpoint_proof.clone(),
                    });
                }
                _ => {
                    if self.state.seq < plan.min_s {
                        self.request_state(plan.min_s);
                    }
                }
            }
        }
        let low = self.stable.seq.max(plan.min_s);
        for (s, env) in plan.slots.into_iter().zip(pre_prepares) {
            if s.seq <= low || s.seq > self.stable.seq + self.cfg.watermark_window {
                continue;
            }
            let size = s.requests.iter().map(|r| r.len()).sum::<usize>() + env_size(&env);
            let charge = self.ledger.charge(Category::Log, Some(primary), size);
            if s.requests.iter().any(is_membership_request) {
                let k = self.cfg.checkpoint_interval;
                self.membership_boundary = Some(s.seq.div_ceil(k) * k);
            }
            self.set_pre_prepare(s.seq, SlotPrePrepare { env, digest: s.digest, requests: s.requests, charge });
        }
        self.next_seq = plan.max_s.max(low) + 1;
        let seqs: Vec<u64> = self.slots.keys().copied().collect();
        for s in seqs {
            self.check_slot(s);
        }
        self.arm_request_timer();
        // Votes that arrived before the NEW-VIEW.
        let mut replay = vec![];
        for (v, _, bytes, charge) in std::mem::take(&mut self.future_votes) {
            if v > view {
                self.future_votes.push((v, sha256(&[&bytes]), bytes, charge));
                continue;
            }
            self.ledger.refund(charge);
            if v == view {
                replay.push(bytes);
            }
        }
        if !replay.is_empty() {
            self.on_peer_messages(replay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(view: u64, seq: u64, tag: u8) -> PreparedInfo {
        let requests = vec![Bytes::from(vec![tag; 8])];
        PreparedInfo { view, seq, digest: batch_digest(&requests), requests }
    }

    fn vc(sender: u32, stable: u64, prepared: Vec<PreparedInfo>) -> ViewChangeInfo {
        ViewChangeInfo { sender, stable_seq: stable, stable_digest: None, checkpoint_proof: vec![], prepared }
    }

    #[test]
    fn o_set_takes_highest_view_and_fills_gaps_with_null() {
        let vcs = vec![
            vc(0, 10, vec![p(1, 11, 1), p(1, 13, 3)]),
            vc(1, 10, vec![p(2, 11, 9)]),
            vc(2, 8, vec![p(0, 9, 7), p(0, 12, 5)]),
        ];
        let plan = plan_new_view(&vcs);
        assert_eq!((plan.min_s, plan.max_s), (10, 13));
        let seqs: Vec<u64> = plan.slots.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, vec![11, 12, 13]);
        assert_eq!(plan.slots[0].digest, p(2, 11, 9).digest, "view 2 beats view 1");
        assert_eq!(plan.slots[1].digest, p(0, 12, 5).digest);
        assert_eq!(plan.slots[2].digest, p(1, 13, 3).digest);
        // Below min-s nothing is re-proposed even if prepared.
        assert!(plan.slots.iter().all(|s| s.seq > 10));
    }

    #[test]
    fn no_prepared_requests_means_empty_o_set() {
        let plan = plan_new_view(&[vc(0, 4, vec![]), vc(1, 0, vec![]), vc(3, 4, vec![])]);
        assert_eq!((plan.min_s, plan.max_s, plan.slots.len()), (4, 4, 0));
    }

    #[test]
    fn gaps_become_null_requests() {
        let plan = plan_new_view(&[vc(0, 0, vec![p(3, 3, 1)])]);
        assert_eq!(plan.slots.len(), 3);
        assert!(plan.slots[0].requests.is_empty() && plan.slots[1].requests.is_empty());
        assert_eq!(plan.slots[0].digest, batch_digest(&[]));
    }
}
