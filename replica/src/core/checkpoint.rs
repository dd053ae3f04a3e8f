//! Checkpoints, their stability at a quorum, garbage collection of the log,
//! and the switch to a new membership epoch at a stable boundary.

use super::*;

impl Replica {
    // ------------------------------------------------------------------ checkpoints

    pub(super) fn make_checkpoint(&mut self, seq: u64, live: bool) {
        let (snapshot, digest) = self.state.encoded_snapshot();
        self.own_checkpoints.insert(seq, OwnCheckpoint { digest, snapshot });
        if !live {
            return;
        }
        if let Some(env) =
            self.sign(Body::Checkpoint(Checkpoint { seq, state_digest: Bytes::copy_from_slice(&digest) }))
        {
            self.broadcast(&env);
            self.store_checkpoint_vote(self.cfg.id, seq, env, digest.to_vec());
        }
        self.check_stable(seq);
    }

    pub(super) fn store_checkpoint_vote(&mut self, sender: ReplicaId, seq: u64, env: Envelope, digest: Vec<u8>) {
        let charge = self.ledger.charge(Category::Checkpoint, None, env_size(&env));
        if charge.is_none() && sender != self.cfg.id {
            self.counters.dropped_over_budget += 1;
            return;
        }
        self.checkpoint_votes.entry(seq).or_default().insert(sender, Stored { env, digest, charge });
    }

    pub(super) fn on_checkpoint(&mut self, env: Envelope, sender: ReplicaId, c: Checkpoint) {
        let claim = self.checkpoint_claims.entry(sender).or_insert(0);
        *claim = (*claim).max(c.seq);
        if c.seq > self.stable.seq + self.cfg.watermark_window {
            self.maybe_fetch_state();
            return;
        }
        if let Some(existing) = self.checkpoint_votes.get(&c.seq).and_then(|m| m.get(&sender)) {
            if existing.digest.as_slice() != c.state_digest.as_ref() {
                let first = existing.env.clone();
                let slot =
                    VoteSlot { kind: crate::proto::evidence::Kind::ConflictingCheckpoint as i32, view: 0, seq: c.seq };
                self.record_evidence(slot, sender, first, env);
            }
            return;
        }
        self.store_checkpoint_vote(sender, c.seq, env, c.state_digest.to_vec());
        self.check_stable(c.seq);
        self.maybe_fetch_state();
    }

    /// A checkpoint is stable when a quorum signed the same digest.
    pub(super) fn check_stable(&mut self, seq: u64) {
        if seq == self.stable.seq && self.stable.epoch != self.membership.epoch() {
            self.refresh_stable_proof();
            return;
        }
        if seq <= self.stable.seq {
            return;
        }
        let q = self.membership.quorum();
        let Some(votes) = self.checkpoint_votes.get(&seq) else { return };
        let mut by_digest: BTreeMap<&[u8], Vec<&Envelope>> = BTreeMap::new();
        for v in votes.values() {
            by_digest.entry(v.digest.as_slice()).or_default().push(&v.env);
        }
        let Some((digest, proof)) = by_digest.into_iter().find(|(_, v)| v.len() >= q) else { return };
        let digest: Digest = match digest.try_into() {
            Ok(d) => d,
            Err(_) => return,
        };
        let proof: Vec<Envelope> = proof.into_iter().take(q).cloned().collect();
        match self.own_checkpoints.get(&seq) {
            Some(own) if own.digest == digest => {
                let snapshot = own.snapshot.clone();
                let epoch = self.membership.epoch();
                self.make_stable(StableCheckpoint { seq, epoch, digest, snapshot, proof });
            }
            Some(_) => {
                self.out.push(Action::Warning(Warning::StateDiverged { seq }));
                self.request_state(seq);
            }
            None if self.state.seq < seq => self.request_state(seq),
            None => {}
        }
    }

