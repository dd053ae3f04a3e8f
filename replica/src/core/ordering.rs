//! The normal case: admitting peer messages (size, epoch, window and duplicate
//! checks before any signature), pre-prepare, prepare and commit, evidence of
//! conflicting votes, and in-order execution.

use super::*;

impl Replica {
    // ------------------------------------------------------------------ peer messages

    pub(super) fn on_peer_messages(&mut self, raw: Vec<Bytes>) {
        let mut candidates = Vec::with_capacity(raw.len());
        for b in raw {
            self.counters.messages_in += 1;
            if let Some(c) = self.prefilter(b) {
                candidates.push(c);
            }
        }
        if candidates.is_empty() {
            return;
        }
        let checks: Vec<SignatureCheck> = candidates
            .iter()
            .map(|c| SignatureCheck {
                key: &c.key,
                domain: MESSAGE_DOMAIN,
                body: &c.env.payload,
                signature: &c.env.signature,
            })
            .collect();
        let ok = self.verifier.verify_all(&checks);
        drop(checks);
        for (c, ok) in candidates.into_iter().zip(ok) {
            if !ok {
                self.counters.dropped_bad_signature += 1;
                continue;
            }
            if self.retired {
                return;
            }
            // An earlier message of this batch may have moved the window or the
            // view (a checkpoint became stable, a new view began).
            if !self.still_admissible(&c.msg) {
                self.counters.dropped_out_of_window += 1;
                continue;
            }
            self.dispatch(c.env, c.msg);
        }
    }

