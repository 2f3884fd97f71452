//! The follower: mirrors a deployment's public weights onto the private side many times a second while
//! CodeDeploy shifts traffic step by step, holding a lease in DynamoDB so that exactly one follower runs per binding,
//! and hands over to a fresh invocation before its Lambda deadline.

use crate::domain::LaneMode;
use crate::reads::ReadPolicy;
use std::borrow::Cow;
use std::time::Duration;

use tokio::time::Instant;

use super::reconcile::{on_every_side, Reconciled};
use super::{Engine, ReadOnce, Shadow, Tracker};
use crate::clock::now_ms;
use crate::config::{Binding, RouteRef};
use crate::domain::follower::{Duty, Follower, Found, Next};
use crate::domain::{follower_reads_per_s, CensusEntry, FollowerLease, Observed, Phase, Route, TrafficShift};
use crate::harness::Budget;
use crate::ports::{
    Coordination, DeploymentGroupFacts, Deployments, FollowRequest, Followers, LoadBalancers, Saved, StateStore,
};
use crate::{Error, Result};

/// What the follower has read of the public route and made the private side mirror.
#[derive(Debug, Default)]
struct Followed {
    /// What the private side was last made to mirror (`None` until then, and after a held-back move).
    mirrored: Option<Route>,
    /// The public route as last read.
    last_read: Option<Route>,
    /// A read made before the loop began (alongside taking the lease), for the first step to use.
    prefetched: Option<Route>,
}

/// This follower's place in the installation's census: how many followed at the last count (0: not counted
/// yet), and the long-gone entries the next write drops.
#[derive(Debug, Default)]
struct Share {
    live: usize,
    forget: Vec<String>,
}

/// How a deployment the follower follows ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    /// AfterAllowTraffic recorded its phase: it checked every side and mirrored membership.
    Verified,
    /// CodeDeploy says it is finished (stopped, rolled back) with no such check on record.
    Unverified,
}

