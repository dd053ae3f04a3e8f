//! Suspecting the primary before leaving its view.
//!
//! A backup whose request waits one timeout relays it to the primary (the
//! client may have reached the backup only). If it still waits a timeout
//! later, the backup signs a SUSPECT for the next view but keeps working in
//! its own: a SUSPECT carries no log and commits the sender to nothing. Only
//! when a quorum (2f+1) suspects alike does a replica leave its view and send
//! its VIEW-CHANGE, and f+1 suspicions (one of them honest) make every honest
//! replica suspect too. So f Byzantine replicas cannot move anyone, and an
//! honest replica that alone lost patience (a laggard, one cut off from the
//! primary) is never left outside the view the others keep working in.
//!
//! A suspecting replica resends its SUSPECT every retransmission period and
//! withdraws it once what it waited for arrives; the others forget a
//! suspicion that was not resent for a few periods, so transient suspicions
//! of different replicas do not add up to a view change over time.

use super::*;

impl Replica {
    /// Suspects the primary: asks for `view` and counts who asks alike.
    pub(super) fn suspect(&mut self, view: u64) {
        if view <= self.view {
            return;
        }
        let env = match &self.own_suspicion {
            // ed25519 is deterministic: resending needs no new signature.
            Some((v, env)) if *v == view => Some(env.clone()),
            _ => self.sign(Body::Suspect(Suspect { view })),
        };
        let Some(env) = env else { return };
        if self.own_suspicion.as_ref().is_none_or(|(v, _)| *v != view) {
            self.counters.suspicions += 1;
            self.out.push(Action::PrimarySuspected { view });
        }
        self.own_suspicion = Some((view, env.clone()));
        self.suspicions.insert(self.cfg.id, HeldSuspicion { view, age: 0 });
        self.broadcast(&env);
        self.count_suspicions();
    }

    /// A peer's SUSPECT (already admitted: above our view, newer than what we hold).
    pub(super) fn on_suspect(&mut self, sender: ReplicaId, s: Suspect) {
        let view = self.suspicions.get(&sender).map_or(s.view, |h| h.view.max(s.view));
        self.suspicions.insert(sender, HeldSuspicion { view, age: 0 });
        self.count_suspicions();
    }

    /// Once per retransmission period: peers' suspicions grow older and
    /// those not resent for a while are forgotten (ours is withdrawn explicitly).
    pub(super) fn age_suspicions(&mut self) {
        let me = self.cfg.id;
        for (r, h) in self.suspicions.iter_mut() {
            if *r != me {
                h.age = h.age.saturating_add(1);
            }
        }
        self.suspicions.retain(|_, h| h.age <= SUSPICION_TTL_TICKS);
    }

    /// Stops suspecting: what this replica waited for arrived.
    pub(super) fn withdraw_suspicion(&mut self) {
        if self.own_suspicion.take().is_some() {
            self.suspicions.remove(&self.cfg.id);
        }
    }

    /// The highest view above ours each member asked for, by SUSPECT or by
    /// VIEW-CHANGE (which asks for its view too, and commits to it).
    fn asked_views(&self) -> BTreeMap<ReplicaId, u64> {
        let mut asked: BTreeMap<ReplicaId, u64> = BTreeMap::new();
        let vcs = self.view_changes.iter().map(|(r, v)| (*r, v.view));
        for (r, v) in self.suspicions.iter().map(|(r, h)| (*r, h.view)).chain(vcs) {
            if v > self.view {
                let held = asked.entry(r).or_insert(v);
                *held = (*held).max(v);
            }
        }
        asked
    }

    /// Leaves the view (or the view change that stalls) once a quorum asks
    /// for a higher one; joins the suspicion once f+1 others ask.
    pub(super) fn count_suspicions(&mut self) {
        let asked = self.asked_views();
        let mut all: Vec<u64> = asked.values().copied().collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        let q = self.membership.quorum();
        if all.len() >= q {
            // The highest view a quorum asked for, at or above: f+1 of them honest.
            let target = all[q - 1];
            self.failed_views = self.failed_views.saturating_add(1);
            self.start_view_change(target);
            return;
        }
        let own = self.own_suspicion.as_ref().map_or(0, |(v, _)| *v);
        let mut others: Vec<u64> =
            asked.iter().filter(|(r, v)| **r != self.cfg.id && **v > own).map(|(_, v)| *v).collect();
        others.sort_unstable_by(|a, b| b.cmp(a));
        let f1 = self.membership.weak_quorum();
        if others.len() >= f1 {
            // At least one honest replica asked for this view or a higher one.
            self.suspect(others[f1 - 1]);
        }
    }

    /// Forgets suspicions at or below `view` (the view we move to). Entering
    /// a view (`entered`) also drops our own: its primary gets a fresh chance.
    pub(super) fn settle_suspicions(&mut self, view: u64, entered: bool) {
        if entered || self.own_suspicion.as_ref().is_some_and(|(v, _)| *v <= view) {
            self.own_suspicion = None;
            self.suspicions.remove(&self.cfg.id);
        }
        self.suspicions.retain(|_, h| h.view > view);
        self.forwarded = None;
    }

    /// Our SUSPECT again, in case it was lost and so that it does not expire
    /// (from the retransmission timer); withdrawn instead once what we
    /// waited for arrived.
    pub(super) fn resend_suspicion(&mut self) {
        if self.active && self.watch_satisfied() {
            self.withdraw_suspicion();
            return;
        }
        if let Some((v, env)) = &self.own_suspicion {
            if *v > self.view {
                let env = env.clone();
                self.broadcast(&env);
            }
        }
    }

    /// Relays the requests that wait for ordering to the primary, oldest
    /// first, in one message of at most the peer message limit.
    pub(super) fn forward_pending(&mut self) {
        let primary = self.membership.primary(self.view);
        if primary == self.cfg.id {
            return;
        }
        let room = self.cfg.max_message_bytes.saturating_sub(1024);
        let mut size = 0;
        let mut requests = vec![];
        for d in &self.pending_order {
            let Some(p) = self.pending.get(d) else { continue };
            if self.in_flight.contains_key(d) {
                continue;
            }
            if size + p.bytes.len() + 8 > room {
                break;
            }
            size += p.bytes.len() + 8;
            requests.push(p.bytes.clone());
        }
        if requests.is_empty() {
            return;
        }
        let count = requests.len() as u64;
        if let Some(env) = self.sign(Body::Forward(Forward { requests })) {
            self.counters.forwarded_requests += count;
            self.send(primary, &env);
        }
    }

    /// Requests a backup relayed to us: ordered like a client's own (each is
    /// checked against its client's signature; duplicates cost no check).
    pub(super) fn on_forward(&mut self, f: Forward) {
        if !self.active || self.membership.primary(self.view) != self.cfg.id {
            return;
        }
        for bytes in f.requests {
            self.on_client_request(bytes);
        }
    }
}