    /// Cheap checks before any signature is verified: size, decoding, epoch,
    /// membership, windows, and exact duplicates.
    pub(super) fn prefilter(&mut self, bytes: Bytes) -> Option<Candidate> {
        let limit = self.cfg.max_snapshot_bytes.max(self.cfg.max_message_bytes * (self.membership.quorum() + 1));
        if bytes.len() > limit {
            self.counters.dropped_oversized += 1;
            return None;
        }
        let Ok(env) = Envelope::decode(bytes.as_ref()) else {
            self.counters.dropped_malformed += 1;
            return None;
        };
        let Ok(msg) = Message::decode(env.payload.as_ref()) else {
            self.counters.dropped_malformed += 1;
            return None;
        };
        let type_limit = match msg.body {
            Some(Body::StateResponse(_)) => self.cfg.max_snapshot_bytes,
            Some(Body::NewView(_)) => self.cfg.max_message_bytes * (self.membership.quorum() + 1),
            _ => self.cfg.max_message_bytes,
        };
        if bytes.len() > type_limit {
            self.counters.dropped_oversized += 1;
            return None;
        }
        if msg.sender == self.cfg.id || msg.body.is_none() {
            self.counters.dropped_malformed += 1;
            return None;
        }
        // Epoch: the current one; a state request may come from the previous
        // one, and the answer to ours from the next one (we are the laggard:
        // its sender is checked with the key we know, its content by the
        // checkpoint proof of our epoch it carries).
        let key = if msg.epoch == self.membership.epoch() {
            self.membership.key(msg.sender).copied()
        } else if matches!(msg.body, Some(Body::StateRequest(_)))
            && self.transition.as_ref().is_some_and(|t| t.membership.epoch() == msg.epoch)
        {
            self.transition.as_ref().and_then(|t| t.membership.key(msg.sender).copied())
        } else if matches!(msg.body, Some(Body::StateResponse(_))) && msg.epoch == self.membership.epoch() + 1 {
            self.membership.key(msg.sender).copied()
        } else {
            None
        };
        let Some(key) = key else {
            self.counters.dropped_out_of_window += 1;
            return None;
        };
        let in_window = |seq: u64| seq > self.stable.seq && seq <= self.stable.seq + self.cfg.watermark_window;
        let vote_view_seq = match msg.body.as_ref()? {
            Body::PrePrepare(p) => Some((p.view, p.seq)),
            Body::Prepare(p) => Some((p.view, p.seq)),
            Body::Commit(c) => Some((c.view, c.seq)),
            _ => None,
        };
        if let Some((view, seq)) = vote_view_seq {
            let ahead = view > self.view || (view == self.view && !self.active);
            if ahead && view <= self.view.saturating_add(2) && in_window(seq) {
                self.buffer_future_vote(view, msg.sender, bytes);
                return None;
            }
        }
        let fresh = match msg.body.as_ref()? {
            Body::PrePrepare(p) => {
                in_window(p.seq)
                    && p.view == self.view
                    && self.active
                    && self.is_new_vote(&msg, &env, p.seq, |s| s.pre_prepare.as_ref().map(|x| &x.env))
            }
            Body::Prepare(p) => {
                in_window(p.seq)
                    && p.view == self.view
                    && self.active
                    && self.is_new_vote(&msg, &env, p.seq, |s| s.prepares.get(&msg.sender).map(|x| &x.env))
            }
            Body::Commit(c) => {
                in_window(c.seq)
                    && c.view == self.view
                    && self.active
                    && self.is_new_vote(&msg, &env, c.seq, |s| s.commits.get(&msg.sender).map(|x| &x.env))
            }
            Body::Checkpoint(c) => {
                let slot = vote_of(&msg).map(|x| x.0);
                let refreshing = c.seq == self.stable.seq && self.stable.epoch != self.membership.epoch();
                (c.seq > self.stable.seq || refreshing)
                    && c.seq % self.cfg.checkpoint_interval == 0
                    && !self.checkpoint_votes.get(&c.seq).and_then(|m| m.get(&msg.sender)).is_some_and(|v| {
                        v.env == env || slot.is_some_and(|s| self.evidence_seen.contains(&(s, msg.sender)))
                    })
                    && (c.seq <= self.stable.seq + self.cfg.watermark_window
                        || self.checkpoint_claims.get(&msg.sender).is_none_or(|s| *s < c.seq))
            }
            Body::ViewChange(v) => {
                let stored = self.view_changes.get(&msg.sender);
                // A second, different view change for the view we hold from this
                // sender is checked whatever our view: it may be evidence.
                let conflict = stored.is_some_and(|s| s.view == v.new_view && s.env != env);
                v.new_view <= self.view.saturating_add(MAX_VIEW_AHEAD)
                    && (conflict
                        || (v.new_view > self.view.saturating_sub(if self.active { 0 } else { 1 })
                            && !stored.is_some_and(|s| s.view > v.new_view || s.env == env)))
            }
            Body::NewView(n) => {
                n.view <= self.view.saturating_add(MAX_VIEW_AHEAD)
                    && (n.view > self.view
                        || (n.view == self.view
                            && (!self.active || self.new_view.as_ref().is_none_or(|(v, _, _)| *v != n.view))))
                    && self.membership.primary(n.view) == msg.sender
            }
            Body::Suspect(s) => {
                s.view > self.view
                    && s.view <= self.view.saturating_add(MAX_VIEW_AHEAD)
                    // A resend refreshes a held suspicion at most once per period.
                    && self.suspicions.get(&msg.sender).is_none_or(|h| h.view < s.view || (h.view == s.view && h.age > 0))
            }
            Body::Forward(_) => self.active && self.membership.primary(self.view) == self.cfg.id,
            Body::StateRequest(_) | Body::StateResponse(_) => true,
            Body::ReplyRoot(_) => false,
        };
        if !fresh {
            self.counters.dropped_out_of_window += 1;
            return None;
        }
        Some(Candidate { env, msg, key })
    }

    /// Whether a message admitted by [`Self::prefilter`] still belongs to
    /// the current epoch and, for a vote, to the current view and window.
    fn still_admissible(&self, msg: &Message) -> bool {
        // An earlier message of the batch may have switched the epoch: the
        // rest were admitted (and their signatures checked) for the old one.
        // Only the state transfer messages cross epochs, by their own rules.
        let crosses = matches!(msg.body, Some(Body::StateRequest(_)) | Some(Body::StateResponse(_)));
        if msg.epoch != self.membership.epoch() && !crosses {
            return false;
        }
        let (view, seq) = match &msg.body {
            Some(Body::PrePrepare(p)) => (p.view, p.seq),
            Some(Body::Prepare(p)) => (p.view, p.seq),
            Some(Body::Commit(c)) => (c.view, c.seq),
            // A checkpoint the batch already made stable needs no more votes
            // (stored now, one would linger below the low watermark).
            Some(Body::Checkpoint(c)) => {
                let refreshing = c.seq == self.stable.seq && self.stable.epoch != self.membership.epoch();
                return c.seq > self.stable.seq || refreshing;
            }
            _ => return true,
        };
        self.active && view == self.view && seq > self.stable.seq && seq <= self.stable.seq + self.cfg.watermark_window
    }