/// What one follower read found.
#[derive(Debug, Clone, Copy)]
struct FollowStep {
    /// The public route differs from the previous read.
    moved: bool,
    /// There was a previous read to differ from (the first read is not a move).
    seen_before: bool,
    /// The public route sends everything to one target group.
    settled: bool,
}

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// The follower's step: mirrors a public production route it has just read onto the private route. One read
    /// of the private route; the targets of the pairs involved only when a private group is about to start
    /// taking traffic (the I4 guard needs their health, and the current groups' to know whether the route serves
    /// now); then the write. Membership and the test route are left to the full reconcile.
    ///
    /// `speculate`: a group has just started taking public traffic, so the private route is about to gain one
    /// too: the targets are read alongside the private route instead of after it, one round trip less.
    ///
    /// The private side's reads wait their turn in the process's bucket; when they took long enough for the
    /// public route to move meanwhile (CodeDeploy's next step, AfterAllowTraffic's flip), the public route is read
    /// again before the write, and a moved one is not written over: the next read mirrors it.
    ///
    /// `at_once`: a group has just started or stopped taking public traffic. Stopped (a rollback or a stop, or the
    /// shift's last step): its tasks may be about to go. Started (a canary's or a linear shift's first step): the
    /// never-dark check reads the groups' health before the write, and those reads waiting their turn at a share
    /// of the budget would hold the step back by seconds when many deployments move together. Either way the
    /// step's reads are neither paced nor held ([`LoadBalancers::at_once`]); a shift makes two such steps.
    async fn mirror_production(
        &self,
        b: &Binding,
        public: &Route,
        read: (&RouteRef, Instant),
        (speculate, at_once): (bool, bool),
        t: &Tracker,
    ) -> Result<Reconciled> {
        let quick;
        let lb = if at_once {
            quick = self.lb.at_once();
            &quick
        } else {
            &self.lb
        };
        let reads = &ReadOnce::new(lb);
        on_every_side(b, |side| async move {
            self.mirror_production_side(&side, public, read, speculate, (lb, reads), t).await
        })
        .await
    }

    async fn mirror_production_side(
        &self,
        b: &Binding,
        public: &Route,
        read: (&RouteRef, Instant),
        speculate: bool,
        (lb, reads): (&Shadow<L>, &ReadOnce<'_, Shadow<L>>),
        t: &Tracker,
    ) -> Result<Reconciled> {
        let mut out = Reconciled { rounds: 1, ..Reconciled::of(b, b.side_label()) };
        let pairs = b.pair_arns();
        let all: Vec<&str> = pairs.iter().flat_map(|(public, private)| [public.as_str(), private.as_str()]).collect();
        let early = async {
            match speculate {
                true => futures_util::future::try_join_all(all.iter().map(|tg| reads.targets(tg))).await.map(Some),
                false => Ok(None),
            }
        };
        let (current, early) = tokio::join!(lb.route(&b.private_production_route), early);
        let (current, early) = (current?, early?);
        let desired = crate::domain::mirror_route(public, &pairs, b.style(), Some(&current))
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.side_label())))?;
        if desired.same_action(&current) {
            return Ok(out);
        }
        let joining = desired.live().iter().any(|tg| !current.live().contains(tg));
        let involved: Vec<&str> = if joining {
            pairs
                .iter()
                .filter(|(_, private)| desired.contains(private) || current.contains(private))
                .flat_map(|(public, private)| [public.as_str(), private.as_str()])
                .collect()
        } else {
            Vec::new()
        };
        let targets: Vec<(String, Vec<crate::domain::ObservedTarget>)> = match early {
            // Every pair's targets are at hand: the plan mirrors their membership too.
            Some(read) => all.iter().map(|s| s.to_string()).zip(read).collect(),
            None => {
                let read = futures_util::future::try_join_all(involved.iter().map(|tg| reads.targets(tg))).await?;
                involved.iter().map(|s| s.to_string()).zip(read).collect()
            }
        };
        if let Some(again) = self.moved_since(lb, read.0, public, read.1).await? {
            out.held_back = vec![format!(
                "{}: the public route moved to {again} while the private side was read; mirroring it next",
                b.side_label()
            )];
            return Ok(out);
        }
        let seen = Observed {
            public_production: Some(public.clone()),
            private_production: Some(current),
            targets: targets.into_iter().collect(),
            ..Default::default()
        };
        self.apply(b, &seen, reads, &mut out, t).await?;
        Ok(out)
    }

    /// Follows a deployment's public weights onto the private side until the deployment is over, the lease is
    /// lost, or the budget nears its end (then a fresh follower is started and takes the lease over). The public
    /// listener is read at the pace the deployment's configuration calls for ([`crate::domain::pacing`]): fast
    /// around the moments CodeDeploy will move the weights, slowly between them. Its reads stay out of the
    /// installation's read lane: they keep the private weights within a second of the public ones, at the
    /// followers' own share.
    pub async fn follow(&self, req: &FollowRequest, owner: &str, budget: Budget, t: &Tracker) -> Result<()> {
        crate::reads::under(ReadPolicy::new(LaneMode::Outside, None), self.follow_within(req, owner, budget, t)).await
    }

    async fn follow_within(&self, req: &FollowRequest, owner: &str, budget: Budget, t: &Tracker) -> Result<()> {
        // A stored binding comes with the request (BeforeAllowTraffic read and checked it); the environment form
        // is at hand. Only a request without one (an older starter) reads the table first.
        let carried = req.binding.as_ref().filter(|b| {
            self.config.stored && b.application == req.application && b.deployment_group == req.deployment_group
        });
        let b = match carried {
            Some(b) => Cow::Borrowed(b),
            None => self
                .binding_of(&req.application, &req.deployment_group)
                .await?
                .ok_or_else(|| self.no_binding(&req.application, &req.deployment_group))?,
        };
        let b: &Binding = &b;
        self.scope(b);
        t.binding(b);
        t.observing(self.observes(b));
        // BeforeAllowTraffic hands over what it knows, so that the first read comes before the first move; the
        // deployment group is read only when a full reconcile needs it.
        let mut group = None::<DeploymentGroupFacts>;
        let public_ref = match &req.production_listener {
            Some(l) => RouteRef::Listener(l.clone()),
            None => {
                let g = self.group(b).await?;
                let l = g.production_listeners.first().cloned().ok_or_else(|| {
                    Error::Misconfigured(format!("deployment group {} has no production listener", b.deployment_group))
                })?;
                group = Some(g);
                RouteRef::Listener(l)
            }
        };
        // The lease, the deployment's configuration and the first read of the public route are independent: all
        // at once, so that the first step is mirrored as soon as it can be.
        let (lease, shift, first) =
            tokio::join!(self.take_lease(req, owner), self.traffic_shift(req, t), self.lb.route(&public_ref));
        let Some(mut lease) = lease? else {
            t.note(format!("{} is already followed by a live follower", b.label()));
            return Ok(());
        };
        // All at once is one move, followed like the others: CodeDeploy invokes AfterAllowTraffic whenever it
        // gets round to it after the reroute (seconds on AWS), and the private side moves when the reroute is
        // read, not then. AfterAllowTraffic still verifies, and flips by itself when no follower runs.
        t.note(format!("following deployment {} of {} ({shift:?})", req.deployment_id, b.label()));
        // A successor carries on with its predecessor's schedule: when the weights last moved. The gate mirrored
        // everything just before the follower was started: the first read only takes a baseline.
        let inherited = (lease.last_move_ms > 0).then_some(lease.last_move_ms);
        // The schedule's clock: the lease's wall clock at the start, carried on by the runtime's monotonic one (which
        // is also the one its sleeps and timeouts keep).
        let (wall, origin) = (now_ms(), Instant::now());
        let clock = move || wall + u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let deadline = clock() + u64::try_from(budget.remaining().as_millis()).unwrap_or(u64::MAX);
        let mut schedule = Follower::new(shift, self.config.elb_reads_per_s, clock(), deadline, inherited);
        let mut seen = Followed { prefetched: first.ok(), ..Default::default() };
        let mut share = Share::default();
        let mut found = Found::Nothing;
        let followed: Result<()> = async {
            loop {
                let step = schedule.step(found, clock());
                if let Some(lag) = step.followed_move {
                    t.followed_move(lag);
                }
                if let Some(at) = schedule.last_move() {
                    lease.last_move_ms = at;
                }
                found = match step.next {
                    Next::Stop => return Ok(()),
                    Next::SleepUntil(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(clock()))).await;
                        Found::Nothing
                    }
                    Next::Do(Duty::Read { full }) => {
                        // A read held by the pace past the budget ends this follower, not the invocation: whatever
                        // the step left half done, the successor (or the schedule) finds and mirrors.
                        let by = Duration::from_millis(schedule.read_by().saturating_sub(clock()));
                        match tokio::time::timeout(by, self.follow_step(b, &mut group, &public_ref, &mut seen, full, t))
                            .await
                        {
                            Err(_) => {
                                t.note("the budget ended during a paced read; the successor carries on".to_string());
                                Found::Done
                            }
                            Ok(Ok(step)) => Found::Read {
                                moved: step.moved,
                                seen_before: step.seen_before,
                                settled: step.settled,
                                mirrored: seen.mirrored.is_some(),
                            },
                            // A transient failure (throttling that outlasted the SDK's retries, a 5xx) costs one read,
                            // not the follower.
                            Ok(Err(e)) if e.is_transient() => {
                                t.note(format!("follower read failed, reading again later: {e}"));
                                Found::ReadFailed
                            }
                            Ok(Err(e)) => return Err(e),
                        }
                    }
                    Next::Do(Duty::CountIn) => match self.count_in(owner, &mut share, t).await {
                        Some(live) => Found::Followers(live),
                        None => Found::Nothing,
                    },
                    Next::Do(Duty::CheckOver) => {
                        let over = match &seen.mirrored {
                            Some(public) => self.deployment_over(req, public).await,
                            None => None,
                        };
                        match over {
                            // AfterAllowTraffic verified every side and re-mirrored membership when it recorded its
                            // phase: a reconcile now would read the same again. A deployment CodeDeploy ended
                            // otherwise (a stop, a rollback) has had no such check.
                            Some(over) => {
                                if over == Over::Unverified {
                                    let g = self.group_once(b, &mut group).await?;
                                    self.reconcile(b, g, t).await?;
                                }
                                self.release_lease(&mut lease).await;
                                t.note(format!("deployment {} is over; follower done", req.deployment_id));
                                Found::Done
                            }
                            None => Found::Nothing,
                        }
                    }
                    Next::Do(Duty::Renew { handover }) => match self.renew(&mut lease, handover, t).await? {
                        true => Found::Nothing,
                        false => {
                            t.note("follower lease taken over; stopping".to_string());
                            Found::Done
                        }
                    },
                    Next::Do(Duty::HandOver) => {
                        if self.renew(&mut lease, true, t).await? {
                            self.leave_census(owner, &mut share).await;
                            match self.followers.start(req).await {
                                Ok(true) => t.note("handing over to a fresh follower before the deadline".to_string()),
                                Ok(false) => t.note("no follower function configured to hand over to".to_string()),
                                Err(e) => t.note(format!("could not start the next follower: {e}")),
                            }
                            Found::Nothing
                        } else {
                            Found::Done
                        }
                    }
                };
            }
        }
        .await;
        // Bounded by the budget: an entry left behind stops counting within `Census::FRESH_MS`.
        let _ = tokio::time::timeout(budget.remaining(), self.leave_census(owner, &mut share)).await;
        followed
    }

    /// Writes this follower's heartbeat to the installation's census and paces its reads as one of the followers
    /// live now. A census that cannot be written leaves the pace as it was: the per-process bucket still holds.
    async fn count_in(&self, owner: &str, share: &mut Share, t: &Tracker) -> Option<usize> {
        let now = now_ms();
        let entry = CensusEntry {
            owner: owner.to_string(),
            heartbeat_ms: Some(now),
            forget: std::mem::take(&mut share.forget),
        };
        match self.state.census(&entry).await {
            Ok(census) => {
                let live = census.live(now);
                share.forget = census.forgotten(now);
                if live == share.live {
                    return None;
                }
                let per_s = follower_reads_per_s(self.config.elb_reads_per_s, live);
                crate::reads::pace_at(per_s);
                t.note(format!("{live} follower(s) at once: reading ELB at {per_s:.2} a second"));
                share.live = live;
                Some(live)
            }
            Err(e) => {
                t.note(format!("follower census not written ({e}); reading at the pace as it was"));
                None
            }
        }
    }

    /// Leaves the census (best effort: an entry left behind stops counting within [`Census::FRESH_MS`]).
    async fn leave_census(&self, owner: &str, share: &mut Share) {
        if share.live == 0 {
            return;
        }
        share.live = 0;
        let entry =
            CensusEntry { owner: owner.to_string(), heartbeat_ms: None, forget: std::mem::take(&mut share.forget) };
        let _ = self.state.census(&entry).await;
    }

    /// One read of the public production listener and, when it moved since the last mirror (or a full reconcile
    /// is due), the private side made to mirror it.
    async fn follow_step(
        &self,
        b: &Binding,
        group: &mut Option<DeploymentGroupFacts>,
        public_ref: &RouteRef,
        seen: &mut Followed,
        full_due: bool,
        t: &Tracker,
    ) -> Result<FollowStep> {
        let public = match seen.prefetched.take() {
            Some(public) => public,
            None => self.lb.route(public_ref).await?,
        };
        let read_at = Instant::now();
        let seen_before = seen.last_read.is_some();
        // A group that has just started taking public traffic (the shift's first step, a rollback).
        let public_joining = match &seen.last_read {
            Some(prev) => public.live().iter().any(|g| !prev.live().contains(g)),
            None => public.live().len() > 1,
        };
        // A group that has just stopped taking it (a rollback or a stop, the shift's last step).
        let public_leaving =
            seen.last_read.as_ref().is_some_and(|prev| prev.live().iter().any(|g| !public.live().contains(g)));
        // A move is a change from the last read, whether or not it could be mirrored then (a held-back move is
        // not seen again as a move, or the schedule would lose its anchor).
        let public_moved = seen.last_read.as_ref().is_some_and(|r| !r.same_action(&public));
        if (public_moved || !seen_before) && t.observes() {
            t.public_move(now_ms(), public.clone());
        }
        seen.last_read = Some(public.clone());
        let moved = seen.mirrored.as_ref().is_none_or(|m| !m.same_action(&public));
        let r = if full_due {
            let g = self.group_once(b, group).await?;
            Some(self.reconcile(b, g, t).await?)
        } else if moved {
            let at_once = public_joining || public_leaving;
            Some(self.mirror_production(b, &public, (public_ref, read_at), (public_joining, at_once), t).await?)
        } else {
            None
        };
        if let Some(r) = &r {
            if !r.held_back.is_empty() {
                t.note(r.held_back.join("; "));
            }
            seen.mirrored = if r.held_back.is_empty() { Some(public.clone()) } else { None };
        }
        Ok(FollowStep { moved: public_moved, seen_before, settled: public.live().len() <= 1 })
    }

    /// The deployment group's setup, read once.
    async fn group_once<'g>(
        &self,
        b: &Binding,
        group: &'g mut Option<DeploymentGroupFacts>,
    ) -> Result<&'g DeploymentGroupFacts> {
        if group.is_none() {
            *group = Some(self.group(b).await?);
        }
        group.as_ref().ok_or_else(|| Error::Invariant("deployment group read but not kept".to_string()))
    }

    /// How the deployment shifts traffic, from its configuration; `Unknown` (read at the unsure pace) when
    /// CodeDeploy does not say.
    async fn traffic_shift(&self, req: &FollowRequest, t: &Tracker) -> TrafficShift {
        let name = match &req.config_name {
            Some(name) => Some(name.clone()),
            None => match self.deployments.deployment(&req.deployment_id).await {
                Ok(d) => d.config_name,
                Err(e) => {
                    t.note(format!(
                        "deployment {} not readable ({e}); following at the unsure pace",
                        req.deployment_id
                    ));
                    None
                }
            },
        };
        let Some(name) = name else { return TrafficShift::Unknown };
        match self.deployments.traffic_shift(&name).await {
            Ok(shift) => shift.with_minute(self.config.minute),
            Err(e) => {
                t.note(format!("deployment config {name} not readable ({e}); following at the unsure pace"));
                TrafficShift::Unknown
            }
        }
    }

    /// The deployment is over when CodeDeploy says so, or when AfterAllowTraffic is done and the public route
    /// rests on one target group.
    /// While the public route is split between the two groups, traffic is still shifting: nothing to ask. A
    /// stop or a rollback puts it back on one group first, and only then is CodeDeploy asked (its API budget is
    /// the account's too).
    async fn deployment_over(&self, req: &FollowRequest, public: &Route) -> Option<Over> {
        if public.live().len() != 1 {
            return None;
        }
        if let Ok(Some(rec)) = self.state.deployment(&req.deployment_id).await {
            if rec.phases.contains_key(Phase::AfterAllowTraffic.as_str()) {
                return Some(Over::Verified);
            }
        }
        matches!(self.deployments.deployment(&req.deployment_id).await, Ok(d) if d.is_finished())
            .then_some(Over::Unverified)
    }

    async fn take_lease(&self, req: &FollowRequest, owner: &str) -> Result<Option<FollowerLease>> {
        for _ in 0..3 {
            let current = self.state.follower(&req.application, &req.deployment_group).await?;
            let now = now_ms();
            if let Some(l) = &current {
                if !l.can_be_taken_by(owner, &req.deployment_id, now) {
                    return Ok(None);
                }
            }
            let lease = FollowerLease {
                application: req.application.clone(),
                deployment_group: req.deployment_group.clone(),
                deployment_id: req.deployment_id.clone(),
                owner: owner.to_string(),
                heartbeat_ms: now,
                handover_requested: false,
                last_move_ms: current
                    .as_ref()
                    .filter(|l| l.deployment_id == req.deployment_id)
                    .map_or(0, |l| l.last_move_ms),
                version: current.map_or(0, |l| l.version) + 1,
            };
            if self.state.put_follower(&lease).await? == Saved::Written {
                return Ok(Some(lease));
            }
        }
        Ok(None)
    }

    /// Renews the lease (heartbeat, hand-over flag). `Ok(false)` when another follower holds it now. A write that
    /// failed transiently is checked against what is stored, since it may have gone through.
    async fn renew(&self, lease: &mut FollowerLease, handover: bool, t: &Tracker) -> Result<bool> {
        let mut next = lease.clone();
        next.heartbeat_ms = now_ms();
        next.handover_requested = handover;
        next.version += 1;
        match self.state.put_follower(&next).await {
            Ok(Saved::Written) => {
                *lease = next;
                Ok(true)
            }
            Ok(Saved::Conflict) => Ok(false),
            Err(e) if e.is_transient() => {
                t.note(format!("lease renewal failed, checking: {e}"));
                match self.state.follower(&lease.application, &lease.deployment_group).await {
                    Ok(Some(stored)) if stored.owner == lease.owner => {
                        *lease = stored;
                        Ok(true)
                    }
                    Ok(_) => Ok(false),
                    // Still unreadable: keep following; the lease only goes stale after several seconds.
                    Err(_) => Ok(true),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn release_lease(&self, lease: &mut FollowerLease) {
        lease.owner.clear();
        lease.heartbeat_ms = 0;
        lease.version += 1;
        // Best effort: a lease left behind goes stale within seconds.
        let _ = self.state.put_follower(lease).await;
    }
}
