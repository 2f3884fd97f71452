//! The follower's schedule as a pure state machine: what it does next (read the public route, count itself in the
//! census, ask whether the deployment is over, renew its lease, hand over) and when it wakes, from what the last
//! duty found and the time now. The driver (`usecase::follow`) performs one duty at a time and feeds back what it
//! found; it owns no timer of its own, as a controller returns when to look again instead of sleeping in place.
//!
//! Times are milliseconds on the caller's clock (the lease's wall clock), so that a successor carries on with its
//! predecessor's schedule from the lease alone.

use std::time::Duration;

use super::pacing::{follower_reads_per_s, full_reconcile_fits, next_read, Pacing, Progress, TrafficShift};
use super::record::Census;

/// The follower's own full reconcile (membership, test route): a safety net, since membership changes while
/// traffic shifts come with ECS task events and the scheduled sweep.
pub const FULL_RECONCILE_EVERY: Duration = Duration::from_secs(300);
/// How often a follower whose private side mirrors a settled public route asks whether the deployment is over.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// The lease's heartbeat (a lease goes stale after 5 s).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// One thing the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// Read the public production route and mirror it if it moved; `full`: a full reconcile instead.
    Read { full: bool },
    /// Write this follower's heartbeat to the installation's census.
    CountIn,
    /// Ask whether the deployment is over (the private side mirrors a settled public route).
    CheckOver,
    /// Renew the lease, saying whether a successor is being started.
    Renew { handover: bool },
    /// Flag the lease for hand-over, leave the census and start a successor.
    HandOver,
}

/// What the driver found doing the last duty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Found {
    /// A read and its mirror, done.
    Read {
        /// The public route differs from the previous read.
        moved: bool,
        /// There was a previous read to differ from.
        seen_before: bool,
        /// The public route sends everything to one target group.
        settled: bool,
        /// The private side mirrors what was read (false: the move was held back, to be mirrored next).
        mirrored: bool,
    },
    /// The read failed transiently (throttled past the retries, a 5xx).
    ReadFailed,
    /// The census counts this many followers now (itself included).
    Followers(usize),
    /// Nothing that changes the schedule (the census unchanged or unwritten, a renewal kept the lease, a hand-over
    /// started).
    Nothing,
    /// The deployment is over, the lease is another's, or a read outlasted the budget: the follower stops.
    Done,
}

/// What the follower does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Do(Duty),
    /// Nothing is due before this time.
    SleepUntil(u64),
    /// The follower is done: finished, or too near its deadline to do anything more (the successor carries on).
    Stop,
}

/// What one step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub next: Next,
    /// A move seen and mirrored by the read just fed back: the private weights lagged at most this long (from the
    /// read that had not yet seen it to the write now done).
    pub followed_move: Option<Duration>,
}

