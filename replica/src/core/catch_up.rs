//! Catching up: state transfer of a stable checkpoint, and the periodic
//! retransmission and status requests that recover from lost messages.

use super::*;

impl Replica {
    // ------------------------------------------------------------------ state transfer

    pub(super) fn request_state(&mut self, min_seq: u64) {
        let epoch = self.membership.epoch();
        let env = match &self.last_state_request {
            // ed25519 is deterministic: re-sending the same request needs no new signature.
            Some((e, m, env)) if *e == epoch && *m == min_seq => Some(env.clone()),
            _ => self.sign(Body::StateRequest(StateRequest { min_seq })),
        };
        if let Some(env) = env {
            self.last_state_request = Some((epoch, min_seq, env.clone()));
            self.broadcast(&env);
        }
    }

    /// Fetches state when f+1 replicas claim checkpoints we have not reached
    /// and cannot reach with the log we hold.
    pub(super) fn maybe_fetch_state(&mut self) {
        let f1 = self.membership.weak_quorum();
        let mut claims: Vec<u64> = self.checkpoint_claims.values().copied().collect();
        claims.sort_unstable_by(|a, b| b.cmp(a));
        let Some(target) = claims.get(f1 - 1).copied() else { return };
        if target >= self.stable.seq + self.cfg.watermark_window && target > self.state.seq {
            self.request_state(self.state.seq + 1);
        }
    }

    pub(super) fn on_state_request(&mut self, sender: ReplicaId, epoch: u64, req: StateRequest) {
        // At most one answer per requester per retransmission period.
        if !self.answered_status.insert(sender) {
            return;
        }
        if epoch != self.membership.epoch() {
            // A laggard from the previous epoch: bring it to the boundary.
            if let Some(t) = &self.transition {
                if t.checkpoint.seq >= req.min_seq {
                    let resp = StateResponse {
                        snapshot: t.checkpoint.snapshot.clone(),
                        checkpoint_proof: t.checkpoint.proof.clone(),
                    };
                    if let Some(env) = self.sign(Body::StateResponse(resp)) {
                        self.send(sender, &env);
                    }
                }
            }
            return;
        }
        if self.stable.seq >= req.min_seq && self.stable.seq > 0 && !self.stable.proof.is_empty() {
            let resp =
                StateResponse { snapshot: self.stable.snapshot.clone(), checkpoint_proof: self.stable.proof.clone() };
            if let Some(env) = self.sign(Body::StateResponse(resp)) {
                self.send(sender, &env);
            }
        }
        // Relay the log above what it asked for: the primary's pre-prepares and every vote we hold.
        let mut relay = vec![];
        if let Some((_, nv, _)) = &self.new_view {
            relay.push(nv.clone());
        }
        for (_, slot) in self.slots.range(req.min_seq.max(self.stable.seq + 1)..) {
            if let Some(pp) = &slot.pre_prepare {
                if Message::decode(pp.env.payload.as_ref())
                    .ok()
                    .and_then(|m| m.body)
                    .is_some_and(|b| matches!(b, Body::PrePrepare(PrePrepare { batch: Some(_), .. })))
                {
                    relay.push(pp.env.clone());
                }
            }
            relay.extend(slot.prepares.values().map(|m| m.env.clone()));
            relay.extend(slot.commits.values().map(|m| m.env.clone()));
        }
        for votes in self.checkpoint_votes.values() {
            relay.extend(votes.values().map(|v| v.env.clone()));
        }
        for env in relay {
            self.send(sender, &env);
        }
    }

    pub(super) fn on_state_response(&mut self, sender: ReplicaId, resp: StateResponse) {
        let _ = sender;
        let Ok(snapshot) = crate::proto::Snapshot::decode(resp.snapshot.as_ref()) else {
            self.out.push(Action::Warning(Warning::BadStateTransfer("snapshot does not decode".into())));
            return;
        };
        if snapshot.seq <= self.state.seq {
            return;
        }
        let digest = snapshot_digest(&resp.snapshot);
        let m = self.membership.clone();
        let mut signers = BTreeSet::new();
        let mut checks = vec![];
        for env in &resp.checkpoint_proof {
            let Ok(msg) = Message::decode(env.payload.as_ref()) else { continue };
            let Some(Body::Checkpoint(c)) = &msg.body else { continue };
            if msg.epoch != m.epoch() || c.seq != snapshot.seq || c.state_digest.as_ref() != digest {
                continue;
            }
            let Some(key) = m.key(msg.sender) else { continue };
            if signers.insert(msg.sender) {
                checks.push((*key, env));
            }
        }
        let sig_checks: Vec<SignatureCheck> = checks
            .iter()
            .map(|(k, e)| SignatureCheck { key: k, domain: MESSAGE_DOMAIN, body: &e.payload, signature: &e.signature })
            .collect();
        let valid = self.verifier.verify_all(&sig_checks).into_iter().filter(|x| *x).count();
        if valid < m.quorum() {
            self.out.push(Action::Warning(Warning::BadStateTransfer(format!(
                "checkpoint proof for seq {} has {valid} valid signatures, {} needed",
                snapshot.seq,
                m.quorum()
            ))));
            return;
        }
        let state = match ReplicatedState::from_snapshot(&resp.snapshot) {
            Ok(s) => s,
            Err(e) => {
                self.out.push(Action::Warning(Warning::BadStateTransfer(e.to_string())));
                return;
            }
        };
        let seq = state.seq;
        self.counters.state_transfers += 1;
        self.out.push(Action::Persist(PersistRecord::Checkpoint {
            seq,
            snapshot: resp.snapshot.clone(),
            proof: resp.checkpoint_proof.clone(),
        }));
        self.install_state(state, resp.snapshot, resp.checkpoint_proof);
        self.out.push(Action::StateTransferred { seq });
        self.try_execute();
    }

