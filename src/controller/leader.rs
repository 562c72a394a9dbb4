//! Leader election: only the Lease holder reconciles; a standby takes over at most one lease
//! duration after the leader stops renewing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use super::admin::Health;
use super::{run_controllers, Context, RunArgs};

/// Wait for the Lease, run the controllers while holding it, step down on shutdown or loss.
pub(super) async fn run_with_leader_election(
    client: Client,
    ctx: Arc<Context>,
    args: &RunArgs,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
    let holder = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("keysmith-{}", crate::ids::random_hex(8)));
    let ttl = Duration::from_secs(args.lease_duration.max(3));
    let lock = LeaseLock::new(
        client.clone(),
        &args.namespace,
        LeaseLockParams {
            lease_name: args.lease_name.clone(),
            holder_id: holder.clone(),
            lease_ttl: ttl,
        },
    );
    let mut shutdown = Box::pin(crate::shutdown_signal());
    health.started.store(true, Ordering::SeqCst);
    tracing::info!(holder, lease = %args.lease_name, "waiting for leadership");
    // Standby: try to take the Lease every ttl/3.
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        match lock.try_acquire_or_renew().await {
            Ok(LeaseLockResult::Acquired(_)) => break,
            Ok(LeaseLockResult::NotAcquired(_)) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: cannot read the Lease"),
        }
    }
    tracing::info!(holder, "became leader");
    health.leader.store(true, Ordering::SeqCst);
    // Leader: renew every ttl/3; losing the Lease stops the controllers (and the process, so
    // that it comes back as a clean standby).
    let lost = Arc::new(tokio::sync::Notify::new());
    let renew = {
        let lost = lost.clone();
        tokio::spawn(async move {
            let mut renewed = std::time::Instant::now();
            loop {
                tokio::time::sleep(ttl / 3).await;
                match lock.try_acquire_or_renew().await {
                    Ok(LeaseLockResult::Acquired(_)) => renewed = std::time::Instant::now(),
                    Ok(LeaseLockResult::NotAcquired(_)) => {
                        tracing::error!("lost the leader Lease");
                        lost.notify_one();
                        return lock;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: renew failed");
                        // Past the lease duration a standby may have taken over: stop
                        // reconciling rather than risk two leaders.
                        if renewed.elapsed() >= ttl {
                            tracing::error!("could not renew the leader Lease within its duration; stepping down");
                            lost.notify_one();
                            return lock;
                        }
                    }
                }
            }
        })
    };
    let stop = async move {
        tokio::select! {
            _ = shutdown => {},
            _ = lost.notified() => {},
        }
    };
    run_controllers(client.clone(), ctx, args, health.clone(), stop).await;
    renew.abort();
    if let Ok(lock) = renew.await {
        let _ = lock.step_down().await;
    } else {
        // Released promptly so a standby takes over without waiting the full lease duration.
        let lock = LeaseLock::new(
            client,
            &args.namespace,
            LeaseLockParams {
                lease_name: args.lease_name.clone(),
                holder_id: holder,
                lease_ttl: ttl,
            },
        );
        let _ = lock.step_down().await;
    }
    Ok(())
}