/// The follower's schedule.
#[derive(Debug, Clone)]
pub struct Follower {
    shift: TrafficShift,
    installation_per_s: f64,
    pacing: Pacing,
    share_per_s: f64,
    started: u64,
    deadline: u64,
    handover_at: u64,
    /// The earliest moment the weights can have last moved (the schedule's anchor).
    last_move: Option<u64>,
    /// When the previous read was made, and when the one under way was.
    last_read_at: Option<u64>,
    reading_since: Option<u64>,
    read_full: bool,
    progress: Progress,
    failures: u32,
    mirrored: bool,
    handing_over: bool,
    next_read: u64,
    next_full: u64,
    next_status: u64,
    next_beat: u64,
    next_census: Option<u64>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Follower {
    /// A follower started at `now` that must be done by `deadline`, reading at the followers' whole rate
    /// (`installation_per_s × 1.5`) until the census says how many share it. `last_move`: when the weights last
    /// moved, carried over from a predecessor's lease.
    pub fn new(shift: TrafficShift, installation_per_s: f64, now: u64, deadline: u64, last_move: Option<u64>) -> Self {
        let remaining = deadline.saturating_sub(now);
        Self {
            shift,
            installation_per_s,
            pacing: Pacing::default(),
            share_per_s: follower_reads_per_s(installation_per_s, 1),
            started: now,
            deadline,
            handover_at: deadline.saturating_sub((remaining / 4).min(30_000)),
            last_move,
            last_read_at: None,
            reading_since: None,
            read_full: false,
            progress: Progress::default(),
            failures: 0,
            mirrored: false,
            handing_over: false,
            next_read: now,
            next_full: now + ms(FULL_RECONCILE_EVERY),
            next_status: now + ms(STATUS_EVERY),
            next_beat: now + ms(HEARTBEAT_EVERY),
            // Counted in right after the first read, so that the first read is not delayed by it.
            next_census: Some(now),
        }
    }

    /// When the weights last moved, as the lease carries it to a successor.
    pub fn last_move(&self) -> Option<u64> {
        self.last_move
    }

    /// When a read under way must have answered: past it the budget is gone.
    pub fn read_by(&self) -> u64 {
        self.deadline.saturating_sub(ms(self.pacing.fast))
    }

    /// Takes what the last duty found at `now`, and says what comes next.
    pub fn step(&mut self, found: Found, now: u64) -> Step {
        let mut followed_move = None;
        match found {
            Found::Done => return Step { next: Next::Stop, followed_move },
            Found::Read { moved, seen_before, settled, mirrored } => {
                let read_at = self.reading_since.take().unwrap_or(now);
                self.failures = 0;
                self.mirrored = mirrored;
                if moved && seen_before && mirrored {
                    followed_move = self.last_read_at.map(|before| Duration::from_millis(now.saturating_sub(before)));
                }
                // Anchored on the earliest moment the move can have happened, so that a move seen late never
                // delays the fast reads around the next one: the read before it, or, for a route already split at
                // the first read, the follower's start (the gate reported just before AllowTraffic began).
                let first_split = !seen_before && self.last_move.is_none() && !settled;
                if (moved && seen_before) || first_split {
                    self.last_move =
                        Some(if first_split { self.started } else { self.last_read_at.unwrap_or(read_at) });
                }
                self.last_read_at = Some(read_at);
                if self.read_full {
                    self.next_full = now + ms(FULL_RECONCILE_EVERY);
                }
                self.progress = Progress {
                    since_start: Duration::from_millis(now.saturating_sub(self.started)),
                    since_last_move: self.last_move.map(|m| Duration::from_millis(now.saturating_sub(m))),
                    settled,
                };
                // A held-back move is tried again at the next fast read, not when the public side moves again.
                let wait =
                    if mirrored { next_read(&self.shift, &self.progress, &self.pacing) } else { self.pacing.fast };
                self.next_read = now + ms(wait);
            }
            Found::ReadFailed => {
                self.reading_since = None;
                // The next read comes later the more failed in a row: reading as often would keep the account's
                // bucket dry for everyone.
                self.failures += 1;
                self.next_read = now + ms(self.pacing.after_failures(self.failures));
            }
            Found::Followers(n) => {
                self.share_per_s = follower_reads_per_s(self.installation_per_s, n);
                self.pacing = Pacing::default().sharing(self.share_per_s);
            }
            Found::Nothing => {}
        }
        Step { next: self.due(now), followed_move }
    }

    /// The first duty due at `now`, in the order the follower has always taken them, or when the next one is.
    fn due(&mut self, now: u64) -> Next {
        if now >= self.next_read {
            let full = now >= self.next_full && full_reconcile_fits(&self.shift, &self.progress, self.share_per_s);
            self.reading_since = Some(now);
            self.read_full = full;
            // Not due again until what it finds is fed back.
            self.next_read = u64::MAX;
            return Next::Do(Duty::Read { full });
        }
        if let Some(at) = self.next_census.filter(|at| now >= *at) {
            self.next_census = Some(now.max(at) + Census::BEAT_MS);
            return Next::Do(Duty::CountIn);
        }
        if now >= self.next_status {
            self.next_status = now + ms(STATUS_EVERY);
            if self.mirrored {
                return Next::Do(Duty::CheckOver);
            }
        }
        if now >= self.next_beat {
            self.next_beat = now + ms(HEARTBEAT_EVERY);
            return Next::Do(Duty::Renew { handover: self.handing_over });
        }
        if !self.handing_over && now >= self.handover_at {
            // The lease is flagged before the successor starts (so that it finds the lease open to take), and
            // this follower leaves the census first (so that the successor does not count it and read at half
            // its share).
            self.handing_over = true;
            self.next_census = None;
            self.next_beat = now + ms(HEARTBEAT_EVERY);
            return Next::Do(Duty::HandOver);
        }
        let wake = [Some(self.next_read), self.next_census, Some(self.next_status), Some(self.next_beat)]
            .into_iter()
            .flatten()
            .chain((!self.handing_over).then_some(self.handover_at))
            .min()
            .unwrap_or(self.deadline);
        if self.deadline <= wake.max(now) + ms(self.pacing.fast) {
            return Next::Stop;
        }
        Next::SleepUntil(wake)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MIN: u64 = 60_000;

    /// What a follower did on a simulated clock.
    #[derive(Debug, Default)]
    struct Trace {
        reads: Vec<(u64, bool)>,
        /// Per public move, how long after it the first read saw it.
        lags: Vec<u64>,
        reported_lags: Vec<Duration>,
        renewals: Vec<u64>,
        census: Vec<u64>,
        checks: Vec<u64>,
        handover: Vec<u64>,
        stopped: Option<u64>,
    }

    /// The world a follower is played against: the public weights move at `moves`; a read answers `read_ms`
    /// after it starts; the reads numbered in `failing` fail; the deployment is over (the check says so) from
    /// `over_at`; the census counts `followers`.
    struct World {
        moves: Vec<u64>,
        read_ms: u64,
        failing: Vec<usize>,
        over_at: u64,
        followers: usize,
    }

    fn play(world: &World, mut f: Follower, mut now: u64) -> Trace {
        let mut trace = Trace::default();
        let mut found = Found::Nothing;
        let mut seen_moves: Option<usize> = None;
        // The moves made before the follower started are its predecessor's (or none): not this one's to see.
        let known = world.moves.iter().filter(|m| **m < now).count();
        for _ in 0..200_000 {
            let step = f.step(found, now);
            trace.reported_lags.extend(step.followed_move);
            found = match step.next {
                Next::Stop => {
                    trace.stopped = Some(now);
                    return trace;
                }
                Next::SleepUntil(at) => {
                    assert!(at > now, "a sleep goes forward: {at} at {now}");
                    now = at;
                    Found::Nothing
                }
                Next::Do(Duty::Read { full }) => {
                    let i = trace.reads.len();
                    trace.reads.push((now, full));
                    let happened = world.moves.iter().filter(|m| **m <= now).count();
                    now += world.read_ms;
                    if world.failing.contains(&i) {
                        Found::ReadFailed
                    } else {
                        let before = seen_moves.replace(happened);
                        if happened > before.unwrap_or(known) {
                            trace.lags.push(now - world.read_ms - world.moves[happened - 1]);
                        }
                        Found::Read {
                            moved: before.is_some_and(|b| b != happened),
                            seen_before: before.is_some(),
                            settled: happened == 0 || happened == world.moves.len(),
                            mirrored: true,
                        }
                    }
                }
                Next::Do(Duty::CountIn) => {
                    trace.census.push(now);
                    Found::Followers(world.followers)
                }
                Next::Do(Duty::CheckOver) => {
                    trace.checks.push(now);
                    if now >= world.over_at {
                        Found::Done
                    } else {
                        Found::Nothing
                    }
                }
                Next::Do(Duty::Renew { .. }) => {
                    trace.renewals.push(now);
                    Found::Nothing
                }
                Next::Do(Duty::HandOver) => {
                    trace.handover.push(now);
                    trace.renewals.push(now);
                    Found::Nothing
                }
            };
        }
        panic!("the follower neither stopped nor slept")
    }

    /// A deployment's moves: the first `first` ms after the follower starts (AllowTraffic begins right after the
    /// gate), the others every interval until green has everything.
    fn moves(shift: &TrafficShift, first: u64) -> Vec<u64> {
        match shift {
            TrafficShift::Canary { interval, .. } => vec![first, first + ms(*interval)],
            TrafficShift::Linear { percentage, interval } => {
                (0..100u64.div_ceil(u64::from(*percentage))).map(|k| first + k * ms(*interval)).collect()
            }
            TrafficShift::AllAtOnce | TrafficShift::Unknown => vec![first],
        }
    }

    fn shifts() -> impl Strategy<Value = TrafficShift> {
        prop_oneof![
            (1u64..=30, prop::sample::select(vec![10u32, 20, 50]))
                .prop_map(|(m, p)| TrafficShift::Canary { percentage: p, interval: Duration::from_secs(m * 60) }),
            (1u64..=10, prop::sample::select(vec![10u32, 20, 25, 33]))
                .prop_map(|(m, p)| TrafficShift::Linear { percentage: p, interval: Duration::from_secs(m * 60) }),
            Just(TrafficShift::AllAtOnce),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Over canary, linear and all-at-once configurations, alone or among twenty followers: every move is seen
        /// within one fast read of happening (plus the read), the lease is renewed before it goes stale, the
        /// census is written every beat, the follower stops when the deployment is over, and it reads well under
        /// one a second on average.
        #[test]
        fn every_move_is_seen_within_a_fast_read_and_the_lease_stays_live(
            shift in shifts(),
            first in 0u64..10_000,
            read_ms in 20u64..400,
            followers in 1usize..=20,
            per_s in prop::sample::select(vec![0.5f64, 2.0, 5.0]),
        ) {
            let moves = moves(&shift, first);
            let over_at = moves[moves.len() - 1] + 20_000;
            let world = World { moves: moves.clone(), read_ms, failing: vec![], over_at, followers };
            let start = 1_000_000;
            let shifted = |t: &u64| start + t;
            let world = World { moves: moves.iter().map(shifted).collect(), over_at: start + over_at, ..world };
            let trace = play(&world, Follower::new(shift, per_s, start, start + 15 * MIN + over_at, None), start);
            prop_assert_eq!(trace.lags.len(), moves.len(), "every move seen: {:?}", trace.lags);
            let fast = ms(Pacing::default().fast);
            // Read fast around a move: the read that sees it starts at most a fast pause after the one before ended.
            prop_assert!(trace.lags.iter().all(|l| *l <= fast + read_ms), "lags {:?}", trace.lags);
            // Every move after the first is reported with the time from the read before it to its mirror.
            // (A move the first read already finds is the baseline, not a move.)
            prop_assert_eq!(trace.reported_lags.len(), moves.iter().filter(|m| **m > 0).count());
            prop_assert!(trace.reported_lags.iter().all(|l| ms(*l) <= fast + 2 * read_ms), "{:?}", trace.reported_lags);
            let stopped = trace.stopped.unwrap_or(u64::MAX);
            prop_assert!(stopped >= world.over_at && stopped <= world.over_at + ms(STATUS_EVERY) + 2 * read_ms,
                "stopped at {stopped}, over at {}", world.over_at);
            let mut beats = vec![start];
            beats.extend(&trace.renewals);
            prop_assert!(beats.windows(2).all(|w| w[1] - w[0] <= ms(HEARTBEAT_EVERY) + read_ms),
                "renewals {:?}", beats);
            prop_assert!(trace.census.windows(2).all(|w| w[1] - w[0] <= Census::BEAT_MS + read_ms));
            prop_assert!(trace.handover.is_empty());
            let reads_per_s = trace.reads.len() as f64 * 1000.0 / (stopped - start) as f64;
            if shift.interval().is_none() {
                // One move, read fast around it and at the unsure pace until AfterAllowTraffic is due.
                prop_assert!(trace.reads.len() <= 100, "{} reads for one move", trace.reads.len());
            } else {
                prop_assert!(reads_per_s < 1.0, "{reads_per_s} reads a second");
            }
            if shift.interval().is_some_and(|i| i >= Duration::from_secs(300)) {
                prop_assert!(reads_per_s < 0.5, "{reads_per_s} reads a second over a {shift:?}");
            }
            // A full reconcile never runs within the lead before a predicted move (it would spend the reads the
            // fast ones need), and never more often than its period.
            let fulls: Vec<u64> = trace.reads.iter().filter(|r| r.1).map(|r| r.0).collect();
            prop_assert!(fulls.windows(2).all(|w| w[1] - w[0] >= ms(FULL_RECONCILE_EVERY)));
            for at in fulls {
                prop_assert!(world.moves.iter().all(|m| *m <= at || *m - at > ms(Pacing::default().lead)),
                    "a full reconcile at {at} just before a move {:?}", world.moves);
            }
        }

        /// Reads that fail are tried again later the more fail in a row (never sooner than the unsure pace, never
        /// later than the slow one), and a read that works again resets the back-off.
        #[test]
        fn failed_reads_back_off_and_recover(
            fails in 1usize..12,
            from in 0usize..5,
        ) {
            let shift = TrafficShift::Canary { percentage: 10, interval: Duration::from_secs(300) };
            let start = 5_000_000;
            let world = World {
                moves: vec![start + 200_000, start + 500_000],
                read_ms: 50,
                // A run of failures, then, after five good reads, one more.
                failing: (from..from + fails).chain([from + fails + 5]).collect(),
                over_at: start + 520_000,
                followers: 1,
            };
            let trace = play(&world, Follower::new(shift, 2.0, start, start + 15 * MIN, None), start);
            let p = Pacing::default();
            let gaps: Vec<u64> = trace.reads.windows(2).map(|w| w[1].0 - w[0].0 - world.read_ms).collect();
            for k in 0..fails {
                let gap = gaps[from + k];
                prop_assert!(gap >= ms(p.unsure) && gap <= ms(p.slow), "gap {gap} after {} failures", k + 1);
                if k > 0 {
                    prop_assert!(gap >= gaps[from + k - 1], "backing off: {gaps:?}");
                }
            }
            // Reads that work again reset the back-off: the next failure waits the unsure pace, not more.
            prop_assert_eq!(gaps[from + fails + 5], ms(p.unsure), "{:?}", gaps);
            prop_assert_eq!(trace.lags.len(), 2, "both moves seen once the reads work: {:?}", trace.lags);
        }

        /// A follower near its deadline hands over once, keeps renewing with the hand-over flag until its
        /// successor takes the lease, and stops before the deadline; the successor, carrying the last move from
        /// the lease, reads fast around the next predicted one.
        #[test]
        fn a_follower_hands_over_and_its_successor_keeps_the_schedule(
            minutes in 2u64..=10,
            budget_s in 60u64..900,
            read_ms in 20u64..300,
        ) {
            let interval = minutes * MIN;
            let shift = TrafficShift::Linear { percentage: 10, interval: Duration::from_millis(interval) };
            let start = 9_000_000;
            let moves: Vec<u64> = (0..10).map(|k| start + 2_000 + k * interval).collect();
            let over_at = moves[9] + 20_000;
            let world = World { moves: moves.clone(), read_ms, failing: vec![], over_at, followers: 1 };
            let deadline = start + budget_s * 1000;
            let trace = play(&world, Follower::new(shift, 2.0, start, deadline, None), start);
            if deadline < over_at {
                prop_assert_eq!(trace.handover.len(), 1);
                let handover_at = deadline - (budget_s * 1000 / 4).min(30_000);
                prop_assert!(trace.handover[0] >= handover_at && trace.handover[0] <= handover_at + read_ms + 1000);
                prop_assert!(trace.census.iter().all(|c| *c <= trace.handover[0]), "no census after hand-over");
                let stopped = trace.stopped.unwrap_or(u64::MAX);
                prop_assert!(stopped < deadline, "stopped at {stopped}, deadline {deadline}");
                // The successor starts when the predecessor hands over, with the lease's last move.
                let successor_start = trace.handover[0] + 500;
                // What the lease says when the successor takes it: the last move read before the hand-over.
                let last_read = trace.reads.iter().map(|r| r.0).filter(|at| *at < trace.handover[0]).max().unwrap_or(0);
                let last_move = moves.iter().copied().filter(|m| *m <= last_read).max();
                let next = World { moves: moves.clone(), ..world };
                let later = play(&next, Follower::new(shift, 2.0, successor_start, successor_start + 900_000,
                    last_move.map(|m| m - read_ms.min(m))), successor_start);
                // Within the one-second target: at the fast pace around the moves the lease predicts, at the unsure
                // pace after a move made during the hand-over itself (the lease cannot tell the successor of it).
                let unsure = ms(Pacing::default().unsure);
                prop_assert!(later.lags.iter().all(|l| *l <= unsure + read_ms), "the successor's lags {:?}", later.lags);
            } else {
                prop_assert!(trace.handover.is_empty());
            }
        }
    }

    #[test]
    fn a_census_of_many_slows_the_reads_between_moves_but_not_around_them() {
        let shift = TrafficShift::Canary { percentage: 10, interval: Duration::from_secs(600) };
        let start = 0;
        let world = |followers| World {
            moves: vec![3_000, 603_000],
            read_ms: 50,
            failing: vec![],
            over_at: 640_000,
            followers,
        };
        let alone = play(&world(1), Follower::new(shift, 2.0, start, 1_800_000, None), start);
        let crowd = play(&world(20), Follower::new(shift, 2.0, start, 1_800_000, None), start);
        // Between the moves (from 30 s after the first to 30 s before the second), a follower among twenty reads
        // every 15 s (a third of its 0.2 a second), one alone every 10 s.
        let between = |t: &Trace| {
            let r: Vec<u64> = t.reads.iter().map(|r| r.0).filter(|at| (33_000..573_000).contains(at)).collect();
            r.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(0)
        };
        assert!(between(&alone) >= 10_000 && between(&crowd) >= 15_000, "{} {}", between(&alone), between(&crowd));
        assert!(crowd.reads.len() < alone.reads.len(), "{} against {}", crowd.reads.len(), alone.reads.len());
        assert_eq!(alone.lags.len(), 2);
        assert_eq!(crowd.lags.len(), 2);
        assert!(crowd.lags.iter().all(|l| *l <= 350), "{:?}", crowd.lags);
    }
}
