//! Pacing: when the follower reads the public production listener next. ELB's `Describe*` budget is one bucket
//! per account and region, shared with everything else the customer runs, so the
//! follower cannot poll at a fixed fast rate. CodeDeploy's deployment configuration says when the public weights
//! will move (canary: once more after its interval; linear: every interval until green has everything): the
//! follower reads fast only around those moments and slowly otherwise. Moves no schedule predicts (a stop, a
//! rollback) are covered by the slow read and by CodeDeploy's state-change events, which wake the reconciler.
//!
//! Pure: durations in, a duration out; the follower owns the clock.

use std::time::Duration;

/// How CodeDeploy shifts production traffic in a deployment (its configuration's `trafficRoutingConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficShift {
    /// Everything at once: one move, at the start of AllowTraffic.
    AllAtOnce,
    /// `percentage` first, then the rest after `interval`.
    Canary { percentage: u32, interval: Duration },
    /// `percentage` more every `interval` until green has everything.
    Linear { percentage: u32, interval: Duration },
    /// The configuration could not be read: no move can be predicted.
    Unknown,
}

impl TrafficShift {
    /// The time between two moves, when the configuration has one.
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Self::Canary { interval, .. } | Self::Linear { interval, .. } => Some(*interval),
            Self::AllAtOnce | Self::Unknown => None,
        }
    }

    /// The same shift with CodeDeploy's minutes played as `minute` (a minute is 60 s on AWS; the rehearsal plays
    /// it faster).
    pub fn with_minute(self, minute: Duration) -> Self {
        let scale = |d: Duration| minute.mul_f64(d.as_secs_f64() / 60.0);
        match self {
            Self::Canary { percentage, interval } => Self::Canary { percentage, interval: scale(interval) },
            Self::Linear { percentage, interval } => Self::Linear { percentage, interval: scale(interval) },
            other => other,
        }
    }
}

/// The follower's reading rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Around a predicted move: a move is seen at most this long after it happens.
    pub fast: Duration,
    /// Between predicted moves, and once the shift is complete.
    pub slow: Duration,
    /// When a move is due but late, or cannot be predicted: still inside the one-second lag target.
    pub unsure: Duration,
    /// How long before a predicted move the fast reads start (CodeDeploy's clock is not ours).
    pub lead: Duration,
    /// How long after a predicted move the fast reads go on before the move counts as late.
    pub grace: Duration,
    /// How long after the follower starts the first move (AllowTraffic's start) is awaited with fast reads.
    pub first_move_window: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            fast: Duration::from_millis(300),
            // Moves no schedule predicts (a stop, a rollback) also wake the reconciler through CodeDeploy's
            // state-change events: the slow read is a safety net, not the way they are seen.
            slow: Duration::from_secs(10),
            unsure: Duration::from_millis(750),
            lead: Duration::from_secs(1),
            grace: Duration::from_secs(5),
            first_move_window: Duration::from_secs(15),
        }
    }
}

impl Pacing {
    /// The same pacing for a follower allowed `per_s` reads a second (its share when many follow at once): the
    /// slow reads between moves spend at most a third of it, so that the tokens for the fast reads around the next
    /// move are there when it comes. Alone or among a few, nothing changes.
    pub fn sharing(self, per_s: f64) -> Self {
        let slow = Duration::from_secs_f64((3.0 / per_s.max(0.01)).min(60.0));
        Self { slow: self.slow.max(slow), ..self }
    }

    /// When to read again after `failures` reads in a row failed (throttled, or a 5xx that outlasted the SDK's
    /// retries): the unsure pace, doubling up to the slow one. Reading as often as before would only keep the
    /// account's bucket dry for everyone.
    pub fn after_failures(&self, failures: u32) -> Duration {
        let doubled = self.unsure.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.slow).max(self.unsure)
    }
}

/// What the follower has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Since the follower started (or took the lease over).
    pub since_start: Duration,
    /// Since the public weights last moved, when they have moved.
    pub since_last_move: Option<Duration>,
    /// The public route sends everything to one target group now.
    pub settled: bool,
}

