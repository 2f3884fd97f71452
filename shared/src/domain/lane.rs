//! The installation's shared read lane: one rate for the ELB `Describe*` calls of every process that can wait
//! (AfterInstall, BeforeAllowTraffic, the reconciler's event-driven and scheduled reconciles), whatever their
//! number. Each process's own bucket bounds that process alone; twenty deployments starting together are twenty
//! processes, and their reads together drained the account's bucket, which every other tool in the account
//! shares. The lane is a generic cell rate algorithm over one number in the state table: the lane's
//! "theoretical arrival time" (TAT), in ms since the epoch. A reservation of `n` reads adds `n / rate` to it in
//! one atomic write and reads the sum back; the reads may go once the TAT is at most `burst / rate` ahead of now.
//! An atomic add cannot take a maximum, so after a quiet spell the stored TAT lags behind the clock; the process
//! that sees it lag moves it up to now with a second, conditional write ([`Admission::catch_up_ms`]).
//!
//! Not every read can wait ([`LaneMode`]): what follows a public move that already happened (a rollback, or a
//! deployment's end that no hook recorded flipping the private side) or a task that is going is counted in the
//! lane without waiting, and the waiting reads absorb it. The end of a deployment whose flip is on record waits,
//! as the sweep does: the hooks verified the private side then. Followers are not in the lane: their reads keep
//! the private weights within a second of the public ones, and they share their own rate through the census.
//! AfterAllowTraffic's few reads after the flip are not in it either: they verify a flip that already happened,
//! and must not queue behind a deployment's start elsewhere. A waiting read whose turn would come after its
//! invocation's time (the reconciler's sweep or a recorded deployment's end, given their budget) gives its
//! reservation back with a negative add and steps aside, leaving the check to the next sweep, which takes it
//! first: sleeping into the function's timeout would hold the lane's time unused, and the failed invocation would
//! be run again by Lambda, to wait once more. A check (a reconcile of one binding, a hook's setup, one poll) reads
//! in rounds, each needing the one before; it waits its turn once, for its first round, and its later rounds are
//! counted as they go: a turn for each round in a busy lane spread one reconcile's reads over tens of seconds, so
//! that it had to read the public route again to trust them, and often stepped aside half-way, its first reads
//! spent for nothing; and a hook waited seven turns for its ten reads.
//!
//! Pure: numbers in, numbers out; the adapter owns the clock and the table.

use std::time::Duration;

/// How many reads the lane lets through at once after a quiet spell: two mirrored steps (a route and four target
/// groups each), a quarter of the account's bucket of 40.
pub const LANE_BURST: f64 = 10.0;

/// The most reads one reservation covers: the reads a process issues together (a route and four target groups,
/// a reconcile's six) wait for one reservation, not one each, and no reservation is larger than the burst.
pub const LANE_MAX_BLOCK: u32 = 10;

/// How long a process keeps the reads it reserved and did not use: they were the lane's at that moment, not
/// later, when they would be a burst the lane never allowed.
pub const LANE_GRANT_TTL: Duration = Duration::from_secs(2);

/// How one invocation's reads use the lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneMode {
    /// They wait their turn: AfterInstall, BeforeAllowTraffic, the scheduled sweep, and the end of a deployment
    /// whose flip AfterAllowTraffic recorded. They have minutes (or a later sweep), and a deployment that starts a
    /// little later costs nobody anything.
    Wait,
    /// They are counted in the lane but do not wait: what follows a move that already happened (a rollback, a
    /// stop, a deployment's end with no flip on record) or a task that is going (its private mirror must go within
    /// the target group's deregistration delay). What they spend pushes the waiting reads back, so the lane's rate still holds.
    Count,
    /// Not in the lane: a follower (its own share, through the census) and AfterAllowTraffic (a few reads right
    /// after its flip, verifying it).
    Outside,
}

/// How one invocation's reads take their turns in the lane: its mode, and where a check under way stands (a
/// check waits its turn once, for its first round of reads; its later rounds are counted as they go). The one
/// statement of these rules: each invocation keeps one in its read policy's scope, which the ELB adapter and the
/// tests' fake both read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turns {
    mode: LaneMode,
    check: Check,
}

