//! An invocation's read policy: how its ELB reads use the installation's read lane, stated once by the use case
//! that starts the work ([`under`]) and scoped over that work's future, with a check's scope ([`check`]) inside
//! it. The `LoadBalancers` port carries no coordination setter and the process-wide adapter keeps no invocation's
//! state: the adapter, and the tests' fake, ask here how the next read takes its turn, by the pure rules of
//! [`crate::domain::Turns`]. Outside any scope (the operator's CLI), reads wait their turn and every round takes
//! its own.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::{LaneMode, Turns};

/// How one invocation's reads use the installation's read lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadPolicy {
    /// Wait their turn, be counted without waiting, or stay out of the lane ([`LaneMode`]).
    pub lane: LaneMode,
    /// Until when a waiting read may wait for its turn: one whose turn comes later steps aside
    /// ([`crate::Error::LaneBusy`]) instead of sleeping into the invocation's timeout, and so do the invocation's
    /// reads after it. `None`: as long as it takes (the hooks, which have minutes).
    pub until: Option<Instant>,
}

impl ReadPolicy {
    /// Reads in `lane`; those that wait step aside if their turn comes later than `within` from now.
    pub fn new(lane: LaneMode, within: Option<Duration>) -> Self {
        Self { lane, until: within.map(|d| Instant::now() + d) }
    }
}

/// What an invocation's scope holds while its work runs.
#[derive(Debug)]
struct Scope {
    turns: Turns,
    until: Option<Instant>,
    stepped_aside: bool,
    /// The process's read rate while this invocation runs, when not its default (a follower's share).
    pace: Option<f64>,
}

tokio::task_local! {
    static SCOPE: Arc<Mutex<Scope>>;
}

/// Runs `work` with its ELB reads under `policy`. A scope inside another replaces it for its own work.
pub async fn under<F: std::future::Future>(policy: ReadPolicy, work: F) -> F::Output {
    let scope = Scope { turns: Turns::new(policy.lane), until: policy.until, stepped_aside: false, pace: None };
    SCOPE.scope(Arc::new(Mutex::new(scope)), work).await
}

fn with<T>(f: impl FnOnce(&mut Scope) -> T) -> Option<T> {
    SCOPE.try_with(|s| f(&mut s.lock().unwrap_or_else(PoisonError::into_inner))).ok()
}

/// The reads from here until the guard is dropped are one check's (a reconcile of one binding, a hook's setup,
/// one poll), which reads in rounds, each needing the one before: when they wait in the lane, the first round
/// waits its turn and the later ones are counted without waiting again. A check half done has spent reads worth
/// something only if it finishes, and turns taken round by round in a busy lane spread its reads so far apart that
/// it must read again to trust them, or steps aside half-way.
#[must_use = "the check lasts as long as its guard"]
#[derive(Debug)]
pub struct Check(());

/// Starts a check ([`Check`]).
pub fn check() -> Check {
    with(|s| s.turns.begin_check());
    Check(())
}

impl Drop for Check {
    fn drop(&mut self) {
        with(|s| s.turns.end_check());
    }
}

/// Paces this process's reads at `per_s` while the invocation runs (a follower's share of the followers' rate).
pub fn pace_at(per_s: f64) {
    with(|s| s.pace = Some(per_s));
}

/// For the adapters: the rate this invocation asked its process's reads to keep, if it asked for one.
pub fn pace() -> Option<f64> {
    with(|s| s.pace).flatten()
}

/// For the adapters: how the next read uses the lane.
pub fn mode() -> LaneMode {
    with(|s| s.turns.mode()).unwrap_or(LaneMode::Wait)
}

/// For the adapters: the reads of the check under way have had their turn (waited for it, or gone on without the
/// lane).
pub fn had_turn() {
    with(|s| s.turns.had_turn());
}

/// For the adapters: whether an earlier read of this invocation stepped aside, so that this one does too.
pub fn stepped_aside() -> bool {
    with(|s| s.stepped_aside).unwrap_or(false)
}

/// For the adapters: whether a turn `wait` from now comes after this invocation's reads may wait; if so, the
/// invocation has stepped aside.
pub fn too_late(wait: Duration) -> bool {
    with(|s| {
        let late = s.until.is_some_and(|until| Instant::now() + wait > until);
        s.stepped_aside |= late;
        late
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_policy_holds_for_its_work_and_a_check_for_its_guard() {
        assert_eq!(mode(), LaneMode::Wait, "outside a scope, reads wait");
        under(ReadPolicy::new(LaneMode::Wait, None), async {
            let c = check();
            assert_eq!(mode(), LaneMode::Wait);
            had_turn();
            assert_eq!(mode(), LaneMode::Count, "a check's later rounds are counted");
            drop(c);
            assert_eq!(mode(), LaneMode::Wait, "after the check, a round takes its own turn");
            under(ReadPolicy::new(LaneMode::Outside, None), async {
                pace_at(0.5);
                assert_eq!((mode(), pace()), (LaneMode::Outside, Some(0.5)));
            })
            .await;
            assert_eq!(pace(), None, "a pace lasts as long as the scope that set it");
        })
        .await;
        assert_eq!(pace(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_too_late_steps_the_invocation_aside() {
        under(ReadPolicy::new(LaneMode::Wait, Some(Duration::from_secs(10))), async {
            assert!(!too_late(Duration::from_secs(9)));
            assert!(!stepped_aside());
            assert!(too_late(Duration::from_secs(11)));
            assert!(stepped_aside(), "the reads after it step aside too");
        })
        .await;
        under(ReadPolicy::new(LaneMode::Wait, None), async { assert!(!too_late(Duration::from_secs(3600))) }).await;
        assert!(!too_late(Duration::from_secs(3600)), "outside a scope nothing steps aside");
    }
}
