//! The leader Lease's renew deadline as every reconcile sees it ([`LeaseClock`]): written by the
//! renew loop ([`super::leader`]), read before every provider write (the write gate) and by the
//! supervisor that cancels reconciles at the deadline.

use std::time::Duration;

use tokio::sync::watch;

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

    /// Not holding the Lease (a standby): every write is refused until a renew.
    pub fn standby(&self) {
        self.lost();
    }

    /// Whether this replica may write *now*: no leader election, or the renew deadline has not
    /// passed on the monotonic clock. Checked right before each write is sent.
    pub fn holds(&self) -> bool {
        match self.deadline() {
            Deadline::Unbounded => true,
            Deadline::At(t) => tokio::time::Instant::now() < t,
        }
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
