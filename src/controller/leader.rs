//! Leader election: only the Lease holder reconciles; a standby takes over at most one lease
//! duration after the leader stops renewing.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::sync::Notify;

use super::admin::Health;
use super::{run_controllers, Context, RunArgs};

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

/// Standby: try to take the Lease every ttl/3. False when `shutdown` came first.
async fn acquire(
    lock: &LeaseLock,
    ttl: Duration,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> bool {
    loop {
        tokio::select! {
            _ = &mut *shutdown => return false,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        match lock.try_acquire_or_renew().await {
            Ok(LeaseLockResult::Acquired(_)) => return true,
            Ok(LeaseLockResult::NotAcquired(_)) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: cannot read the Lease"),
        }
    }
}

/// Leader: renew every ttl/3 until the Lease is lost, or cannot be renewed within its duration
/// (a standby may have taken over: stop reconciling rather than risk two leaders); then notify
/// `lost` and hand the lock back.
async fn renew_until_lost(lock: LeaseLock, ttl: Duration, lost: Arc<Notify>) -> LeaseLock {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match lock.try_acquire_or_renew().await {
            Ok(LeaseLockResult::Acquired(_)) => renewed = Instant::now(),
            Ok(LeaseLockResult::NotAcquired(_)) => {
                tracing::error!("lost the leader Lease");
                lost.notify_one();
                return lock;
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election: renew failed");
                if renewed.elapsed() >= ttl {
                    tracing::error!(
                        "could not renew the leader Lease within its duration; stepping down"
                    );
                    lost.notify_one();
                    return lock;
                }
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
    let ttl = Duration::from_secs(args.lease_duration.max(3));
    let lock = lease_lock(client.clone(), args, &holder, ttl);
    let mut shutdown = Box::pin(crate::shutdown_signal());
    health.started.store(true, Ordering::SeqCst);
    tracing::info!(holder, lease = %args.lease_name, "waiting for leadership");
    if !acquire(&lock, ttl, &mut shutdown).await {
        return Ok(());
    }
    tracing::info!(holder, "became leader");
    health.leader.store(true, Ordering::SeqCst);
    // Losing the Lease stops the controllers (and the process, so that it comes back as a
    // clean standby).
    let lost = Arc::new(Notify::new());
    let renew = tokio::spawn(renew_until_lost(lock, ttl, lost.clone()));
    let stop = async move {
        tokio::select! {
            _ = shutdown => {},
            _ = lost.notified() => {},
        }
    };
    run_controllers(client.clone(), ctx, args, health.clone(), stop).await;
    renew.abort();
    // Released promptly so a standby takes over without waiting the full lease duration.
    let lock = match renew.await {
        Ok(lock) => lock,
        Err(_) => lease_lock(client, args, &holder, ttl),
    };
    let _ = lock.step_down().await;
    Ok(())
}