/// Where an invocation's reads stand in a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Not in a check: every round of reads takes its own turn.
    None,
    /// In a check whose first reads have not had their turn yet.
    Waiting,
    /// In a check that has had its turn: its further reads are counted, not waited for.
    HadTurn,
}

impl Default for Turns {
    /// A process starts waiting, until an invocation says otherwise.
    fn default() -> Self {
        Self::new(LaneMode::Wait)
    }
}

impl Turns {
    /// An invocation's reads in `mode`, in no check yet.
    pub fn new(mode: LaneMode) -> Self {
        Self { mode, check: Check::None }
    }

    /// The reads from here on are one check's.
    pub fn begin_check(&mut self) {
        self.check = Check::Waiting;
    }

    /// The check under way is over: the reads after it take their own turns again.
    pub fn end_check(&mut self) {
        self.check = Check::None;
    }

    /// How the next read uses the lane: the invocation's mode, except that the later reads of a check that has
    /// had its turn are only counted.
    pub fn mode(&self) -> LaneMode {
        match (self.mode, self.check) {
            (LaneMode::Wait, Check::HadTurn) => LaneMode::Count,
            (mode, _) => mode,
        }
    }

    /// The reads of the check under way have had their turn (waited for it, or been counted).
    pub fn had_turn(&mut self) {
        if self.check == Check::Waiting {
            self.check = Check::HadTurn;
        }
    }
}

/// The lane's rate and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lane {
    per_s: f64,
    burst: f64,
}

/// What one reservation comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// How long the reserved reads wait before they may go.
    pub wait: Duration,
    /// When the stored TAT lagged behind the clock (the lane was quiet): how much to add to it, so that it starts
    /// from now again. `None` when the lane is busy and the stored value is right.
    pub catch_up_ms: Option<u64>,
}

impl Lane {
    /// A lane of `per_s` reads a second for the whole installation, with a burst of `burst` reads.
    pub fn new(per_s: f64, burst: f64) -> Self {
        Self { per_s: per_s.max(0.01), burst: burst.max(1.0) }
    }

    /// What `reads` reads cost of the lane's time, in ms.
    pub fn cost_ms(&self, reads: u32) -> u64 {
        (f64::from(reads) * 1000.0 / self.per_s).ceil() as u64
    }

    fn burst_ms(&self) -> u64 {
        (self.burst * 1000.0 / self.per_s).ceil() as u64
    }

