//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it:
//! the holder renews the lease every [`RENEW_EVERY`]; a candidate takes it
//! over once it has not been renewed for its duration. Every write carries
//! the resourceVersion it read, so two candidates can never both win a round.
//! A leader that fails to renew in time stops (the process exits and the
//! Deployment restarts it as a candidate), so two leaders never act at once
//! for longer than the clock skew.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// How long a lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// Who competes for which lease.
#[derive(Clone, Debug)]
pub struct Election {
    pub api: Api<Lease>,
    pub lease_name: String,
    pub identity: String,
}

/// Whether a lease held by `holder`, last renewed at `renewed`, may be taken by `me` at `now`.
pub fn can_take(holder: Option<&str>, renewed: Option<Timestamp>, duration_s: i32, me: &str, now: Timestamp) -> bool {
    match (holder, renewed) {
        (None, _) | (Some(""), _) => true,
        (Some(h), _) if h == me => true,
        (Some(_), None) => true,
        (Some(_), Some(t)) => now.duration_since(t) > SignedDuration::from_secs(duration_s as i64),
    }
}

impl Election {
    /// One round: acquire or renew. Ok(true) when this instance holds the lease.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let duration = LEASE_DURATION.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.lease_name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone();
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let held_duration = spec.lease_duration_seconds.unwrap_or(duration);
        if !can_take(holder.as_deref(), renewed, held_duration, &self.identity, now) {
            return Ok(false);
        }
        if holder.as_deref() != Some(self.identity.as_str()) {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration);
        // replace() sends the resourceVersion read above: a concurrent writer makes this fail with 409.
        match self.api.replace(&self.lease_name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this instance holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.lease_name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) => tracing::debug!(lease = %self.lease_name, "another instance leads; waiting"),
                Err(e) => tracing::warn!(lease = %self.lease_name, "leader election: {e}"),
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    }

    /// Renews the lease until a renewal fails for longer than the lease
    /// duration or another instance took it; then returns (the caller stops).
    pub async fn keep(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.lease_name, "lost the leader lease to another instance");
                    return;
                }
                Err(e) => tracing::warn!(lease = %self.lease_name, "renewing the leader lease: {e}"),
            }
            // Stop before the lease can expire under us (renewals failing).
            if last_ok.elapsed() + RENEW_EVERY >= LEASE_DURATION {
                tracing::error!(lease = %self.lease_name, "could not renew the leader lease in time");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_take_the_lease() {
        let now = Timestamp::from_second(1_000_000).expect("time");
        let ago = |s: i64| Some(now - SignedDuration::from_secs(s));
        assert!(can_take(None, None, 15, "a", now), "nobody holds it");
        assert!(can_take(Some("a"), ago(1), 15, "a", now), "renewing our own");
        assert!(!can_take(Some("b"), ago(5), 15, "a", now), "b renewed recently");
        assert!(can_take(Some("b"), ago(16), 15, "a", now), "b's lease expired");
        assert!(can_take(Some(""), ago(1), 15, "a", now), "released");
    }
}
