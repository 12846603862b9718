//! Client-side leases of a subscription's deliveries.
//!
//! A broker hands a message to a consumer and holds it until it is settled, but what a
//! consumer may still do with it is bounded by the trigger's visibility timeout: after that,
//! the broker delivers it again (JetStream) or the adapter must give it back (RabbitMQ), and
//! a late settlement must be refused. Each delivery therefore carries a [`Lease`]: its
//! deadline, the prefetch slot it holds, and whether it was settled.
//!
//! [`Leases`] is the registry of one subscription's live deliveries. A delivery enters it at
//! receipt and leaves when it is dropped, so the registry never holds more than the
//! subscription's slots; its watcher task sleeps until the earliest deadline (a new lease due
//! earlier wakes it, an extension only moves one later). With nothing to watch, it sleeps one
//! visibility timeout if leases came since it last looked (one made meanwhile cannot run out
//! before it wakes), and only then until a delivery arrives. A busy subscription costs the
//! watcher a wake-up per visibility timeout, not one per delivery (nor one per delivery
//! handled one at a time), and keeps no memory of settled deliveries.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use topiq_adapter::{Error, MessageId, Result};

/// A delivery's lease and the prefetch slot it holds. The slot is freed when the delivery is
/// settled or dropped, or when the lease runs out.
#[derive(Debug)]
pub struct Lease {
    deadline: Instant,
    permit: Option<OwnedSemaphorePermit>,
    settled: bool,
}

impl Lease {
    /// A lease running for `visibility_timeout` from now, holding `permit`.
    pub fn new(visibility_timeout: Duration, permit: OwnedSemaphorePermit) -> Self {
        Self {
            deadline: Instant::now() + visibility_timeout,
            permit: Some(permit),
            settled: false,
        }
    }

    /// When the lease runs out, unless extended.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Neither settled nor run out: a settlement or an extension may still claim it.
    pub fn is_live(&self) -> bool {
        !self.settled && Instant::now() < self.deadline
    }

    /// Claims the lease for a settlement; false (and nothing changed) once it is settled or
    /// has run out. Whoever claims first settles the delivery.
    pub fn claim(&mut self) -> bool {
        let live = self.is_live();
        if live {
            self.settled = true;
        }
        live
    }

    /// Claims a lease that ran out (for the adapter's own handling of the expiry, such as
    /// dead-lettering a last attempt); false if it was settled meanwhile.
    pub fn claim_expired(&mut self) -> bool {
        let unclaimed = !self.settled;
        self.settled = true;
        unclaimed
    }

    /// Moves a live lease's deadline to `visibility_timeout` from now; false once it is
    /// settled or has run out.
    pub fn extend(&mut self, visibility_timeout: Duration) -> bool {
        let live = self.is_live();
        if live {
            self.deadline = Instant::now() + visibility_timeout;
        }
        live
    }
}

/// A delivery that carries a [`Lease`].
pub trait Leased: Send + Sync + Sized + 'static {
    /// The delivery's lease.
    fn lease(&self) -> &Mutex<Lease>;

    /// The lease ran out unsettled; its slot is already free and no settlement can claim it
    /// any more. Called once per lease, from the watcher task (spawn anything slow).
    fn expired(self: Arc<Self>);
}

/// Locks a lease (a poisoned lock still holds a consistent lease: every update is one store).
pub fn lock(lease: &Mutex<Lease>) -> MutexGuard<'_, Lease> {
    lease.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Claims `lease` for a settlement of message `id`: whoever claims first settles it; once it
/// is settled or has run out, the error is `LeaseExpired`.
pub fn claim(lease: &Mutex<Lease>, id: &MessageId) -> Result<()> {
    if lock(lease).claim() {
        Ok(())
    } else {
        Err(Error::LeaseExpired { id: id.clone() })
    }
}

/// Extends `lease` of message `id` by `visibility_timeout` from now; `LeaseExpired` once it
/// is settled or has run out.
pub fn extend(lease: &Mutex<Lease>, visibility_timeout: Duration, id: &MessageId) -> Result<()> {
    if lock(lease).extend(visibility_timeout) {
        Ok(())
    } else {
        Err(Error::LeaseExpired { id: id.clone() })
    }
}