    /// Keeps a vote for a view we are about to enter.
    pub(super) fn buffer_future_vote(&mut self, view: u64, sender: ReplicaId, bytes: Bytes) {
        let digest = sha256(&[&bytes]);
        if self.future_votes.iter().any(|(_, d, _, _)| *d == digest) {
            self.counters.dropped_duplicate += 1;
            return;
        }
        match self.ledger.charge(Category::Log, Some(sender), bytes.len()) {
            Some(charge) => self.future_votes.push((view, digest, bytes, charge)),
            None => self.counters.dropped_over_budget += 1,
        }
    }

    /// Whether a vote is worth verifying: not an exact duplicate of what is
    /// stored, and not a further conflict once evidence for that slot exists.
    pub(super) fn is_new_vote(
        &self,
        msg: &Message,
        env: &Envelope,
        seq: u64,
        get: impl Fn(&Slot) -> Option<&Envelope>,
    ) -> bool {
        let Some(slot) = self.slots.get(&seq) else { return true };
        match get(slot) {
            None => true,
            Some(stored) if stored == env => false,
            Some(_) => vote_of(msg).is_some_and(|(s, _)| !self.evidence_seen.contains(&(s, msg.sender))),
        }
    }

    pub(super) fn dispatch(&mut self, env: Envelope, msg: Message) {
        let sender = msg.sender;
        match msg.body {
            Some(Body::PrePrepare(p)) => self.on_pre_prepare(env, sender, p),
            Some(Body::Prepare(p)) => self.on_vote(env, sender, p.view, p.seq, p.digest, false),
            Some(Body::Commit(c)) => self.on_vote(env, sender, c.view, c.seq, c.digest, true),
            Some(Body::Checkpoint(c)) => self.on_checkpoint(env, sender, c),
            Some(Body::ViewChange(v)) => self.on_view_change(env, sender, v),
            Some(Body::NewView(n)) => self.on_new_view(env, sender, n),
            Some(Body::StateRequest(s)) => self.on_state_request(sender, msg.epoch, s),
            Some(Body::StateResponse(s)) => self.on_state_response(sender, s),
            Some(Body::Suspect(s)) => self.on_suspect(sender, s),
            Some(Body::Forward(f)) => self.on_forward(f),
            Some(Body::ReplyRoot(_)) | None => {}
        }
    }

    /// Records evidence once per (slot, sender).
    pub(super) fn record_evidence(&mut self, slot: VoteSlot, offender: ReplicaId, first: Envelope, second: Envelope) {
        if !self.evidence_seen.insert((slot, offender)) {
            return;
        }
        let e = make_evidence(slot, offender, self.membership.epoch(), first, second);
        self.counters.evidence += 1;
        self.out.push(Action::Evidence(e.clone()));
        let size = e.encoded_len();
        while self.ledger.caps().evidence < size + ledger::ITEM_OVERHEAD + self.ledger.used(Category::Evidence) {
            match self.evidence.pop_front() {
                Some((_, c)) => self.ledger.refund(c),
                None => return,
            }
        }
        if let Some(c) = self.ledger.charge(Category::Evidence, None, size) {
            self.evidence.push_back((e, c));
        }
    }

    /// Verifies the client signatures of a batch (batched) and their size.
    pub(super) fn batch_is_valid(&mut self, requests: &[Bytes]) -> bool {
        let mut decoded = Vec::with_capacity(requests.len());
        for r in requests {
            if r.len() > self.cfg.max_request_bytes {
                return false;
            }
            let Ok((req, body)) = decode_request(r) else { return false };
            let Ok(key) = parse_public_key(&body.client) else { return false };
            decoded.push((req, key));
        }
        let checks: Vec<SignatureCheck> = decoded
            .iter()
            .map(|(req, key)| SignatureCheck {
                key,
                domain: REQUEST_DOMAIN,
                body: &req.body,
                signature: &req.signature,
            })
            .collect();
        self.verifier.verify_all(&checks).into_iter().all(|x| x)
    }