/// How long to wait before the next read of the public production listener.
pub fn next_read(shift: &TrafficShift, progress: &Progress, pacing: &Pacing) -> Duration {
    let Some(since_move) = progress.since_last_move else {
        // AllowTraffic starts right after the gate that started the follower: its first move is imminent.
        return if progress.since_start < pacing.first_move_window { pacing.fast } else { pacing.unsure };
    };
    if progress.settled {
        // The shift is complete (or was reversed): no move is scheduled any more. Right after it, until
        // AfterAllowTraffic has verified it (CodeDeploy invokes it seconds later), an alarm may still put the
        // public side back: that move is read within the lag target too.
        return if since_move < pacing.first_move_window { pacing.unsure } else { pacing.slow };
    }
    let Some(interval) = shift.interval() else {
        return pacing.unsure;
    };
    let fast_from = interval.saturating_sub(pacing.lead);
    if since_move < fast_from {
        return (fast_from - since_move).min(pacing.slow).max(pacing.fast);
    }
    if since_move <= interval + pacing.grace {
        pacing.fast
    } else {
        pacing.unsure
    }
}

/// Whether the follower's periodic full reconcile (nine reads) may run now: only where no move is near, right
/// after one or once the shift is over, and only if the follower's share of the budget (`per_s`) earns back
/// those nine reads and the ones around the next move before it comes, so that it never spends the tokens those
/// reads need. One of many followers on a one-minute schedule leaves it to the shift's end (membership changes
/// meanwhile come with the ECS task events).
pub fn full_reconcile_fits(shift: &TrafficShift, progress: &Progress, per_s: f64) -> bool {
    if progress.settled {
        return true;
    }
    match (shift.interval(), progress.since_last_move) {
        (Some(interval), Some(since_move)) if since_move < interval / 2 => {
            let before_next = interval.saturating_sub(since_move + Pacing::default().lead);
            per_s * before_next.as_secs_f64() >= (READS_PER_RECONCILE + READS_AROUND_A_MOVE) as f64
        }
        (Some(_), _) => false,
        (None, _) => true,
    }
}

/// What a follower reads around one move: the fast reads from `lead` before it until it is seen a little late,
/// and the mirror of the move (the private route and the groups' health).
pub const READS_AROUND_A_MOVE: usize = 10;

/// ELB `Describe*` calls one full reconcile of a one-side binding with nothing to change is sized at: the
/// preflight (the target groups in one call, the private routes in one call per kind: listeners, rules), the public
/// production and test listeners in one call, four target groups' health. That is 7 or 8; the 9 leaves room for
/// the public route read once more when the reads took longer than half a second.
pub const READS_PER_RECONCILE: usize = 9;

/// How often the scheduled sweep checks every binding, when the read budget allows: the safety net's period, in
/// minutes (which the rehearsal plays faster, as it plays CodeDeploy's).
pub const CHECK_EVERY_MINUTES: u32 = 15;

/// [`CHECK_EVERY_MINUTES`] on AWS's clock.
pub const CHECK_EVERY: Duration = Duration::from_secs(CHECK_EVERY_MINUTES as u64 * 60);

/// How many ARNs the adapter names in one `DescribeTargetGroups`, `DescribeListeners` or `DescribeRules` call
/// (`DescribeTags` documents 20 at most; the others take lists whose bound is not documented, and 20 keeps every
/// answer on one page).
pub const ARNS_PER_CALL: usize = 20;

/// ELB `Describe*` calls the sweep spends on one idle one-side binding: its four target groups' health (one call
/// each, `DescribeTargetHealth` takes one group), and its share of the reads the sweep makes for all its bindings
/// at once (four target groups, two public listeners and two private routes, `ARNS_PER_CALL` to a call).
pub const READS_PER_LOOK: f64 = 4.0 + 8.0 / ARNS_PER_CALL as f64;

/// How far above the installation's average budget `B` a process may read while it works: `1.5 B`. The functions
/// are idle most of the time, so the average holds while one deployment is followed or one binding reconciled.
pub const PROCESS_SHARE: f64 = 1.5;

/// What the installation's followers read together, however many follow at once: `2 B`. A move no follower can
/// predict (a canary's step later than its interval, the first step after a long gate) is seen at the follower's
/// own rate; eight deployments moving together so need 1.25 reads a second each to see every step within a second.
pub const FOLLOWERS_SHARE: f64 = 2.0;