/// Where a delivery sits in its subscription's [`Leases`]; pass it to [`Leases::remove`]
/// when the delivery is dropped.
#[derive(Clone, Copy, Debug)]
pub struct LeaseKey(usize);

/// The live leases of one subscription, and the watcher that expires them.
#[derive(Debug)]
pub struct Leases<T> {
    live: Mutex<Live<T>>,
    /// Wakes the watcher: a lease arrived while it had nothing to watch, or the registry is
    /// gone.
    wake: Arc<Notify>,
}

#[derive(Debug)]
struct Live<T> {
    leases: slab::Slab<Weak<T>>,
    /// Leases registered so far: tells the watcher whether one arrived since it looked.
    registered: u64,
    /// What the watcher does between sweeps.
    rest: Rest,
    /// Sweeps made (for tests of how often the watcher wakes).
    #[cfg(test)]
    sweeps: u64,
}

/// What the watcher does between sweeps.
#[derive(Clone, Copy, Debug)]
enum Rest {
    /// Sweeping, or about to.
    Awake,
    /// Asleep until then (the earliest deadline, or the end of a quiet spell): a lease due
    /// before (its deadline stamped before it was registered, the watcher looking in between)
    /// wakes it.
    Until(Instant),
    /// Asleep until a lease arrives (it had no deadline to sleep until).
    Idle,
}

/// What a sweep found.
struct Swept {
    /// The earliest deadline still to watch.
    earliest: Option<Instant>,
    /// How many leases had been registered when it looked.
    registered: u64,
    /// When it looked (read before it did).
    at: Instant,
}

impl<T: Leased> Leases<T> {
    /// An empty registry of leases of `visibility_timeout` with its watcher running (on the
    /// current tokio runtime); the watcher ends when the registry is dropped.
    pub fn new(visibility_timeout: Duration) -> Arc<Self> {
        let wake = Arc::new(Notify::new());
        let leases = Arc::new(Self {
            live: Mutex::new(Live {
                leases: slab::Slab::new(),
                registered: 0,
                rest: Rest::Awake,
                #[cfg(test)]
                sweeps: 0,
            }),
            wake: Arc::clone(&wake),
        });
        tokio::spawn(watch(Arc::downgrade(&leases), wake, visibility_timeout));
        leases
    }

    fn live(&self) -> MutexGuard<'_, Live<T>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the delivery `make` builds from its key; wakes the watcher only if it had
    /// nothing to watch, or sleeps past the delivery's deadline.
    pub fn insert(&self, make: impl FnOnce(LeaseKey) -> T) -> Arc<T> {
        let mut live = self.live();
        let entry = live.leases.vacant_entry();
        let delivery = Arc::new(make(LeaseKey(entry.key())));
        entry.insert(Arc::downgrade(&delivery));
        live.registered += 1;
        let wake = match live.rest {
            Rest::Awake => false,
            Rest::Idle => true,
            Rest::Until(until) => lock(delivery.lease()).deadline < until,
        };
        if wake {
            live.rest = Rest::Awake;
        }
        drop(live);
        if wake {
            self.wake.notify_one();
        }
        delivery
    }

    /// Forgets a delivery (call it from the delivery's `Drop`).
    pub fn remove(&self, key: LeaseKey) {
        self.live().leases.try_remove(key.0);
    }

    /// How many deliveries are registered (settled ones still held included).
    pub fn len(&self) -> usize {
        self.live().leases.len()
    }