    /// The reservation of `cost_ms` whose atomic add left the stored TAT at `tat_after_ms`, made at `now_ms`.
    pub fn admit(&self, tat_after_ms: u64, cost_ms: u64, now_ms: u64) -> Admission {
        let before = tat_after_ms.saturating_sub(cost_ms);
        let (tat, catch_up_ms) = if before < now_ms {
            // Quiet since: the lane starts from now, and this reservation is the first in it.
            (now_ms + cost_ms, Some(now_ms - before))
        } else {
            (tat_after_ms, None)
        };
        let wait = tat.saturating_sub(now_ms + self.burst_ms());
        Admission { wait: Duration::from_millis(wait), catch_up_ms }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_check_waits_its_turn_once_and_counts_its_later_reads() {
        let mut turns = Turns::default();
        assert_eq!(turns.mode(), LaneMode::Wait, "a process starts waiting");
        turns.had_turn();
        assert_eq!(turns.mode(), LaneMode::Wait, "outside a check, every round waits its turn");
        turns.begin_check();
        assert_eq!(turns.mode(), LaneMode::Wait);
        turns.had_turn();
        assert_eq!(turns.mode(), LaneMode::Count, "the check's later rounds are counted");
        assert_eq!(Turns::new(LaneMode::Wait).mode(), LaneMode::Wait, "a new invocation starts outside any check");
        for mode in [LaneMode::Count, LaneMode::Outside] {
            let mut turns = Turns::new(mode);
            turns.begin_check();
            turns.had_turn();
            assert_eq!(turns.mode(), mode, "only waiting reads change with a check");
        }
    }

    /// The table's one number, written as DynamoDB would: an atomic add, and the conditional catch-up.
    struct Stored(u64);

    impl Stored {
        fn reserve(&mut self, lane: &Lane, reads: u32, now: u64) -> Admission {
            let cost = lane.cost_ms(reads);
            self.0 += cost;
            let a = lane.admit(self.0, cost, now);
            if let Some(d) = a.catch_up_ms {
                if self.0 < now {
                    self.0 += d;
                }
            }
            a
        }
    }

    #[test]
    fn a_quiet_lane_lets_a_burst_through_then_paces_at_its_rate() {
        let lane = Lane::new(2.0, 10.0);
        let mut s = Stored(0);
        let now = 1_000_000;
        let waits: Vec<u128> = (0..4).map(|_| s.reserve(&lane, 5, now).wait.as_millis()).collect();
        // Two blocks of five in the burst, then each block 2.5 s after the one before.
        assert_eq!(waits, vec![0, 0, 2500, 5000]);
        // After a quiet minute the lane starts from now again: the burst is there, not a minute of credit.
        let later = now + 60_000;
        assert_eq!(s.reserve(&lane, 5, later).wait, Duration::ZERO);
        assert_eq!(s.reserve(&lane, 5, later).wait, Duration::ZERO);
        assert_eq!(s.reserve(&lane, 5, later).wait, Duration::from_millis(2500));
    }

    #[test]
    fn the_first_reservation_after_a_quiet_spell_moves_the_lane_up_to_now() {
        let lane = Lane::new(2.0, 10.0);
        let a = lane.admit(lane.cost_ms(5), lane.cost_ms(5), 1_000_000);
        assert_eq!(a, Admission { wait: Duration::ZERO, catch_up_ms: Some(1_000_000) });
        let busy = lane.admit(1_010_000, lane.cost_ms(5), 1_000_000);
        assert_eq!(busy.catch_up_ms, None);
        assert_eq!(busy.wait, Duration::from_millis(5000));
    }

    proptest! {
        /// However many processes reserve and whenever they do, what the lane lets through in any stretch of
        /// time is at most its burst and its rate over that stretch, give or take one block.
        #[test]
        fn the_lane_never_lets_more_through_than_its_rate(
            arrivals in proptest::collection::vec((0u64..2_000, 1u32..=9), 1..150),
            per_s in 0.5f64..12.0,
        ) {
            let lane = Lane::new(per_s, LANE_BURST);
            let mut s = Stored(0);
            let mut now = 5_000_000u64;
            let mut sent: Vec<(u64, u32)> = Vec::new();
            for (gap, reads) in arrivals {
                now += gap;
                let a = s.reserve(&lane, reads, now);
                sent.push((now + a.wait.as_millis() as u64, reads));
            }
            sent.sort_unstable();
            for (i, (start, _)) in sent.iter().enumerate() {
                let mut total = 0u32;
                for (end, reads) in &sent[i..] {
                    total += reads;
                    let window = (end - start) as f64 / 1000.0;
                    prop_assert!(
                        f64::from(total) <= LANE_BURST + 9.0 + per_s * window + 1e-6,
                        "{total} reads in {window} s at {per_s}/s"
                    );
                }
            }
        }

        /// A lane that was quiet for longer than its burst takes to refill lets the next block go at once.
        #[test]
        fn a_quiet_lane_never_makes_anyone_wait(per_s in 0.5f64..12.0, quiet_ms in 0u64..100_000) {
            let lane = Lane::new(per_s, LANE_BURST);
            let mut s = Stored(0);
            let t0 = 5_000_000u64;
            for _ in 0..10 {
                s.reserve(&lane, LANE_MAX_BLOCK, t0);
            }
            // Each reservation rounds its cost up to the next ms.
            let refill = lane.cost_ms(LANE_BURST as u32) + 10 * lane.cost_ms(LANE_MAX_BLOCK);
            let a = s.reserve(&lane, LANE_MAX_BLOCK, t0 + refill + quiet_ms);
            prop_assert_eq!(a.wait, Duration::ZERO);
        }
    }
}