    /// After an epoch switch, replaces the old epoch's proof of the stable
    /// checkpoint with one signed by the new members, which new members can check.
    pub(super) fn refresh_stable_proof(&mut self) {
        let seq = self.stable.seq;
        let q = self.membership.quorum();
        let epoch = self.membership.epoch();
        let Some(votes) = self.checkpoint_votes.get(&seq) else { return };
        // Only this epoch's votes: a proof must not mix epochs (view changes
        // carrying it would be refused).
        let proof: Vec<Envelope> = votes
            .values()
            .filter(|v| v.digest.as_slice() == self.stable.digest)
            .filter(|v| Message::decode(v.env.payload.as_ref()).is_ok_and(|m| m.epoch == epoch))
            .map(|v| v.env.clone())
            .take(q)
            .collect();
        if proof.len() < q {
            return;
        }
        self.stable.proof = proof.clone();
        self.stable.epoch = self.membership.epoch();
        self.out.push(Action::Persist(PersistRecord::Checkpoint {
            seq,
            snapshot: self.stable.snapshot.clone(),
            proof,
        }));
        if let Some(votes) = self.checkpoint_votes.remove(&seq) {
            for v in votes.into_values() {
                if let Some(c) = v.charge {
                    self.ledger.refund(c);
                }
            }
        }
    }

    /// Moves the low watermark to a stable checkpoint and discards the log below it.
    pub(super) fn make_stable(&mut self, ckpt: StableCheckpoint) {
        let seq = ckpt.seq;
        self.out.push(Action::Persist(PersistRecord::Checkpoint {
            seq,
            snapshot: ckpt.snapshot.clone(),
            proof: ckpt.proof.clone(),
        }));
        self.out.push(Action::StableCheckpoint { seq, digest: ckpt.digest });
        self.stable = ckpt;
        self.collect_garbage();
        let boundary_reached = self.state.seq == seq && self.state.next_membership.is_some();
        if boundary_reached {
            self.switch_epoch();
        }
        self.try_execute();
    }

    pub(super) fn collect_garbage(&mut self) {
        let h = self.stable.seq;
        let keep = self.slots.split_off(&(h + 1));
        for (_, slot) in std::mem::replace(&mut self.slots, keep) {
            self.refund_slot(slot);
        }
        let keep = self.certificates.split_off(&(h + 1));
        for (_, c) in std::mem::replace(&mut self.certificates, keep) {
            self.ledger.refund(c.charge);
        }
        let keep = self.checkpoint_votes.split_off(&h);
        for (_, votes) in std::mem::replace(&mut self.checkpoint_votes, keep) {
            for v in votes.into_values() {
                if let Some(c) = v.charge {
                    self.ledger.refund(c);
                }
            }
        }
        if self.stable.epoch == self.membership.epoch() {
            if let Some(votes) = self.checkpoint_votes.remove(&h) {
                for v in votes.into_values() {
                    if let Some(c) = v.charge {
                        self.ledger.refund(c);
                    }
                }
            }
        }
        self.own_checkpoints = self.own_checkpoints.split_off(&(h + 1));
        self.evidence_seen.retain(|(s, _)| s.seq == 0 || s.seq > h);
        self.prune_signed();
        if self.next_seq <= h {
            self.next_seq = h + 1;
        }
        if self.membership_boundary.is_some_and(|b| b <= h) && self.state.next_membership.is_none() {
            self.membership_boundary = None;
        }
    }

    pub(super) fn prune_signed(&mut self) {
        let h = self.stable.seq;
        let view = self.view;
        let window = self.cfg.view_window;
        let epoch = self.membership.epoch();
        // Entries of a later epoch (seen while installing a snapshot) are kept.
        self.signed.retain(|(e, s), _| {
            *e > epoch || (*e == epoch && (if s.seq == 0 { s.view.saturating_add(window) >= view } else { s.seq > h }))
        });
    }

