//! Leader election: only the Lease holder reconciles; a standby takes over at most about one
//! lease duration after the leader stops renewing. The lock is client-go's leaderelection
//! algorithm on a `coordination.k8s.io/v1` Lease:
//!
//! - **Acquire and renew are conditional**: read the Lease, then write it with the
//!   resourceVersion that was read as a precondition (a merge patch carrying
//!   `metadata.resourceVersion`); a 409 means another replica wrote first and this one lost the
//!   race. A missing Lease is created, and a 409 there is a lost race too. Two standbys can never
//!   both acquire from the same record.
//! - **Expiry is judged by local observation**: a standby remembers when (on its own monotonic
//!   clock) it first saw the current record, and takes an other replica's Lease only after the
//!   record has stayed unchanged for its `leaseDurationSeconds`. The record's `renewTime` (the
//!   leader's wall clock) is never compared with this replica's: clock skew cannot shorten a
//!   lease.
//! - **Renew deadline and fencing**: the [`LeaseClock`] holds the *renew deadline* = the instant
//!   the last successful renew was *sent* + lease duration − a margin, on the local monotonic
//!   clock. A standby cannot acquire before then (it saw the renewed record after it was sent,
//!   and waits a full lease duration from that sighting). At the deadline in-flight reconciles
//!   are cancelled ([`super::supervise`]), the leader steps down, and every provider request that
//!   writes ([`crate::providers::WriteGate`]) and every Kubernetes write through the controllers'
//!   client ([`fenced_client`]) is refused *before it is sent* by a check of the deadline against
//!   the clock at that moment. A replica paused (SIGSTOP) past its deadline and resumed sees the
//!   deadline passed at its first write attempt; it sends nothing. A create whose worst-case
//!   duration exceeds the time left is not started ([`super::Context::lease_allows`]).
//! - **Release on graceful shutdown**: once the controllers stopped, the holder is cleared
//!   (conditionally) with `leaseDurationSeconds: 1`, so a standby takes over at its next poll.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::{oneshot, Notify};

use super::admin::Health;
pub use super::lease::{margin, renew_deadline, Deadline, LeaseClock};
use super::{run_controllers, Context, RunArgs};

/// The lease duration `keysmith run` uses (`--lease-duration`, at least 3 s).
pub fn lease_ttl(args: &RunArgs) -> Duration {
    Duration::from_secs(args.lease_duration.max(3))
}

/// The longest provider request timeout that still lets creates start: a create is started
/// only when it can finish before the renew deadline, and right before a renewal the time left
/// is the lease minus the margin minus the renew interval (ttl/3).
pub fn provider_timeout_cap(ttl: Duration) -> Duration {
    ttl.saturating_sub(margin(ttl))
        .saturating_sub(ttl / 3)
        .max(Duration::from_secs(1))
}

/// Longest `leaseDurationSeconds` read from a Lease record (a larger one is read as this).
pub const MAX_RECORD_DURATION: Duration = Duration::from_secs(3600);

/// How often a standby polls the Lease, and a leader retries a failed renew: a sixth of the
/// lease (at least 250 ms). A successful renew comes every third of the lease.
pub fn retry_period(ttl: Duration) -> Duration {
    (ttl / 6).max(Duration::from_millis(250))
}

/// What an attempt on the Lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the Lease: it was acquired, renewed or created by this request.
    Leading,
    /// Another replica holds it and its record has not stayed unchanged for a lease duration
    /// since this replica first saw it; or another replica wrote first (a 409).
    Standby { holder: Option<String> },
}

/// The record of the Lease as last seen, and when (local monotonic clock) it was first seen.
#[derive(Debug, Clone)]
struct Observed {
    spec: LeaseSpec,
    resource_version: Option<String>,
    at: tokio::time::Instant,
}