    pub(super) fn on_pre_prepare(&mut self, env: Envelope, sender: ReplicaId, p: PrePrepare) {
        if sender != self.membership.primary(p.view) {
            return;
        }
        let Some(digest) = digest_of(&p.digest) else { return };
        let vote =
            VoteSlot { kind: crate::proto::evidence::Kind::EquivocatingPrePrepare as i32, view: p.view, seq: p.seq };
        if let Some(existing) = self.slots.get(&p.seq).and_then(|s| s.pre_prepare.as_ref()) {
            if existing.digest != digest {
                let first = existing.env.clone();
                self.record_evidence(vote, sender, first, env);
            }
            return;
        }
        let Some(batch) = p.batch else { return };
        if batch_digest(&batch.requests) != digest || batch.encoded_len() > self.cfg.max_followed_batch_bytes() {
            return;
        }
        if !self.batch_is_valid(&batch.requests) {
            return;
        }
        let size = env_size(&env);
        let Some(charge) = self.ledger.charge(Category::Log, Some(sender), size) else {
            self.counters.dropped_over_budget += 1;
            return;
        };
        if batch.requests.iter().any(is_membership_request) {
            let k = self.cfg.checkpoint_interval;
            self.membership_boundary = Some(self.membership_boundary.unwrap_or(u64::MAX).min(p.seq.div_ceil(k) * k));
        }
        self.set_pre_prepare(p.seq, SlotPrePrepare { env, digest, requests: batch.requests, charge: Some(charge) });
        if !self.vc_timer_armed {
            self.arm_request_timer();
        }
        // Votes that arrived earlier with another digest show the primary equivocated
        // to someone: hand them our copy so the equivocation can be proven.
        self.expose_conflicting_votes(p.seq);
        self.check_slot(p.seq);
    }

    /// Sends our signed pre-prepare to replicas that voted for another digest in
    /// this slot, so each holds both of the primary's messages.
    pub(super) fn expose_conflicting_votes(&mut self, seq: u64) {
        let Some(slot) = self.slots.get(&seq) else { return };
        let Some(pp) = &slot.pre_prepare else { return };
        let others: BTreeSet<ReplicaId> = slot
            .prepares
            .iter()
            .chain(slot.commits.iter())
            .filter(|(_, m)| m.digest.as_slice() != pp.digest.as_slice())
            .map(|(r, _)| *r)
            .collect();
        let env = pp.env.clone();
        for r in others {
            self.send(r, &env);
        }
    }

    pub(super) fn on_vote(
        &mut self,
        env: Envelope,
        sender: ReplicaId,
        view: u64,
        seq: u64,
        digest: Bytes,
        commit: bool,
    ) {
        use crate::proto::evidence::Kind;
        if !commit && sender == self.membership.primary(view) {
            return; // the primary does not prepare
        }
        let kind = if commit { Kind::ConflictingCommit } else { Kind::ConflictingPrepare };
        let vote = VoteSlot { kind: kind as i32, view, seq };
        let existing =
            self.slots.get(&seq).and_then(|s| if commit { s.commits.get(&sender) } else { s.prepares.get(&sender) });
        if let Some(existing) = existing {
            if existing.digest != digest {
                let first = existing.env.clone();
                self.record_evidence(vote, sender, first, env);
            }
            return;
        }
        let Some(charge) = self.ledger.charge(Category::Log, Some(sender), env_size(&env)) else {
            self.counters.dropped_over_budget += 1;
            return;
        };
        let pp_digest = self.slots.get(&seq).and_then(|s| s.pre_prepare.as_ref()).map(|p| p.digest);
        let slot = self.slots.entry(seq).or_default();
        let stored = Stored { env, digest: digest.to_vec(), charge: Some(charge) };
        if commit {
            slot.commits.insert(sender, stored);
        } else {
            slot.prepares.insert(sender, stored);
        }
        if let Some(d) = pp_digest {
            if d.as_slice() != digest.as_ref() {
                let env = self.slots[&seq].pre_prepare.as_ref().map(|p| p.env.clone());
                if let Some(env) = env {
                    self.send(sender, &env);
                }
            }
        }
        self.check_slot(seq);
    }

