//! Leader election: only the Lease holder reconciles; a standby takes over at most one lease
//! duration after the leader stops renewing.
//!
//! Handover safety: the leader's provider writes must end before a standby can acquire. The
//! [`LeaseClock`] holds the *renew deadline* = start of the last successful renew + lease duration
//! − a margin; at that instant in-flight reconciles are cancelled (see
//! [`super::supervise::guarded`]) and the leader steps down, and a create whose worst-case
//! duration exceeds the time left is not started ([`super::Context::lease_allows`]).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::sync::{watch, Notify};

use super::admin::Health;
use super::{run_controllers, Context, RunArgs};

/// When this replica must stop provider writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// No leader election: never.
    Unbounded,
    /// At this instant (the renew deadline).
    At(tokio::time::Instant),
}

/// The renew deadline, shared by the renew loop (writer) and every reconcile (readers).
#[derive(Debug)]
pub struct LeaseClock {
    tx: watch::Sender<Deadline>,
}

impl Default for LeaseClock {
    fn default() -> Self {
        LeaseClock {
            tx: watch::channel(Deadline::Unbounded).0,
        }
    }
}

/// The margin kept between the renew deadline and the instant a standby may acquire (clock
/// skew between replicas, the time a cancelled request takes to stop): a fifth of the lease,
/// at least one second.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_secs(1))
}

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

/// The renew deadline after a renew that was *sent* at `renewed` (pure).
pub fn renew_deadline(renewed: tokio::time::Instant, ttl: Duration) -> tokio::time::Instant {
    renewed + ttl.saturating_sub(margin(ttl))
}

impl LeaseClock {
    /// A renew sent at `renewed` succeeded: provider writes may go on until its deadline.
    pub fn renewed(&self, renewed: tokio::time::Instant, ttl: Duration) {
        self.tx
            .send_replace(Deadline::At(renew_deadline(renewed, ttl)));
    }

    /// The Lease is gone: stop now.
    pub fn lost(&self) {
        self.tx
            .send_replace(Deadline::At(tokio::time::Instant::now()));
    }

    /// The current deadline.
    pub fn deadline(&self) -> Deadline {
        *self.tx.borrow()
    }

    /// Time left before the deadline (None: unbounded).
    pub fn time_left(&self) -> Option<Duration> {
        match self.deadline() {
            Deadline::Unbounded => None,
            Deadline::At(t) => Some(t.saturating_duration_since(tokio::time::Instant::now())),
        }
    }

    /// Resolves when the deadline passes (never while it is unbounded); a renewal pushes it back.
    pub async fn expired(&self) {
        let mut rx = self.tx.subscribe();
        loop {
            let d = *rx.borrow_and_update();
            match d {
                Deadline::Unbounded => {
                    if rx.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
                Deadline::At(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {
                            if *rx.borrow() == d {
                                return;
                            }
                        }
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
            }
        }
    }
}

fn lease_lock(client: Client, args: &RunArgs, holder: &str, ttl: Duration) -> LeaseLock {
    LeaseLock::new(
        client,
        &args.namespace,
        LeaseLockParams {
            lease_name: args.lease_name.clone(),
            holder_id: holder.to_string(),
            lease_ttl: ttl,
        },
    )
}

/// Standby: try to take the Lease every ttl/3. Returns when the acquiring request was sent;
/// None when `shutdown` came first.
async fn acquire(
    lock: &LeaseLock,
    ttl: Duration,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<tokio::time::Instant> {
    loop {
        tokio::select! {
            _ = &mut *shutdown => return None,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        let sent = tokio::time::Instant::now();
        match lock.try_acquire_or_renew().await {
            Ok(LeaseLockResult::Acquired(_)) => return Some(sent),
            Ok(LeaseLockResult::NotAcquired(_)) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: cannot read the Lease"),
        }
    }
}

/// Leader: renew every ttl/3 until the Lease is lost, or cannot be renewed before the renew
/// deadline (a standby may take over soon after: stop provider writes rather than risk two
/// leaders); then notify `lost` and hand the lock back. Each successful renew moves `clock`'s
/// deadline.
async fn renew_until_lost(
    lock: LeaseLock,
    ttl: Duration,
    clock: Arc<LeaseClock>,
    lost: Arc<Notify>,
) -> LeaseLock {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ttl / 3) => {}
            _ = clock.expired() => {
                tracing::error!("could not renew the leader Lease before its renew deadline; stepping down");
                lost.notify_one();
                return lock;
            }
        }
        let sent = tokio::time::Instant::now();
        let attempt = tokio::select! {
            r = lock.try_acquire_or_renew() => Some(r),
            _ = clock.expired() => None,
        };
        match attempt {
            Some(Ok(LeaseLockResult::Acquired(_))) => clock.renewed(sent, ttl),
            Some(Ok(LeaseLockResult::NotAcquired(_))) => {
                tracing::error!("lost the leader Lease");
                clock.lost();
                lost.notify_one();
                return lock;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "leader election: renew failed"),
            None => {
                tracing::error!(
                    "could not renew the leader Lease before its renew deadline; stepping down"
                );
                lost.notify_one();
                return lock;
            }
        }
    }
}

/// Wait for the Lease, run the controllers while holding it, step down on shutdown or loss.
pub(super) async fn run_with_leader_election(
    client: Client,
    ctx: Arc<Context>,
    args: &RunArgs,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let holder = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("keysmith-{}", crate::ids::random_hex(8)));
    let ttl = lease_ttl(args);
    let lock = lease_lock(client.clone(), args, &holder, ttl);
    let clock = ctx.lease.clone();
    let mut shutdown = Box::pin(crate::shutdown_signal());
    health.started.store(true, Ordering::SeqCst);
    tracing::info!(holder, lease = %args.lease_name, "waiting for leadership");
    let Some(acquired) = acquire(&lock, ttl, &mut shutdown).await else {
        return Ok(());
    };
    clock.renewed(acquired, ttl);
    tracing::info!(holder, "became leader");
    health.leader.store(true, Ordering::SeqCst);
    // Losing the Lease stops the controllers (and the process, so that it comes back as a
    // clean standby).
    let lost = Arc::new(Notify::new());
    let renew = tokio::spawn(renew_until_lost(lock, ttl, clock, lost.clone()));
    let stop = async move {
        tokio::select! {
            _ = shutdown => {},
            _ = lost.notified() => {},
        }
    };
    run_controllers(client.clone(), ctx, args, health.clone(), stop).await;
    // no longer the leader (`/readyz` and `keysmith_leader` read this flag)
    health.leader.store(false, Ordering::SeqCst);
    renew.abort();
    // Released promptly so a standby takes over without waiting the full lease duration.
    let lock = match renew.await {
        Ok(lock) => lock,
        Err(_) => lease_lock(client, args, &holder, ttl),
    };
    let _ = lock.step_down().await;
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