/// A Lease lock (client-go's algorithm, see the module docs). Not shared: one per replica.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    ttl: Duration,
    observed: Option<Observed>,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn holder_of(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// The lease duration a record asks for, bounded: missing or not positive → `fallback`.
fn record_duration(spec: &LeaseSpec, fallback: Duration) -> Duration {
    match spec.lease_duration_seconds {
        Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs().into()).min(MAX_RECORD_DURATION),
        _ => fallback,
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn ttl_seconds(ttl: Duration) -> i32 {
    i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl LeaseLock {
    /// The lock on Lease `name` in `namespace`, held as `holder`, asking for `ttl`.
    pub fn new(client: Client, namespace: &str, name: &str, holder: &str, ttl: Duration) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            holder: holder.to_string(),
            ttl,
            observed: None,
        }
    }

    /// Remember `lease` as seen at `now`; the observation time moves only when the record
    /// (the spec) changed.
    fn observe(&mut self, lease: &Lease, now: tokio::time::Instant) -> &Observed {
        let spec = lease.spec.clone().unwrap_or_default();
        let resource_version = lease.metadata.resource_version.clone();
        let at = match &self.observed {
            Some(o) if o.spec == spec => o.at,
            _ => now,
        };
        self.observed.insert(Observed {
            spec,
            resource_version,
            at,
        })
    }

    /// One round of client-go's `tryAcquireOrRenew`: read the Lease; if another replica holds
    /// it and its record changed less than its lease duration ago (local observation), stand
    /// by; else write this replica in, conditionally on the resourceVersion read (409: lost the
    /// race). Creates the Lease when it does not exist (409: lost the race).
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = tokio::time::Instant::now();
        let lease = match self.api.get_opt(&self.name).await? {
            Some(l) => l,
            None => return self.create().await,
        };
        let ttl = self.ttl;
        let me = self.holder.clone();
        let o = self.observe(&lease, now).clone();
        let current = holder_of(&o.spec).map(str::to_string);
        let mine = current.as_deref() == Some(me.as_str());
        if let Some(other) = current.as_ref().filter(|_| !mine) {
            let expires = o.at + record_duration(&o.spec, ttl);
            if tokio::time::Instant::now() < expires {
                return Ok(Attempt::Standby {
                    holder: Some(other.clone()),
                });
            }
        }
        let stamp = now_micro();
        let (acquire_time, transitions) = if mine {
            (
                o.spec.acquire_time.clone().unwrap_or_else(|| stamp.clone()),
                o.spec.lease_transitions.unwrap_or(0),
            )
        } else {
            (
                stamp.clone(),
                o.spec.lease_transitions.unwrap_or(0).saturating_add(1),
            )
        };
        // The resourceVersion in a patch is a precondition: the API server answers 409 when
        // the Lease changed since it was read.
        let patch = json!({
            "metadata": { "resourceVersion": o.resource_version },
            "spec": {
                "holderIdentity": me,
                "leaseDurationSeconds": ttl_seconds(ttl),
                "acquireTime": acquire_time,
                "renewTime": stamp,
                "leaseTransitions": transitions,
            }
        });
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                self.observe(&written, now);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Standby { holder: current }),
            Err(e) => Err(e),
        }
    }

    async fn create(&mut self) -> Result<Attempt, kube::Error> {
        let now = tokio::time::Instant::now();
        let stamp = now_micro();
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.holder.clone()),
                lease_duration_seconds: Some(ttl_seconds(self.ttl)),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                self.observe(&created, now);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Standby { holder: None }),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (graceful shutdown): clear the holder and shorten the lease to 1 s,
    /// conditionally on the record this replica last wrote. Ok(false): not held by this replica
    /// (any more), nothing written.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(o) = self.observed.clone() else {
            return Ok(false);
        };
        if holder_of(&o.spec) != Some(self.holder.as_str()) {
            return Ok(false);
        }
        let stamp = now_micro();
        let patch = json!({
            "metadata": { "resourceVersion": o.resource_version },
            "spec": {
                "holderIdentity": null,
                "leaseDurationSeconds": 1,
                "acquireTime": stamp,
                "renewTime": stamp,
            }
        });
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                self.observe(&written, tokio::time::Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One attempt, bounded in time (a hung API server is a failed attempt).
async fn attempt(lock: &mut LeaseLock, limit: Duration) -> Result<Attempt, String> {
    match tokio::time::timeout(limit, lock.try_acquire_or_renew()).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

/// Standby: poll the Lease every [`retry_period`] until this replica holds it. Returns when
/// the acquiring request was sent; None when `shutdown` came first.
pub async fn acquire(
    lock: &mut LeaseLock,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<tokio::time::Instant> {
    let period = retry_period(lock.ttl);
    let mut last_holder: Option<String> = None;
    loop {
        let sent = tokio::time::Instant::now();
        let r = tokio::select! {
            _ = &mut *shutdown => return None,
            r = attempt(lock, lock_timeout(lock.ttl)) => r,
        };
        match r {
            Ok(Attempt::Leading) => return Some(sent),
            Ok(Attempt::Standby { holder }) => {
                if holder != last_holder {
                    tracing::info!(holder = ?holder, "the leader Lease is held by another replica");
                    last_holder = holder;
                }
            }
            Err(e) => tracing::warn!(error = %e, "leader election: cannot acquire the Lease"),
        }
        tokio::select! {
            _ = &mut *shutdown => return None,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// The longest one Lease request may take.
fn lock_timeout(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_secs(1))
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SteppedDown {
    /// Another replica wrote the Lease.
    Lost { holder: Option<String> },
    /// No renew succeeded before the renew deadline (or this replica was paused past it).
    DeadlinePassed,
    /// Asked to stop (graceful shutdown).
    Shutdown,
}

/// Leader: renew every ttl/3 (retry every [`retry_period`] after a failure) until the Lease is
/// lost, the renew deadline passes, or `stop` fires. Each successful renew moves `clock`'s
/// deadline. The deadline is checked on the clock before each renew: a replica resumed after a
/// pause past its deadline steps down rather than renewing.
pub async fn lead(
    lock: &mut LeaseLock,
    clock: &LeaseClock,
    mut stop: impl Future<Output = ()> + Unpin,
) -> SteppedDown {
    let ttl = lock.ttl;
    let mut wait = ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = clock.expired() => return SteppedDown::DeadlinePassed,
            _ = &mut stop => return SteppedDown::Shutdown,
        }
        if !clock.holds() {
            return SteppedDown::DeadlinePassed;
        }
        let sent = tokio::time::Instant::now();
        let r = tokio::select! {
            r = attempt(lock, lock_timeout(ttl)) => r,
            _ = clock.expired() => return SteppedDown::DeadlinePassed,
            _ = &mut stop => return SteppedDown::Shutdown,
        };
        match r {
            Ok(Attempt::Leading) => {
                clock.renewed(sent, ttl);
                wait = ttl / 3;
            }
            Ok(Attempt::Standby { holder }) => return SteppedDown::Lost { holder },
            Err(e) => {
                tracing::warn!(error = %e, "leader election: renew failed; retrying until the renew deadline");
                wait = retry_period(ttl);
            }
        }
    }
}

/// The holder identity of this process: `POD_NAME`, else `keysmith-<random>`.
pub fn holder_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("keysmith-{}", crate::ids::random_hex(8)))
}

/// A Kubernetes client whose writes (any method but GET/HEAD/OPTIONS) are refused, before they
/// are sent, once `clock`'s renew deadline has passed: the controllers' client. The Lease itself
/// is written through an unfenced client.
pub fn fenced_client(config: kube::Config, clock: Arc<LeaseClock>) -> Result<Client, kube::Error> {
    use http::Method;
    let fence = tower::filter::FilterLayer::new(
        move |req: http::Request<kube::client::Body>| -> Result<_, tower::BoxError> {
            let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
            if read || clock.holds() {
                Ok(req)
            } else {
                Err(FencedWrite.into())
            }
        },
    );
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&fence)
        .build())
}

