//! What one process spends of ELB's budget, owned in one place: the process's read bucket, its turn in the
//! installation's read lane (shared through the state table), the pauses after throttling (of reads and writes),
//! the reads made at once, and the count of what was spent. The use cases never see it: they state how an
//! invocation's reads use the lane (a [`crate::reads::ReadPolicy`] scoped over the invocation, a check's scope,
//! a follower's pace) or that a move cannot wait (`LoadBalancers::at_once`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Elb;
use crate::aws::dynamodb::ReadLane;
use crate::aws::INITIAL_BACKOFF;
use crate::clock::now_ms;
use crate::domain::pacing::PROCESS_SHARE;
use crate::domain::{LaneMode, TokenBucket, LANE_GRANT_TTL, LANE_MAX_BLOCK};
use crate::reads;
use crate::{AwsErrorKind, Error, Result};

// Each read keeps one pace. A read that waits its turn in the installation's read lane ([`crate::domain::lane`],
// [`Elb::with_lane`]) keeps the lane's, which bounds every process that waits in it together. Any other read (one
// counted in the lane without waiting, a follower's, AfterAllowTraffic's after its flip, the operator CLI's)
// keeps its process's: a burst (see [`ReadBurst`]),
// then `1.5 B` a second ([`PROCESS_SHARE`], from the installation's budget `B`,
// `BLUEGREEN_MIRROR_ELB_READS_PER_S`, default 5), or a follower's share of the followers' `2 B`. The account's
// `Describe*` bucket (200 tokens, 50 a second, since March 2026; 40 and 10 before) is shared with every other
// tool the customer runs. No read stands before the flip on AfterAllowTraffic's critical path.

/// How an ELB call that fails is tried again, by what it is: the one statement of the backoff, for throttling and
/// for other transient faults, reads and writes alike. A throttled account recovers only if its callers slow down,
/// so throttling beyond the SDK's retry is met with pauses (1, 2, 4, 8 s, jittered), never with quicker tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backoff {
    /// The SDK's attempts at the call (its standard retry: throttling included, 100 ms doubling).
    pub(super) sdk_attempts: u32,
    /// More tries after a transient fault that says nothing of the account's budget (a dropped connection, a 5xx),
    /// 100 ms doubling: with the SDK's own, as many attempts as a write gets.
    quick_retries: u32,
    /// Pauses after throttling that outlasts the SDK's retry, each followed by one more try.
    pub(super) throttle_pauses: u32,
    /// Whether a pause holds every read of the process, not only this call.
    holds_process: bool,
}

/// A `Describe*` call at its pace: one quick retry from the SDK, two more after a 5xx, and four pauses (about 15 s)
/// holding the process's reads: a hook has minutes to wait where failing would roll a deployment back.
pub(super) const READ: Backoff = Backoff { sdk_attempts: 2, quick_retries: 2, throttle_pauses: 4, holds_process: true };

/// A registration or a `Modify*` call: the SDK's standard retry, then two pauses (1, then 2 s) of this write alone.
/// A write that gives up fails the deployment it serves, or leaves a rollback half-followed; the pauses let ELB's
/// write buckets (3 and 4 a second) refill, and add no call while the account answers.
pub(super) const WRITE: Backoff =
    Backoff { sdk_attempts: crate::aws::MAX_ATTEMPTS, quick_retries: 0, throttle_pauses: 2, holds_process: false };

/// A read of a move that cannot wait ([`crate::ports::LoadBalancers::at_once`]): the SDK's standard retry alone.
const AT_ONCE: Backoff =
    Backoff { sdk_attempts: crate::aws::MAX_ATTEMPTS, quick_retries: 0, throttle_pauses: 0, holds_process: false };

/// How many `Describe*` calls a process may make at once before its pace applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBurst {
    /// The hooks: 5, one mirrored step (a route and four target groups). Their reads are not on the flip's path,
    /// and a deployment's start (AfterInstall, the ECS task events, BeforeAllowTraffic and the follower within
    /// two seconds) otherwise asked the account's bucket for 40 reads at once.
    Hook,
    /// The reconciler and the CLI: 9, one full reconcile, so that following a rollback never waits here.
    Reconcile,
}

impl ReadBurst {
    fn tokens(self) -> f64 {
        match self {
            ReadBurst::Hook => 5.0,
            ReadBurst::Reconcile => 9.0,
        }
    }
}

/// One read asking for its turn in the lane, counted out when it has it or is dropped.
struct Asked<'a>(&'a AtomicU32);