    /// Advances one slot through prepared and committed, sending our votes.
    pub(super) fn check_slot(&mut self, seq: u64) {
        let q = self.membership.quorum();
        let primary = self.membership.primary(self.view);
        let me = self.cfg.id;
        if self.catching_up {
            return;
        }
        let Some(slot) = self.slots.get(&seq) else { return };
        let Some(pp) = &slot.pre_prepare else { return };
        let digest = pp.digest;
        // Backups send a prepare for an accepted pre-prepare.
        if me != primary && !slot.sent_prepare && !self.cast_vote(seq, digest, false) {
            return;
        }
        let slot = self.slots.get(&seq).expect("slot exists");
        if !slot.prepared {
            let matching =
                slot.prepares.iter().filter(|(r, m)| **r != primary && m.digest.as_slice() == digest).count();
            if matching + 1 >= q {
                self.on_prepared(seq);
            } else {
                return;
            }
        }
        let slot = self.slots.get(&seq).expect("slot exists");
        if !slot.sent_commit && !self.cast_vote(seq, digest, true) {
            return;
        }
        let slot = self.slots.get(&seq).expect("slot exists");
        if !slot.committed {
            let matching = slot.commits.values().filter(|m| m.digest.as_slice() == digest).count();
            if matching >= q {
                self.slots.get_mut(&seq).expect("slot exists").committed = true;
                self.try_execute();
            }
        }
    }

    /// Signs, broadcasts and stores our own prepare or commit for `seq`;
    /// false when the signing guard refuses (a restart signed otherwise).
    fn cast_vote(&mut self, seq: u64, digest: Digest, commit: bool) -> bool {
        let (view, me) = (self.view, self.cfg.id);
        let d = Bytes::copy_from_slice(&digest);
        let body = if commit {
            Body::Commit(Commit { view, seq, digest: d })
        } else {
            Body::Prepare(Prepare { view, seq, digest: d })
        };
        let Some(env) = self.sign(body) else { return false };
        self.broadcast(&env);
        let charge = self.ledger.charge(Category::Log, Some(me), env_size(&env));
        let slot = self.slots.get_mut(&seq).expect("slot exists");
        let stored = Stored { env, digest: digest.to_vec(), charge };
        if commit {
            slot.sent_commit = true;
            slot.commits.insert(me, stored);
        } else {
            slot.sent_prepare = true;
            slot.prepares.insert(me, stored);
        }
        true
    }

    /// A slot prepared: keep its certificate for view changes.
    pub(super) fn on_prepared(&mut self, seq: u64) {
        let primary = self.membership.primary(self.view);
        let q = self.membership.quorum();
        let slot = self.slots.get_mut(&seq).expect("slot exists");
        slot.prepared = true;
        let pp = slot.pre_prepare.as_ref().expect("prepared implies pre-prepare");
        let prepares: Vec<Envelope> = slot
            .prepares
            .iter()
            .filter(|(r, m)| **r != primary && m.digest.as_slice() == pp.digest)
            .take(q - 1)
            .map(|(_, m)| m.env.clone())
            .collect();
        // A certificate carries the full pre-prepare (with its batch).
        let pre_prepare = pp.env.clone();
        let requests = pp.requests.clone();
        let size = env_size(&pre_prepare)
            + requests.iter().map(|r| r.len()).sum::<usize>()
            + prepares.iter().map(env_size).sum::<usize>();
        if self.certificates.get(&seq).is_some_and(|c| c.view >= self.view) {
            return;
        }
        let Some(charge) = self.ledger.charge(Category::Certificates, None, size) else {
            self.counters.dropped_over_budget += 1;
            return;
        };
        self.out.push(Action::Persist(PersistRecord::Prepared {
            view: self.view,
            seq,
            pre_prepare: pre_prepare.clone(),
            requests: requests.clone(),
            prepares: prepares.clone(),
        }));
        if let Some(old) =
            self.certificates.insert(seq, Certificate { view: self.view, requests, pre_prepare, prepares, charge })
        {
            self.ledger.refund(old.charge);
        }
    }