    /// True when no delivery is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Expires every lease whose deadline passed unsettled.
    fn sweep(&self) -> Swept {
        let at = Instant::now();
        // Upgraded under the lock, looked at after it: dropping the last reference to a
        // delivery takes the lock again.
        let (deliveries, registered) = {
            let mut live = self.live();
            live.rest = Rest::Awake;
            #[cfg(test)]
            {
                live.sweeps += 1;
            }
            let deliveries: Vec<Arc<T>> = live
                .leases
                .iter()
                .filter_map(|(_, weak)| weak.upgrade())
                .collect();
            (deliveries, live.registered)
        };
        let mut earliest: Option<Instant> = None;
        for delivery in deliveries {
            let mut lease = lock(delivery.lease());
            // Settled, or expired in an earlier sweep (an expired lease cannot be extended).
            if lease.settled || lease.permit.is_none() {
                continue;
            }
            if lease.deadline > at {
                earliest = Some(earliest.map_or(lease.deadline, |at| at.min(lease.deadline)));
                continue;
            }
            lease.permit.take();
            drop(lease);
            delivery.expired();
        }
        Swept {
            earliest,
            registered,
            at,
        }
    }

    /// Marks the watcher asleep until `until` (`None`: until a lease arrives), unless a lease
    /// arrived since its sweep saw `registered` (false: it looks again).
    fn rest(&self, registered: u64, until: Option<Instant>) -> bool {
        let mut live = self.live();
        if live.registered != registered {
            return false;
        }
        live.rest = until.map_or(Rest::Idle, Rest::Until);
        true
    }
}

