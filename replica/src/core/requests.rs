//! Client requests at a replica, and batching and pipelining at the primary.

use super::*;

impl Replica {
    // ------------------------------------------------------------------ client requests

    pub(super) fn reject(&mut self, client: Bytes, timestamp: u64, reason: Rejection) {
        self.counters.requests_rejected += 1;
        self.out.push(Action::Reject { client, timestamp, reason });
    }

    /// A request from a client: validated, deduplicated and queued for ordering.
    pub(super) fn on_client_request(&mut self, bytes: Bytes) {
        if bytes.len() > self.cfg.max_request_bytes {
            // Identify the client if possible so the refusal reaches it.
            let (client, ts) = SignedRequest::decode(bytes.as_ref())
                .ok()
                .and_then(|r| RequestBody::decode(r.body.as_ref()).ok())
                .map(|b| (b.client, b.timestamp))
                .unwrap_or_default();
            self.reject(client, ts, Rejection::TooLarge { bytes: bytes.len(), limit: self.cfg.max_request_bytes });
            return;
        }
        let (req, body) = match decode_request(&bytes) {
            Ok(x) => x,
            Err(why) => {
                self.reject(Bytes::new(), 0, Rejection::Malformed(why));
                return;
            }
        };
        if let Some(rec) = self.state.clients.get(&body.client) {
            if body.timestamp < rec.timestamp {
                return;
            }
            if body.timestamp == rec.timestamp {
                // Already executed: send the same reply again.
                let again = (body.client.clone(), rec.timestamp, rec.result.clone());
                self.send_replies(0, vec![again]);
                return;
            }
        }
        let digest = sha256(&[&bytes]);
        let is_primary = self.membership.primary(self.view) == self.cfg.id;
        // The primary does not order a request twice; backups keep it to time the primary.
        if self.pending.contains_key(&digest) || (is_primary && self.in_flight.contains_key(&digest)) {
            self.counters.dropped_duplicate += 1;
            return;
        }
        let Ok(client_key) = parse_public_key(&body.client) else {
            self.reject(
                body.client,
                body.timestamp,
                Rejection::Malformed("client key is not a valid ed25519 key".into()),
            );
            return;
        };
        let ok = self.verifier.verify_all(&[SignatureCheck {
            key: &client_key,
            domain: REQUEST_DOMAIN,
            body: &req.body,
            signature: &req.signature,
        }]);
        if !ok[0] {
            self.reject(body.client, body.timestamp, Rejection::BadSignature);
            return;
        }
        let per_client = self.pending_by_client.get(&body.client).map_or(0, |m| m.len());
        if per_client >= self.cfg.max_pending_per_client {
            self.reject(
                body.client,
                body.timestamp,
                Rejection::ResourceExhausted { retry_after_ms: self.cfg.retransmit_interval_ms },
            );
            return;
        }
        let Some(charge) = self.ledger.charge(Category::Pending, None, bytes.len() + body.client.len()) else {
            self.reject(
                body.client,
                body.timestamp,
                Rejection::ResourceExhausted { retry_after_ms: self.cfg.retransmit_interval_ms },
            );
            return;
        };
        self.pending_by_client.entry(body.client.clone()).or_default().insert(body.timestamp, digest);
        self.pending.insert(digest, PendingRequest { bytes, client: body.client, timestamp: body.timestamp, charge });
        self.pending_order.push_back(digest);
        if self.pending_order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.pending_order.retain(|d| pending.contains_key(d));
        }
        if self.active && !self.vc_timer_armed {
            self.arm_request_timer();
        }
    }

    pub(super) fn remove_pending(&mut self, digest: &Digest) {
        if let Some(p) = self.pending.remove(digest) {
            self.ledger.refund(p.charge);
            if let Some(m) = self.pending_by_client.get_mut(&p.client) {
                m.remove(&p.timestamp);
                if m.is_empty() {
                    self.pending_by_client.remove(&p.client);
                }
            }
        }
    }

    // ------------------------------------------------------------------ primary: batching

    pub(super) fn propose(&mut self) {
        if !self.active || self.catching_up || self.membership.primary(self.view) != self.cfg.id {
            return;
        }
        loop {
            let limit = self.stable.seq + self.cfg.watermark_window;
            let limit = match self.membership_boundary {
                Some(b) => limit.min(b),
                None => limit,
            };
            if self.next_seq > limit
                || self.next_seq > self.state.seq.max(self.stable.seq) + self.cfg.max_inflight_batches
            {
                return;
            }
            let mut requests = vec![];
            let mut bytes = 0;
            let mut has_membership = false;
            while let Some(d) = self.pending_order.front().copied() {
                let Some(p) = self.pending.get(&d) else {
                    self.pending_order.pop_front();
                    continue;
                };
                let entry = batch_entry_bytes(p.bytes.len());
                if requests.len() >= self.cfg.max_batch_requests || bytes + entry > self.cfg.max_batch_bytes {
                    break;
                }
                if self.state.clients.get(&p.client).is_some_and(|r| r.timestamp >= p.timestamp) {
                    self.pending_order.pop_front();
                    self.remove_pending(&d);
                    continue;
                }
                bytes += entry;
                has_membership |= is_membership_request(&p.bytes);
                requests.push((d, p.bytes.clone()));
                self.pending_order.pop_front();
            }
            // A pending membership change takes effect at the next checkpoint:
            // fill the way there with null batches when clients are idle.
            let pad =
                self.state.next_membership.is_some() && self.membership_boundary.is_some_and(|b| self.next_seq <= b);
            if requests.is_empty() && !pad {
                return;
            }
            let seq = self.next_seq;
            let reqs: Vec<Bytes> = requests.iter().map(|(_, b)| b.clone()).collect();
            let digest = batch_digest(&reqs);
            let Some(charge) = self.ledger.charge(Category::Log, Some(self.cfg.id), bytes + 200) else {
                // Out of log budget: put the requests back and wait for a checkpoint.
                for (d, _) in requests.into_iter().rev() {
                    self.pending_order.push_front(d);
                }
                self.counters.dropped_over_budget += 1;
                return;
            };
            let body = Body::PrePrepare(PrePrepare {
                view: self.view,
                seq,
                digest: Bytes::copy_from_slice(&digest),
                batch: Some(Batch { requests: reqs.clone() }),
            });
            let Some(env) = self.sign(body) else {
                self.ledger.refund(charge);
                self.next_seq += 1;
                continue;
            };
            for (d, _) in &requests {
                self.remove_pending(d);
            }
            self.next_seq += 1;
            if has_membership {
                let k = self.cfg.checkpoint_interval;
                self.membership_boundary = Some(seq.div_ceil(k) * k);
            }
            self.broadcast(&env);
            self.set_pre_prepare(seq, SlotPrePrepare { env, digest, requests: reqs, charge: Some(charge) });
            // The primary watches its own batches too: if they never commit
            // (votes withheld or conflicting), its timer must move the view on.
            if !self.vc_timer_armed {
                self.arm_request_timer();
            }
            self.check_slot(seq);
        }
    }
}