impl Drop for Asked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a reservation in the lane may take before the process goes on with its own pace alone: the lane is a
/// courtesy to the account, and a table that does not answer must not stop a deployment.
const LANE_RESERVE_BOUND: Duration = Duration::from_secs(1);

/// The installation's read lane as one process uses it: one reservation for the reads the process issues
/// together, handed out one read at a time to its concurrent callers, in the order they came. How the invocation
/// under way uses it is the invocation's own ([`crate::reads`]).
#[derive(Debug)]
pub(super) struct SharedReads {
    lane: ReadLane,
    /// Reads asking for their turn and not yet given it.
    waiting: AtomicU32,
    /// Reads reserved and not yet used, and when they became due.
    grant: tokio::sync::Mutex<(u32, Option<Instant>)>,
}

fn lane_busy(wait: Option<Duration>) -> Error {
    Error::LaneBusy(match wait {
        Some(wait) => format!(
            "the installation's ELB read lane gives this read its turn in {} s, after this invocation's time; it \
             stepped aside for the deployments reading and read nothing",
            wait.as_secs()
        ),
        None => "an earlier read of this invocation stepped aside from the installation's busy ELB read lane; \
                 this one read nothing"
            .into(),
    })
}

impl Elb {
    /// Counts the time this process's reads wait in the read lane into `spend` (the invocation's metrics).
    pub(crate) fn counting(mut self, spend: crate::aws::ElbCounter) -> Self {
        self.spend = Some(spend);
        self
    }

    /// Paces this process's `Describe*` calls outside the read lane within the installation's budget of
    /// `reads_per_s` (see [`PROCESS_SHARE`]).
    pub fn with_paced_reads(mut self, reads_per_s: f64, burst: ReadBurst) -> Self {
        let per_s = reads_per_s * PROCESS_SHARE;
        self.read_rate = per_s;
        self.reads = Some(Arc::new(Mutex::new(TokenBucket::new(burst.tokens().max(per_s), per_s, Duration::ZERO))));
        self
    }

    /// Makes this process's reads wait their turn in the installation's read lane too (see
    /// [`crate::domain::lane`]), on top of its own pace.
    pub fn with_lane(mut self, lane: ReadLane) -> Self {
        self.lane =
            Some(Arc::new(SharedReads { lane, waiting: AtomicU32::new(0), grant: tokio::sync::Mutex::new((0, None)) }));
        self
    }