    /// Replaces the executed state with a verified stable checkpoint.
    pub(super) fn install_state(&mut self, state: ReplicatedState, snapshot: Bytes, proof: Vec<Envelope>) {
        let seq = state.seq;
        let digest = snapshot_digest(&snapshot);
        let executed: Vec<Digest> = self
            .pending
            .iter()
            .filter(|(_, p)| state.clients.get(&p.client).is_some_and(|c| c.timestamp >= p.timestamp))
            .map(|(d, _)| *d)
            .collect();
        for d in executed {
            self.remove_pending(&d);
        }
        let pending_change = state.next_membership.is_some();
        if state.membership != self.membership {
            self.membership = state.membership.clone();
            self.ledger.set_members(self.membership.n());
        }
        self.state = state;
        self.catching_up = false;
        let epoch = proof
            .first()
            .and_then(|e| Message::decode(e.payload.as_ref()).ok())
            .map_or(self.membership.epoch(), |m| m.epoch);
        self.stable = StableCheckpoint { seq, epoch, digest, snapshot, proof };
        self.own_checkpoints.clear();
        self.collect_garbage();
        if pending_change && seq % self.cfg.checkpoint_interval == 0 {
            self.switch_epoch();
        }
    }

    // ------------------------------------------------------------------ retransmission

    /// Periodic work: retransmit what may have been lost, ask for state when
    /// stuck, and let laggards from the last epoch find their way.
    pub(super) fn on_retransmit_timer(&mut self) {
        self.arm_retransmit();
        self.answered_status.clear();
        if self.catching_up {
            self.request_state(1);
            return;
        }
        let stuck = self.state.seq == self.executed_at_last_tick;
        self.executed_at_last_tick = self.state.seq;
        if let Some(t) = &mut self.transition {
            if t.resend_ticks > 0 {
                t.resend_ticks -= 1;
                if let Some(v) = t.own_vote.clone() {
                    self.broadcast(&v);
                }
            }
        }
        // Our latest checkpoint vote lets laggards notice they are behind.
        let own_latest = self
            .checkpoint_votes
            .values()
            .rev()
            .find_map(|m| m.get(&self.cfg.id))
            .map(|v| v.env.clone())
            .or_else(|| self.stable.proof.iter().find(|e| open_sender(e) == Some(self.cfg.id)).cloned());
        if let Some(v) = own_latest {
            self.broadcast(&v);
        }
        self.age_suspicions();
        self.resend_suspicion();
        if !self.active {
            if let Some(vc) = self.view_changes.get(&self.cfg.id).map(|v| v.env.clone()) {
                self.broadcast(&vc);
            }
            // The view may already be installed elsewhere: the answers relay its NEW-VIEW.
            let from = self.state.seq + 1;
            self.request_state(from);
            return;
        }
        if !stuck {
            self.idle_ticks = 0;
            return;
        }
        self.idle_ticks = self.idle_ticks.saturating_add(1);
        // Without progress, resend our votes for every slot not yet stable
        // (others may have lost them), backing off: ticks 1, 2, 4, ... 64, then every 64.
        let backoff_due = self.idle_ticks.is_power_of_two() || self.idle_ticks % 64 == 0;
        let primary = self.membership.primary(self.view) == self.cfg.id;
        if backoff_due && !self.slots.is_empty() {
            if primary {
                if let Some((_, nv, _)) = self.new_view.clone() {
                    self.broadcast(&nv);
                }
            }
            let mut resend = vec![];
            for slot in self.slots.values() {
                if let Some(pp) = &slot.pre_prepare {
                    if primary
                        && Message::decode(pp.env.payload.as_ref()).ok().is_some_and(|m| {
                            matches!(m.body, Some(Body::PrePrepare(PrePrepare { batch: Some(_), .. })))
                        })
                    {
                        resend.push(pp.env.clone());
                    }
                }
                resend.extend(slot.prepares.get(&self.cfg.id).map(|m| m.env.clone()));
                resend.extend(slot.commits.get(&self.cfg.id).map(|m| m.env.clone()));
            }
            for env in resend {
                self.broadcast(&env);
            }
        }
        // Ask the others for what we miss: they answer with state and their log.
        let has_work = !self.pending.is_empty() || self.slots.keys().any(|s| *s > self.state.seq);
        if has_work || self.state.seq < self.checkpoint_claims.values().copied().max().unwrap_or(0) {
            let from = self.state.seq + 1;
            self.request_state(from);
        }
    }
}