/// The read rate of one follower when `live` followers (itself included) follow at once: together they read at
/// most [`FOLLOWERS_SHARE`] `B` a second, whatever the number of deployments, so that twenty deployments at once
/// cost the account what one does, and what grows is each follower's lag, not the throttling of everyone else.
pub fn follower_reads_per_s(installation_per_s: f64, live: usize) -> f64 {
    installation_per_s * FOLLOWERS_SHARE / live.max(1) as f64
}

/// How many of `n` bindings one scheduled run checks: enough that every binding is checked every
/// [`CHECK_EVERY_MINUTES`] of `minute`, as many as `reads_per_s` (the installation's budget) affords at most, and
/// at least one (a safety net that checks nothing is none). The sweep waits its turn in the installation's read
/// lane, in which the deployments' reads are counted first, so it spends what they leave of the budget.
pub fn sweep_per_run(n: usize, reads_per_s: f64, schedule: Duration, minute: Duration) -> usize {
    let check_every = minute * CHECK_EVERY_MINUTES;
    let runs_per_check = (check_every.as_secs_f64() / schedule.as_secs_f64().max(0.001)).max(1.0);
    let wanted = (n as f64 / runs_per_check).ceil() as usize;
    let affordable = (reads_per_s * schedule.as_secs_f64() / READS_PER_LOOK).floor() as usize;
    wanted.min(affordable).max(1)
}

/// How long the sweep waits between two bindings of a run of `per_run`, so that its reads are spread over the
/// schedule's period rather than burst at its start.
pub fn sweep_spacing(schedule: Duration, per_run: usize) -> Duration {
    schedule / u32::try_from(per_run.max(1)).unwrap_or(u32::MAX)
}

/// The bindings (indices into the configured list) scheduled run number `slot` checks: consecutive runs take
/// consecutive slices, so every binding is checked once every `ceil(n / per_run)` runs, and each run costs the
/// same whatever the fleet's size.
pub fn sweep_slice(n: usize, per_run: usize, slot: u64) -> std::ops::Range<usize> {
    if n == 0 {
        return 0..0;
    }
    let per_run = per_run.clamp(1, n);
    let runs = n.div_ceil(per_run) as u64;
    let start = (slot % runs) as usize * per_run;
    start..(start + per_run).min(n)
}

/// The bindings scheduled run number `slot` checks, in order: those due (whose check stepped aside from a busy
/// read lane, indices into the same list) first, then the slot's slice without them. A due binding is checked at
/// the next run rather than when the rotation comes back to it; the slice is kept whole, so that no binding's
/// turn is taken by another's. Indices out of range are ignored.
pub fn sweep_order(n: usize, per_run: usize, slot: u64, due: &[usize]) -> Vec<usize> {
    let mut out: Vec<usize> = due.iter().copied().filter(|&i| i < n).collect();
    out.sort_unstable();
    out.dedup();
    let slice = sweep_slice(n, per_run, slot).filter(|i| !out.contains(i)).collect::<Vec<_>>();
    out.extend(slice);
    out
}

/// A client-side token bucket: what one process lets itself send to ELB's `Describe*` actions, so that a burst
/// of concurrent reads (a reconcile reads six at once) waits its turn here instead of draining the account's
/// bucket, which every other tool in the account shares, and being retried into it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    capacity: f64,
    per_s: f64,
    tokens: f64,
    at: Duration,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilled at `per_s`, as of `now` (any monotonic origin).
    pub fn new(capacity: f64, per_s: f64, now: Duration) -> Self {
        Self { capacity: capacity.max(1.0), per_s: per_s.max(0.01), tokens: capacity.max(1.0), at: now }
    }

    /// Changes the refill rate from `now` on (tokens earned so far are kept, up to the capacity).
    pub fn set_rate(&mut self, per_s: f64, now: Duration) {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.capacity);
        self.at = self.at.max(now);
        self.per_s = per_s.max(0.01);
    }

    /// Lets nothing through before `now + pause` (ELB has throttled this process: its next reads would only be
    /// throttled too, and each one retried drains the account's bucket for everyone else). Waits already handed
    /// out keep their turn.
    pub fn hold(&mut self, pause: Duration, now: Duration) {
        self.set_rate(self.per_s, now);
        self.tokens = self.tokens.min(0.0) - pause.as_secs_f64() * self.per_s;
    }

    /// Takes one token at `now`: `None` when it may go at once, else how long to wait before it may. A caller
    /// told to wait has its token reserved (the bucket goes negative), so that waiters are served in order.
    pub fn take(&mut self, now: Duration) -> Option<Duration> {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.capacity);
        self.at = self.at.max(now);
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.per_s))
    }
}