    /// Waits for this read's turn in the installation's lane. The first of the reads issued together reserves
    /// for all of them (they queue while it does), so a mirrored step costs one write to the table, not five. A
    /// lane that cannot be reached leaves the process on its own pace, saying so in the log. A read whose turn
    /// comes after the time its invocation gave it ([`crate::reads::ReadPolicy`]) gives the reservation back and steps
    /// aside, and so do the reads after it in this invocation: sleeping into the function's timeout would hold the
    /// lane's time unused and fail the invocation, which Lambda would then run again to wait once more.
    async fn lane_turn(&self) -> Result<()> {
        let Some(shared) = &self.lane else { return Ok(()) };
        let mode = reads::mode();
        if mode == LaneMode::Outside {
            return Ok(());
        }
        shared.waiting.fetch_add(1, Ordering::Relaxed);
        // Counted out however this read ends, a cancelled one included.
        let _asked = Asked(&shared.waiting);
        // The reads issued with this one (a join of five) get to ask before the reservation is sized.
        tokio::task::yield_now().await;
        let mut grant = shared.grant.lock().await;
        if reads::stepped_aside() {
            return Err(lane_busy(None));
        }
        let fresh = grant.1.is_some_and(|at| at.elapsed() <= LANE_GRANT_TTL);
        if grant.0 == 0 || !fresh {
            let reads = shared.waiting.load(Ordering::Relaxed).clamp(1, LANE_MAX_BLOCK);
            match tokio::time::timeout(LANE_RESERVE_BOUND, shared.lane.reserve(reads, now_ms())).await {
                // Counted, not waited for: what was spent pushes the waiting reads of other processes back.
                Ok(Ok(_)) if mode == LaneMode::Count => {}
                Ok(Ok(wait)) if reads::too_late(wait) => {
                    *grant = (0, None);
                    match tokio::time::timeout(LANE_RESERVE_BOUND, shared.lane.give_back(reads)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, reads, "reserved reads of the lane not given back"),
                        Err(_) => tracing::warn!(reads, "reserved reads of the lane not given back in time"),
                    }
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        reads,
                        "the installation's ELB read lane is busier than this invocation can wait for; stepping aside"
                    );
                    return Err(lane_busy(Some(wait)));
                }
                Ok(Ok(wait)) => {
                    if wait >= Duration::from_secs(1) {
                        tracing::info!(
                            wait_ms = wait.as_millis() as u64,
                            reads,
                            "waiting for the installation's ELB read lane (other deployments are reading)"
                        );
                    }
                    if let Some(spend) = &self.spend {
                        spend.waited(wait);
                    }
                    tokio::time::sleep(wait).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "installation's ELB read lane not reserved; reading at this process's pace")
                }
                Err(_) => tracing::warn!(
                    bound_ms = LANE_RESERVE_BOUND.as_millis() as u64,
                    "installation's ELB read lane did not answer in time; reading at this process's pace"
                ),
            }
            *grant = (reads, Some(Instant::now()));
            reads::had_turn();
        }
        grant.0 = grant.0.saturating_sub(1);
        Ok(())
    }

    /// Waits for this process's turn to read.
    async fn paced(&self) -> Result<()> {
        // Throttled lately: nothing of this process reads before the pause is over.
        let held = *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(until) = held {
            tokio::time::sleep_until(until).await;
        }
        // One pace per read. A read the lane makes wait keeps the lane's: it bounds every process together, and a
        // second pace here only delayed it. Any other read, counted in the lane without waiting or outside it,
        // keeps its process's.
        let mode = if self.lane.is_some() { reads::mode() } else { LaneMode::Outside };
        if mode == LaneMode::Wait {
            return self.lane_turn().await;
        }
        if let Some(reads) = &self.reads {
            let now = self.origin.elapsed();
            // The invocation's own rate while it asks for one (a follower's share), else the process's.
            let rate = reads::pace().unwrap_or(self.read_rate);
            // A poisoned lock (a panic elsewhere while holding it) only loses the pacing, never the call.
            let wait = reads
                .lock()
                .map(|mut b| {
                    b.set_rate(rate, now);
                    b.take(now)
                })
                .unwrap_or(None);
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
        }
        if mode == LaneMode::Count {
            return self.lane_turn().await;
        }
        Ok(())
    }

    /// One `Describe*` call: at its pace and tried again as [`READ`] says, or at once ([`AT_ONCE`]).
    pub(super) async fn read<T, Fut>(&self, call: impl Fn() -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        if self.at_once {
            self.tried(AT_ONCE, false, call).await
        } else {
            self.tried(READ, true, call).await
        }
    }

    /// One write (a registration or a `Modify*` call), tried again as [`WRITE`] says.
    pub(super) async fn write<T, Fut>(&self, call: impl Fn() -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.tried(WRITE, false, call).await
    }

    /// One call, each try at its pace when `paced`, tried again as `backoff` says.
    async fn tried<T, Fut>(&self, backoff: Backoff, paced: bool, call: impl Fn() -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (mut pauses, mut quick) = (0, 0);
        loop {
            if paced {
                self.paced().await?;
            }
            match call().await {
                Err(e) if e.aws_kind() == Some(AwsErrorKind::Throttled) && pauses < backoff.throttle_pauses => {
                    let pause = self.throttle_pause(pauses);
                    pauses += 1;
                    if backoff.holds_process {
                        let until = Instant::now() + pause;
                        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        *held = Some(held.map_or(until, |h| h.max(until)));
                        // And the process's reads come back at its pace, not all at once when the pause is over.
                        if let Some(Ok(mut bucket)) = self.reads.as_ref().map(|r| r.lock()) {
                            bucket.hold(pause, self.origin.elapsed());
                        }
                    } else {
                        tracing::info!(
                            pause_ms = pause.as_millis() as u64,
                            error = %e,
                            "an ELB call was throttled through the SDK's retry; pausing before trying it again"
                        );
                        tokio::time::sleep(pause).await;
                    }
                }
                Err(e)
                    if e.is_transient()
                        && e.aws_kind() != Some(AwsErrorKind::Throttled)
                        && quick < backoff.quick_retries =>
                {
                    tokio::time::sleep(INITIAL_BACKOFF * (1 << quick)).await;
                    quick += 1;
                }
                other => return other,
            }
        }
    }

    /// The `n`-th pause after throttling: 2^n s, jittered to between half and all of it from the clock, so that
    /// processes throttled together do not come back together.
    fn throttle_pause(&self, n: u32) -> Duration {
        let jitter = 0.5 + f64::from(self.origin.elapsed().subsec_nanos() % 1000) / 2000.0;
        Duration::from_secs(1 << n).mul_f64(jitter)
    }

    pub(super) fn budget_at_once(&self) -> Self {
        // The writes' client (its standard retry, throttling included), and nothing of the process's pace.
        Self { reader: self.client.clone(), reads: None, lane: None, at_once: true, ..self.clone() }
    }
}