    // ------------------------------------------------------------------ execution

    pub(super) fn try_execute(&mut self) {
        loop {
            let k = self.cfg.checkpoint_interval;
            if self.state.next_membership.is_some() && self.state.seq > 0 && self.state.seq % k == 0 {
                return; // wait until the boundary checkpoint is stable, then switch epochs
            }
            let seq = self.state.seq + 1;
            let Some(slot) = self.slots.get(&seq) else { return };
            if !slot.committed {
                return;
            }
            let pp = slot.pre_prepare.as_ref().expect("committed implies pre-prepare");
            let (digest, requests) = (pp.digest, pp.requests.clone());
            self.out.push(Action::Persist(PersistRecord::Committed {
                seq,
                view: self.view,
                batch: Batch { requests: requests.clone() },
            }));
            self.execute_batch(seq, self.view, digest, &requests, true);
            self.failed_views = self.failed_views.saturating_sub(1);
            // Once what the timer watched is done, watch the next thing (or stop).
            if self.active && self.watch_satisfied() {
                self.arm_request_timer();
            }
        }
    }

    /// Executes one batch in order; `live` is false while replaying the log
    /// after a restart (no replies, no messages).
    pub(super) fn execute_batch(&mut self, seq: u64, view: u64, digest: Digest, requests: &[Bytes], live: bool) {
        let mut executed = Vec::with_capacity(requests.len());
        let mut replies = Vec::with_capacity(if live { requests.len() } else { 0 });
        for r in requests {
            let Ok((_, body)) = decode_request(r) else { continue };
            if live {
                // This request and anything older from the same client is done.
                let done: Vec<Digest> = self
                    .pending_by_client
                    .get(&body.client)
                    .map(|m| m.range(..=body.timestamp).map(|(_, d)| *d).collect())
                    .unwrap_or_default();
                for d in done {
                    self.remove_pending(&d);
                }
            }
            if self.state.clients.get(&body.client).is_some_and(|c| c.timestamp >= body.timestamp) {
                continue; // executed before: exactly once
            }
            let result = self.execute_request(seq, &body);
            self.state
                .clients
                .insert(body.client.clone(), ClientRecord { timestamp: body.timestamp, result: result.clone() });
            if live {
                replies.push((body.client.clone(), body.timestamp, result.clone()));
            }
            executed.push(ExecutedRequest {
                client: body.client,
                timestamp: body.timestamp,
                operation: body.operation,
                result,
            });
        }
        self.send_replies(seq, replies);
        self.state.seq = seq;
        self.out.push(Action::Executed { seq, view, digest, requests: executed });
        if seq % self.cfg.checkpoint_interval == 0 {
            self.make_checkpoint(seq, live);
        }
    }

    pub(super) fn execute_request(&mut self, seq: u64, body: &RequestBody) -> OpResult {
        let Some(op) = &body.operation else { return rejected("request has no operation") };
        match &op.kind {
            Some(OpKind::Membership(change)) => {
                if body.client.as_ref() != self.membership.admin().as_bytes() {
                    return rejected("membership changes must be signed by the admin key");
                }
                if self.state.next_membership.is_some() {
                    return rejected("a membership change is already pending");
                }
                if change.from_epoch != self.membership.epoch() {
                    return rejected(&format!(
                        "membership change is for epoch {} but epoch {} is in force",
                        change.from_epoch,
                        self.membership.epoch()
                    ));
                }
                let next = MembershipConfig {
                    epoch: self.membership.epoch() + 1,
                    members: change.members.clone(),
                    admin_key: self.membership.config().admin_key.clone(),
                };
                match Membership::new(next) {
                    Ok(m) => {
                        self.state.next_membership = Some(m.config().clone());
                        let k = self.cfg.checkpoint_interval;
                        self.membership_boundary = Some(seq.div_ceil(k) * k);
                        crate::state::ok(None)
                    }
                    Err(e) => rejected(&format!("invalid membership: {e}")),
                }
            }
            _ => self.state.kv.apply(op),
        }
    }
}