/// What a process spent of the account's ELB budget during one invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ElbSpend {
    /// Every attempt that reached ELB (a retried call counts each attempt: each one costs a token).
    pub calls: u64,
    /// Attempts ELB refused with a throttling error.
    pub throttles: u64,
    /// How long the process's reads waited for their turn in the installation's read lane, in ms.
    pub lane_wait_ms: u64,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    /// Plays a whole shift on a simulated clock: the public weights move at `moves` (offsets from the follower's
    /// start); returns the read times and, per move, how long after it the first read saw it.
    fn play(
        shift: &TrafficShift,
        moves: &[Duration],
        settled_after: usize,
        end: Duration,
    ) -> (Vec<Duration>, Vec<Duration>) {
        let pacing = Pacing::default();
        let (mut now, mut reads, mut lags) = (Duration::ZERO, Vec::new(), Vec::new());
        let mut seen = 0usize;
        let mut last_seen_at = None;
        while now < end {
            reads.push(now);
            let happened = moves.iter().filter(|m| **m <= now).count();
            if happened > seen {
                lags.push(now - moves[happened - 1]);
                seen = happened;
                last_seen_at = Some(now);
            }
            let progress = Progress {
                since_start: now,
                since_last_move: last_seen_at.map(|t| now - t),
                settled: seen >= settled_after,
            };
            now += next_read(shift, &progress, &pacing);
        }
        (reads, lags)
    }

    fn per_second(reads: &[Duration], over: Duration) -> f64 {
        reads.len() as f64 / over.as_secs_f64()
    }

    #[test]
    fn a_real_canary_costs_well_under_one_read_per_second_and_is_seen_within_a_fast_tick() {
        let shift = TrafficShift::Canary { percentage: 10, interval: 5 * MIN };
        let moves = [Duration::from_secs(3), Duration::from_secs(3) + 5 * MIN];
        let end = moves[1] + 2 * MIN;
        let (reads, lags) = play(&shift, &moves, 2, end);
        assert_eq!(lags.len(), 2);
        assert!(lags.iter().all(|l| *l <= Pacing::default().fast), "{lags:?}");
        assert!(per_second(&reads, end) < 0.35, "{} reads/s", per_second(&reads, end));
    }

    #[test]
    fn a_real_linear_shift_is_followed_step_by_step() {
        let shift = TrafficShift::Linear { percentage: 10, interval: MIN };
        let moves: Vec<Duration> = (0..10).map(|k| Duration::from_secs(2) + MIN * k).collect();
        let end = moves[9] + MIN;
        let (reads, lags) = play(&shift, &moves, 10, end);
        assert_eq!(lags.len(), 10);
        assert!(lags.iter().all(|l| *l <= Pacing::default().fast), "{lags:?}");
        assert!(per_second(&reads, end) < 0.5, "{} reads/s", per_second(&reads, end));
    }

    #[test]
    fn a_late_or_unpredictable_move_is_still_seen_within_the_lag_target() {
        let p = Pacing::default();
        let linear = TrafficShift::Linear { percentage: 10, interval: MIN };
        let late = Progress { since_start: 10 * MIN, since_last_move: Some(MIN + p.grace * 2), settled: false };
        assert_eq!(next_read(&linear, &late, &p), p.unsure);
        let unknown = Progress { since_start: 10 * MIN, since_last_move: Some(MIN), settled: false };
        assert_eq!(next_read(&TrafficShift::Unknown, &unknown, &p), p.unsure);
        assert!(p.unsure < Duration::from_secs(1));
        let waiting = Progress { since_start: p.first_move_window * 2, since_last_move: None, settled: false };
        assert_eq!(next_read(&TrafficShift::AllAtOnce, &waiting, &p), p.unsure);
        let just_done = Progress { since_start: MIN, since_last_move: Some(Duration::from_secs(1)), settled: true };
        assert_eq!(next_read(&linear, &just_done, &p), p.unsure, "a rollback right after the last move is seen");
        assert_eq!(next_read(&TrafficShift::AllAtOnce, &just_done, &p), p.unsure);
        let done = Progress { since_last_move: Some(p.first_move_window), ..just_done };
        assert_eq!(next_read(&linear, &done, &p), p.slow);
    }

    /// How long a rotation of `n` bindings takes at `per_run` a run: every binding is checked once in it.
    fn sweep_rotation(n: usize, per_run: usize, schedule: Duration) -> Duration {
        schedule * u32::try_from(n.div_ceil(per_run.max(1)).max(1)).unwrap_or(u32::MAX)
    }

    #[test]
    fn the_sweep_checks_every_binding_every_fifteen_minutes_within_the_budget() {
        // Defaults: 5 reads/s, a schedule every minute.
        let per_run = |n, per_s| sweep_per_run(n, per_s, MIN, MIN);
        assert_eq!(per_run(20, 5.0), 2);
        assert_eq!(per_run(100, 5.0), 7);
        assert_eq!(per_run(1000, 5.0), 67);
        assert!(sweep_rotation(1000, 67, MIN) <= CHECK_EVERY);
        const { assert!(67.0 * READS_PER_LOOK / 60.0 <= 5.0) };
        // Beyond what the budget affords, the rotation grows and the reads do not.
        assert_eq!(per_run(5000, 5.0), 68);
        assert_eq!(sweep_rotation(5000, 68, MIN), 74 * MIN);
        assert_eq!(per_run(5000, 2.0), 27);
        assert_eq!(per_run(0, 5.0), 1);
        assert_eq!(sweep_per_run(3, 0.01, Duration::from_secs(10), MIN), 1);
        // The rehearsal's clock: a minute played as 12 s, the schedule with it, the budget scaled to match.
        let second = Duration::from_secs(12);
        assert_eq!(sweep_per_run(100, 25.0, second, second), 7);
        assert_eq!(sweep_spacing(MIN, 67), Duration::from_secs(60) / 67);
        assert_eq!(sweep_spacing(MIN, 0), MIN);
    }

    proptest! {
        /// Consecutive runs cover every binding exactly once per cycle, and no run takes more than its share.
        #[test]
        fn consecutive_runs_cover_every_binding(n in 0usize..300, per_run in 1usize..20, first in 0u64..1000) {
            let runs = if n == 0 { 1 } else { n.div_ceil(per_run.min(n)) } as u64;
            let mut seen = vec![0u32; n];
            for slot in first..first + runs {
                let r = sweep_slice(n, per_run, slot);
                prop_assert!(r.len() <= per_run);
                for i in r {
                    seen[i] += 1;
                }
            }
            prop_assert!(seen.iter().all(|c| *c == 1), "{seen:?}");
        }

        /// The due bindings come first, once each, and the slot's slice follows whole: nothing is checked twice,
        /// and no binding loses its turn to a due one.
        #[test]
        fn due_bindings_come_first_and_the_slice_follows_whole(
            n in 0usize..60, per_run in 1usize..10, slot in 0u64..100, due in prop::collection::vec(0usize..80, 0..12),
        ) {
            let order = sweep_order(n, per_run, slot, &due);
            let mut wanted: Vec<usize> = due.iter().copied().filter(|&i| i < n).collect();
            wanted.sort_unstable();
            wanted.dedup();
            prop_assert_eq!(&order[..wanted.len()], &wanted[..]);
            let mut unique = order.clone();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(unique.len(), order.len());
            prop_assert!(sweep_slice(n, per_run, slot).all(|i| order.contains(&i)));
            prop_assert!(order.iter().all(|i| *i < n && (wanted.contains(i) || sweep_slice(n, per_run, slot).contains(i))));
        }
    }

    #[test]
    fn a_burst_beyond_the_bucket_waits_its_turn() {
        let mut b = TokenBucket::new(6.0, 3.0, Duration::ZERO);
        let waits: Vec<Option<Duration>> = (0..9).map(|_| b.take(Duration::ZERO)).collect();
        assert!(waits[..6].iter().all(Option::is_none), "{waits:?}");
        // The 7th, 8th and 9th go one third of a second apart.
        let ms: Vec<u128> = waits[6..].iter().map(|w| w.map_or(0, |d| d.as_millis())).collect();
        assert_eq!(ms, vec![333, 666, 1000]);
        // After a quiet second and a half the bucket has refilled (capped at its capacity).
        let mut b = TokenBucket::new(6.0, 3.0, Duration::ZERO);
        for _ in 0..6 {
            b.take(Duration::ZERO);
        }
        assert_eq!(b.take(Duration::from_millis(1500)), None);
    }

    #[test]
    fn a_follower_among_many_reads_slowly_between_moves_and_alone_as_before() {
        let p = Pacing::default();
        assert_eq!(p.sharing(3.0), p, "alone");
        assert_eq!(p.sharing(0.6), p, "one of five");
        assert_eq!(p.sharing(0.15).slow, Duration::from_secs(20), "one of twenty");
        assert_eq!(p.sharing(0.15).fast, p.fast, "the reads around a move keep their pace");
        assert_eq!(p.sharing(0.0).slow, Duration::from_secs(60));
    }

    proptest! {
        /// Between two moves of a canary or linear shift, a full reconcile only fits in the first half, never in
        /// the fast window before the next move.
        #[test]
        fn a_full_reconcile_never_lands_near_a_predicted_move(shift in shifts(), since_s in 0u64..7200, per_s in 0.05f64..40.0) {
            let progress =
                Progress { since_start: Duration::from_secs(since_s), since_last_move: Some(Duration::from_secs(since_s)), settled: false };
            if let Some(interval) = shift.interval() {
                let near = Duration::from_secs(since_s) + Pacing::default().lead >= interval;
                prop_assert!(!(near && full_reconcile_fits(&shift, &progress, per_s)));
            }
        }
    }

    #[test]
    fn a_full_reconcile_waits_for_the_shifts_end_when_the_share_cannot_pay_for_it() {
        let linear = TrafficShift::Linear { percentage: 10, interval: MIN };
        let after_a_move =
            Progress { since_start: 5 * MIN, since_last_move: Some(Duration::from_secs(2)), settled: false };
        assert!(full_reconcile_fits(&linear, &after_a_move, follower_reads_per_s(2.0, 1)), "alone");
        assert!(full_reconcile_fits(&linear, &after_a_move, follower_reads_per_s(2.0, 5)), "one of five");
        assert!(!full_reconcile_fits(&linear, &after_a_move, follower_reads_per_s(2.0, 13)), "one of thirteen");
        let done = Progress { settled: true, ..after_a_move };
        assert!(full_reconcile_fits(&linear, &done, follower_reads_per_s(2.0, 20)), "the shift is over");
        let canary = TrafficShift::Canary { percentage: 10, interval: 5 * MIN };
        assert!(full_reconcile_fits(&canary, &after_a_move, follower_reads_per_s(2.0, 20)), "five minutes pay for it");
    }

    #[test]
    fn failed_reads_slow_the_follower_down_to_its_slow_pace() {
        let p = Pacing::default();
        let waits: Vec<u128> = (0..=7).map(|n| p.after_failures(n).as_millis()).collect();
        assert_eq!(waits, vec![750, 750, 1500, 3000, 6000, 10_000, 10_000, 10_000]);
        assert_eq!(p.after_failures(u32::MAX), p.slow);
    }

    #[test]
    fn a_held_bucket_lets_nothing_through_before_the_pause_is_over() {
        let mut b = TokenBucket::new(9.0, 3.0, Duration::ZERO);
        b.hold(Duration::from_secs(2), Duration::from_secs(10));
        let wait = b.take(Duration::from_secs(10)).map(|d| d.as_millis());
        assert_eq!(wait, Some(2333), "the pause, then the token's own third of a second");
        let mut b = TokenBucket::new(9.0, 3.0, Duration::ZERO);
        b.hold(Duration::from_secs(2), Duration::ZERO);
        assert_eq!(b.take(Duration::from_secs(3)), None, "after the pause the bucket refills as before");
    }

    #[test]
    fn followers_share_one_rate_however_many_follow() {
        for live in [0usize, 1, 2, 5, 20, 100] {
            let each = follower_reads_per_s(2.0, live);
            assert!((each * live.max(1) as f64 - 4.0).abs() < 1e-9, "{live} followers at {each}/s each");
        }
        // A follower told to share keeps what it earned, and earns at the new rate from then on.
        let mut b = TokenBucket::new(9.0, 3.0, Duration::ZERO);
        for _ in 0..9 {
            b.take(Duration::ZERO);
        }
        b.set_rate(follower_reads_per_s(2.0, 20), Duration::from_secs(1));
        assert_eq!(b.take(Duration::from_secs(1)), None, "three tokens earned in the first second");
        b.take(Duration::from_secs(1));
        b.take(Duration::from_secs(1));
        let wait = b.take(Duration::from_secs(1)).map(|d| d.as_millis());
        assert_eq!(wait, Some(5000), "then one read every 5 s");
    }

    proptest! {
        /// Over any stretch of time, what goes through is at most the capacity plus the refill.
        #[test]
        fn a_bucket_never_lets_more_through_than_it_refills(gaps in proptest::collection::vec(0u64..500, 1..200)) {
            let mut b = TokenBucket::new(6.0, 3.0, Duration::ZERO);
            let mut now = Duration::ZERO;
            let mut sent = Vec::new();
            for g in gaps {
                now += Duration::from_millis(g);
                let at = now + b.take(now).unwrap_or_default();
                sent.push(at);
            }
            sent.sort();
            for (i, start) in sent.iter().enumerate() {
                for (j, end) in sent.iter().enumerate().skip(i) {
                    let window = (*end - *start).as_secs_f64();
                    prop_assert!((j - i + 1) as f64 <= 6.0 + 3.0 * window + 1e-6);
                }
            }
        }
    }

    fn shifts() -> impl Strategy<Value = TrafficShift> {
        prop_oneof![
            Just(TrafficShift::AllAtOnce),
            Just(TrafficShift::Unknown),
            (1u32..=99, 1u64..=60)
                .prop_map(|(p, m)| TrafficShift::Canary { percentage: p, interval: Duration::from_secs(m * 60) }),
            (1u32..=50, 1u64..=60)
                .prop_map(|(p, m)| TrafficShift::Linear { percentage: p, interval: Duration::from_secs(m * 60) }),
        ]
    }

    proptest! {
        /// Whatever the configuration and whenever the follower is: the next read is never sooner than a fast
        /// tick (a budget floor) and, unless the shift is complete, never later than a slow one.
        #[test]
        fn the_next_read_is_bounded(shift in shifts(), start in 0u64..7_200_000, since in proptest::option::of(0u64..7_200_000), settled: bool) {
            let p = Pacing::default();
            let progress = Progress {
                since_start: Duration::from_millis(start),
                since_last_move: since.map(Duration::from_millis),
                settled,
            };
            let d = next_read(&shift, &progress, &p);
            prop_assert!(d >= p.fast);
            prop_assert!(d <= p.slow);
        }

        /// A move that comes on schedule (CodeDeploy's clock up to `lead` early or `grace` late) is seen within
        /// one fast tick, and a whole shift averages under one read per second.
        #[test]
        fn moves_on_schedule_are_seen_within_a_fast_tick(
            shift in shifts(),
            first in 0u64..10_000,
            jitter in proptest::collection::vec(-900i64..4_000, 20),
        ) {
            let p = Pacing::default();
            let (steps, interval) = match shift {
                TrafficShift::Canary { interval, .. } => (2usize, interval),
                TrafficShift::Linear { percentage, interval } => (100usize.div_ceil(percentage as usize), interval),
                TrafficShift::AllAtOnce => (1, MIN),
                TrafficShift::Unknown => (1, MIN),
            };
            // Each move comes one interval after the previous one, give or take CodeDeploy's own jitter.
            let mut moves = vec![Duration::from_millis(first)];
            for k in 1..steps {
                let j = jitter[k % jitter.len()];
                let at = moves[k - 1] + interval;
                moves.push(if j < 0 { at - Duration::from_millis(j.unsigned_abs()) } else { at + Duration::from_millis(j as u64) });
            }
            let end = *moves.last().unwrap_or(&Duration::ZERO) + MIN;
            let (reads, lags) = play(&shift, &moves, steps, end);
            prop_assert_eq!(lags.len(), steps);
            for lag in &lags {
                prop_assert!(*lag <= p.fast, "lag {lag:?} over {:?}", p.fast);
            }
            prop_assert!(per_second(&reads, end) <= 1.0, "{} reads/s", per_second(&reads, end));
        }
    }
}