/// A write refused because this replica no longer holds the leader Lease.
#[derive(Debug, thiserror::Error)]
#[error("this replica no longer holds the leader Lease: write not sent")]
pub struct FencedWrite;

/// Wait for the Lease, run the controllers while holding it, step down on shutdown or loss.
/// `lease_client` writes the Lease (unfenced); `ctx.client` is the controllers' (fenced) one.
pub(super) async fn run_with_leader_election(
    lease_client: Client,
    ctx: Arc<Context>,
    args: &RunArgs,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let holder = holder_identity();
    let ttl = lease_ttl(args);
    let mut lock = LeaseLock::new(
        lease_client,
        &args.namespace,
        &args.lease_name,
        &holder,
        ttl,
    );
    let clock = ctx.lease.clone();
    clock.standby();
    let mut shutdown = Box::pin(crate::shutdown_signal());
    health.started.store(true, Ordering::SeqCst);
    tracing::info!(holder, lease = %args.lease_name, "waiting for leadership");
    let Some(acquired) = acquire(&mut lock, &mut shutdown).await else {
        return Ok(());
    };
    clock.renewed(acquired, ttl);
    tracing::info!(holder, "became leader");
    health.leader.store(true, Ordering::SeqCst);
    ctx.metrics.leader.set(1);
    // Losing the Lease stops the controllers (and the process, so that it comes back as a
    // clean standby).
    let lost = Arc::new(Notify::new());
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let renew = {
        let (clock, lost, health, metrics) = (
            clock.clone(),
            lost.clone(),
            health.clone(),
            ctx.metrics.clone(),
        );
        tokio::spawn(async move {
            let why = lead(
                &mut lock,
                &clock,
                Box::pin(async move {
                    let _ = release_rx.await;
                }),
            )
            .await;
            // Every write stops here, before anything else happens.
            clock.lost();
            health.leader.store(false, Ordering::SeqCst);
            metrics.leader.set(0);
            match &why {
                SteppedDown::Lost { holder } => {
                    tracing::error!(holder = ?holder, "lost the leader Lease to another replica; stepping down")
                }
                SteppedDown::DeadlinePassed => tracing::error!(
                    "could not renew the leader Lease before its renew deadline; stepping down"
                ),
                SteppedDown::Shutdown => {}
            }
            lost.notify_one();
            // Released promptly so a standby takes over without waiting the full lease
            // duration (conditional: nothing is written when another replica holds it).
            match tokio::time::timeout(lock_timeout(ttl), lock.release()).await {
                Ok(Ok(true)) => tracing::info!("released the leader Lease"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not release the leader Lease"),
                Err(_) => tracing::warn!("could not release the leader Lease in time"),
            }
            why
        })
    };
    let stop = async move {
        tokio::select! {
            _ = shutdown => {},
            _ = lost.notified() => {},
        }
    };
    run_controllers(ctx.client.clone(), ctx.clone(), args, health.clone(), stop).await;
    // The controllers have stopped: stop renewing and release (if still leading).
    let _ = release_tx.send(());
    match renew.await {
        Ok(why) => tracing::info!(reason = ?why, "stepped down"),
        Err(e) => tracing::error!(error = %e, "the Lease renew task failed"),
    }
    clock.lost();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renew_deadline_comes_a_margin_before_the_lease_ends() {
        let t = tokio::time::Instant::now();
        let ttl = Duration::from_secs(15);
        assert_eq!(renew_deadline(t, ttl), t + Duration::from_secs(12));
        // Short leases keep at least a second of margin.
        assert_eq!(
            renew_deadline(t, Duration::from_secs(3)),
            t + Duration::from_secs(2)
        );
        assert!(renew_deadline(t, Duration::from_millis(500)) >= t);
    }

    #[test]
    fn the_provider_timeout_fits_between_two_renewals() {
        let ttl = Duration::from_secs(15);
        let cap = provider_timeout_cap(ttl);
        assert_eq!(cap, Duration::from_secs(7));
        // Just before the next renewal (ttl/3 after the last) a create of `cap` still fits.
        let t = tokio::time::Instant::now();
        assert!(t + ttl / 3 + cap <= renew_deadline(t, ttl));
        assert_eq!(
            provider_timeout_cap(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_fires_at_the_deadline_and_a_renewal_pushes_it_back() {
        let clock = Arc::new(LeaseClock::default());
        assert_eq!(clock.time_left(), None);
        // Unbounded: never fires.
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), clock.expired())
                .await
                .is_err()
        );
        let ttl = Duration::from_secs(15);
        let start = tokio::time::Instant::now();
        clock.renewed(start, ttl);
        assert_eq!(clock.time_left(), Some(Duration::from_secs(12)));
        let c = clock.clone();
        let waiter = tokio::spawn(async move {
            c.expired().await;
            tokio::time::Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        clock.renewed(tokio::time::Instant::now(), ttl);
        let fired = waiter.await.unwrap();
        assert_eq!(fired - start, Duration::from_secs(22));
        clock.lost();
        assert_eq!(clock.time_left(), Some(Duration::ZERO));
        clock.expired().await;
    }
}