    /// Puts an accepted pre-prepare into its slot and indexes its requests.
    pub(super) fn set_pre_prepare(&mut self, seq: u64, pp: SlotPrePrepare) {
        for r in &pp.requests {
            self.in_flight.insert(sha256(&[r]), seq);
        }
        self.slots.entry(seq).or_default().pre_prepare = Some(pp);
    }

    pub(super) fn refund_slot(&mut self, slot: Slot) {
        if let Some(pp) = slot.pre_prepare {
            for r in &pp.requests {
                self.in_flight.remove(&sha256(&[r]));
            }
            if let Some(c) = pp.charge {
                self.ledger.refund(c);
            }
        }
        for m in slot.prepares.into_values().chain(slot.commits.into_values()) {
            if let Some(c) = m.charge {
                self.ledger.refund(c);
            }
        }
    }

    // ------------------------------------------------------------------ membership epochs

    /// Puts the pending membership in force at the stable boundary checkpoint.
    pub(super) fn switch_epoch(&mut self) {
        let Some(next) = self.state.next_membership.take() else { return };
        let Ok(next) = Membership::new(next) else { return };
        let old = std::mem::replace(&mut self.membership, next.clone());
        self.state.membership = next;
        let own_vote = self
            .checkpoint_votes
            .get(&self.stable.seq)
            .and_then(|m| m.get(&self.cfg.id))
            .map(|v| v.env.clone())
            .or_else(|| self.stable.proof.iter().find(|e| open_sender(e) == Some(self.cfg.id)).cloned());
        self.transition =
            Some(Transition { membership: old, checkpoint: self.stable.clone(), own_vote, resend_ticks: 64 });
        // Everything above the boundary was signed in the old epoch: drop it.
        for (_, slot) in std::mem::take(&mut self.slots) {
            self.refund_slot(slot);
        }
        for (_, c) in std::mem::take(&mut self.certificates) {
            self.ledger.refund(c.charge);
        }
        for (_, vc) in std::mem::take(&mut self.view_changes) {
            self.ledger.refund(vc.charge);
        }
        if let Some((_, _, c)) = self.new_view.take() {
            self.ledger.refund(c);
        }
        for (_, votes) in std::mem::take(&mut self.checkpoint_votes) {
            for v in votes.into_values() {
                if let Some(c) = v.charge {
                    self.ledger.refund(c);
                }
            }
        }
        for (_, _, _, c) in std::mem::take(&mut self.future_votes) {
            self.ledger.refund(c);
        }
        self.checkpoint_claims.clear();
        self.evidence_seen.clear();
        // Suspicions were about the old epoch's views.
        self.suspicions.clear();
        self.own_suspicion = None;
        self.forwarded = None;
        self.membership_boundary = None;
        self.next_seq = self.stable.seq + 1;
        self.ledger.set_members(self.membership.n());
        self.out.push(Action::MembershipChanged { epoch: self.membership.epoch() });
        let me_in_new = self.membership.key(self.cfg.id).is_some_and(|k| *k == self.key.public());
        if !me_in_new {
            self.retired = true;
            self.disarm_vc_timer();
            self.out.push(Action::Retired);
            return;
        }
        // The stable checkpoint is re-signed in the new epoch so that new
        // members can verify a state transfer with the keys they know.
        let seq = self.stable.seq;
        let digest = self.stable.digest;
        if let Some(env) =
            self.sign(Body::Checkpoint(Checkpoint { seq, state_digest: Bytes::copy_from_slice(&digest) }))
        {
            self.broadcast(&env);
            self.store_checkpoint_vote(self.cfg.id, seq, env, digest.to_vec());
        }
        // A new epoch is a fresh instance of the protocol from the boundary
        // checkpoint: every replica starts it in view 0, in normal operation,
        // which a new member knows without being told.
        self.view = 0;
        self.active = true;
        self.failed_views = 0;
        self.out.push(Action::NewView { view: 0, primary: self.membership.primary(0) });
        self.arm_request_timer();
    }
}