impl<T> Drop for Leases<T> {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Expires `leases` (of `visibility_timeout`) as their deadlines pass, until the registry is
/// dropped.
async fn watch<T: Leased>(
    leases: Weak<Leases<T>>,
    wake: Arc<Notify>,
    visibility_timeout: Duration,
) {
    let mut seen = 0;
    loop {
        let Some(leases) = leases.upgrade() else {
            return; // the subscription and all its deliveries are gone
        };
        let swept = leases.sweep();
        let next = match swept.earliest {
            Some(deadline) => Some(deadline),
            // Nothing to watch, but leases came since the last look: more are likely, and
            // none made from now on runs out within a visibility timeout, so a sleep that
            // long stands in for a wake-up per delivery (one made before, registered during
            // the sleep, wakes it: `insert`).
            None if swept.registered != seen => Some(swept.at + visibility_timeout),
            None => None,
        };
        if !leases.rest(swept.registered, next) {
            continue; // a lease arrived since the sweep: look again
        }
        seen = swept.registered;
        drop(leases);
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    struct Held {
        lease: Mutex<Lease>,
        leases: Arc<Leases<Held>>,
        key: LeaseKey,
        expired: Arc<AtomicUsize>,
    }

    impl Leased for Held {
        fn lease(&self) -> &Mutex<Lease> {
            &self.lease
        }
        fn expired(self: Arc<Self>) {
            self.expired.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            self.leases.remove(self.key);
        }
    }

    /// The tests' visibility timeout.
    const LEASE: Duration = Duration::from_secs(5);

    fn hold(
        leases: &Arc<Leases<Held>>,
        slots: &Arc<Semaphore>,
        timeout: Duration,
        expired: &Arc<AtomicUsize>,
    ) -> Arc<Held> {
        let permit = Arc::clone(slots).try_acquire_owned().unwrap();
        register(leases, Lease::new(timeout, permit), expired)
    }

    /// Registers `lease`, made already, in `leases`.
    fn register(leases: &Arc<Leases<Held>>, lease: Lease, expired: &Arc<AtomicUsize>) -> Arc<Held> {
        leases.insert(|key| Held {
            lease: Mutex::new(lease),
            leases: Arc::clone(leases),
            key,
            expired: Arc::clone(expired),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_runs_out_frees_its_slot_once_and_refuses_settlement() {
        let (leases, slots) = (Leases::new(LEASE), Arc::new(Semaphore::new(1)));
        let expired = Arc::new(AtomicUsize::new(0));
        let held = hold(&leases, &slots, LEASE, &expired);
        assert_eq!(slots.available_permits(), 0);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            slots.available_permits(),
            1,
            "the expired lease freed its slot"
        );
        assert_eq!(expired.load(Ordering::SeqCst), 1);
        assert!(!lock(held.lease()).claim(), "a late settlement is refused");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(expired.load(Ordering::SeqCst), 1, "expired once only");
    }

    #[tokio::test(start_paused = true)]
    async fn an_extended_lease_runs_out_only_after_its_new_deadline() {
        let (leases, slots) = (Leases::new(LEASE), Arc::new(Semaphore::new(1)));
        let expired = Arc::new(AtomicUsize::new(0));
        let held = hold(&leases, &slots, LEASE, &expired);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(lock(held.lease()).extend(Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            expired.load(Ordering::SeqCst),
            0,
            "still within the extension"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(expired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn settled_and_dropped_deliveries_leave_the_registry_and_never_expire() {
        let (leases, slots) = (Leases::new(LEASE), Arc::new(Semaphore::new(2)));
        let expired = Arc::new(AtomicUsize::new(0));
        let settled = hold(&leases, &slots, LEASE, &expired);
        let dropped = hold(&leases, &slots, LEASE, &expired);
        assert!(lock(settled.lease()).claim());
        drop((settled, dropped));
        assert!(leases.is_empty());
        assert_eq!(slots.available_permits(), 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(expired.load(Ordering::SeqCst), 0);
        // After an idle spell, a new lease is watched again.
        let _late = hold(&leases, &slots, LEASE, &expired);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(expired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deliveries_handled_one_at_a_time_do_not_wake_the_watcher_each() {
        let (leases, slots) = (Leases::new(LEASE), Arc::new(Semaphore::new(1)));
        let expired = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            let held = hold(&leases, &slots, LEASE, &expired);
            assert!(lock(held.lease()).claim());
            drop(held);
            // The watcher runs between deliveries (a consumer awaits the next), each time
            // finding nothing to watch.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let sweeps = leases.live().sweeps;
        assert!(
            sweeps <= 3,
            "the watcher swept {sweeps} times for 100 deliveries"
        );
        // Quiet for a visibility timeout, it goes idle; a lease after that is still watched.
        tokio::time::sleep(LEASE * 3).await;
        let late = hold(&leases, &slots, LEASE, &expired);
        tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
        assert_eq!(expired.load(Ordering::SeqCst), 1, "the late lease ran out");
        assert!(!lock(late.lease()).claim());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_made_while_the_watcher_sleeps_out_a_quiet_spell_runs_out_on_time() {
        let (leases, slots) = (Leases::new(LEASE), Arc::new(Semaphore::new(1)));
        let expired = Arc::new(AtomicUsize::new(0));
        drop(hold(&leases, &slots, LEASE, &expired));
        // The watcher now sleeps out a visibility timeout; a lease made within it ...
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _held = hold(&leases, &slots, LEASE, &expired);
        // ... runs out at its own deadline, not a visibility timeout after the watcher wakes.
        tokio::time::sleep(LEASE - Duration::from_millis(10)).await;
        assert_eq!(expired.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(expired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_made_before_a_quiet_spell_and_registered_during_it_runs_out_on_time() {
        let (leases, slots) = (Leases::new(LEASE), Arc::new(Semaphore::new(2)));
        let expired = Arc::new(AtomicUsize::new(0));
        // A delivery's lease is stamped when it is read, before it is registered ...
        let made_early = Lease::new(LEASE, Arc::clone(&slots).try_acquire_owned().unwrap());
        tokio::time::sleep(Duration::from_secs(2)).await;
        // ... while another comes and goes, so the watcher sleeps out a quiet spell from now.
        drop(hold(&leases, &slots, LEASE, &expired));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _late = register(&leases, made_early, &expired);
        // Due at 5 s, not when the quiet spell ends (7 s).
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        assert_eq!(expired.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_due_before_the_one_the_watcher_sleeps_for_runs_out_on_time() {
        let (leases, slots) = (Leases::new(LEASE), Arc::new(Semaphore::new(2)));
        let expired = Arc::new(AtomicUsize::new(0));
        // Stamped first, registered after another lease the watcher then sleeps for.
        let made_early = Lease::new(LEASE, Arc::clone(&slots).try_acquire_owned().unwrap());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _watched = hold(&leases, &slots, LEASE, &expired);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _late = register(&leases, made_early, &expired);
        // Due at 5 s, not when the watched one is (6 s).
        tokio::time::sleep(Duration::from_millis(3_600)).await;
        assert_eq!(expired.load(Ordering::SeqCst), 1);
    }
}
