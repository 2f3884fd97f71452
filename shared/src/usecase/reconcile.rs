//! The reconciler's use cases. `reconcile` re-establishes I1–I3 for one binding from the live public state, at
//! any moment: between deployments (scaling, replaced tasks), after a rollback that ran no hook, or on a schedule.
//! `follow` does the same many times a second while CodeDeploy shifts traffic step by step, holding a lease in
//! DynamoDB so that exactly one follower runs per binding, and hands over to a fresh invocation before its Lambda
//! deadline.
//!
//! Concurrent writers (a hook, an event-driven reconcile, the follower) need no lock: each one mirrors the public
//! route it read, then re-reads it after writing and goes round again if it moved meanwhile, so the last write
//! always mirrors a public state read after it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{read_apart, Engine, ReadOnce, SidePass, Tracker};
use crate::clock::now_ms;
use crate::config::{Binding, RouteRef, MANAGED_TAG};
use crate::domain::{
    follower_reads_per_s, full_reconcile_fits, next_read as next_read_in, pacing::PROCESS_SHARE, plan_reconcile,
    Census, CensusEntry, FollowerLease, Observed, Pacing, Phase, Progress, Route, TrafficShift, DEFAULT_BATCH,
};
use crate::harness::Budget;
use crate::ports::{DeploymentGroupFacts, Deployments, FollowRequest, Followers, LoadBalancers, Saved, StateStore};
use crate::{Error, Result};

/// How long a deployment group's setup read for an ECS task event is trusted. Every task event concerns one
/// service, but only the deployment groups say which binding that is: without the cache, each event of a
/// deployment that replaces ten tasks would read every bound group again (`GetDeploymentGroup` per binding, from
/// the account's CodeDeploy budget). A group's ECS service does not change under a binding; the schedule and the
/// deployment events read the group afresh.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(300);

/// Deployment groups' setup as last read, per `(application, group)`.
#[derive(Debug, Default)]
pub(crate) struct GroupCache(
    std::sync::Mutex<std::collections::HashMap<(String, String), (Instant, DeploymentGroupFacts)>>,
);

impl GroupCache {
    fn get(&self, b: &Binding) -> Option<DeploymentGroupFacts> {
        let map = self.0.lock().ok()?;
        let (at, facts) = map.get(&(b.application.clone(), b.deployment_group.clone()))?;
        (at.elapsed() < GROUP_CACHE_TTL).then(|| facts.clone())
    }

    pub(super) fn put(&self, b: &Binding, facts: &DeploymentGroupFacts) {
        if let Ok(mut map) = self.0.lock() {
            map.insert((b.application.clone(), b.deployment_group.clone()), (Instant::now(), facts.clone()));
        }
    }
}

/// What one reconcile of one binding changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciled {
    pub binding: String,
    #[serde(skip)]
    pub application: String,
    #[serde(skip)]
    pub deployment_group: String,
    pub registered: usize,
    pub deregistered: usize,
    pub production: Option<String>,
    pub test: Option<String>,
    pub held_back: Vec<String>,
    pub rounds: usize,
}

impl Reconciled {
    /// Nothing changed yet, on side `b` (its label names the side).
    pub(super) fn of(b: &Binding, label: String) -> Self {
        Self {
            binding: label,
            application: b.application.clone(),
            deployment_group: b.deployment_group.clone(),
            ..Self::default()
        }
    }

    pub fn changed(&self) -> bool {
        self.registered + self.deregistered > 0 || self.production.is_some() || self.test.is_some()
    }
}

/// How the follower paces what is not a read of the public listener: a full reconcile (membership, test route)
/// now and then, a look at whether the deployment is over, the lease's heartbeat (stale after 5 s).
/// Membership changes while traffic shifts come with ECS task events and the scheduled sweep, so the follower's
/// own full reconcile is a safety net: once a minute, it had been half of what a follower read.
const FULL_RECONCILE_EVERY: Duration = Duration::from_secs(300);
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How old a read of the public production route may be when the private route is written from it without a
/// second look: beyond it, the reads in between waited in the process's bucket and CodeDeploy may have moved on.
const FRESH_FOR: Duration = Duration::from_millis(500);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

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

/// How long the first of an ECS service's task events waits for the others of the same moment before it reads.
/// A task set's events arrive within a few hundred ms (those of tasks stopping within a few); a task that goes
/// keeps serving for its target group's deregistration delay (300 s by default, seconds at the least), inside
/// which its private mirror must go, so the wait stays a fraction of a second.
pub const EVENTS_SETTLE: Duration = Duration::from_millis(300);

/// This follower's place in the installation's census: how many followed at the last count (0: not counted
/// yet), and the long-gone entries the next write drops.
#[derive(Debug, Default)]
struct Share {
    live: usize,
    forget: Vec<String>,
}

/// What one follower read found.
#[derive(Debug, Clone, Copy)]
struct FollowStep {
    /// The public route differs from the previous read.
    moved: bool,
    /// There was a previous read to differ from (the first read is not a move).
    seen_before: bool,
    /// A full reconcile ran.
    full: bool,
    /// The public route sends everything to one target group.
    settled: bool,
}

impl<L: LoadBalancers, D: Deployments, S: StateStore, F: Followers> Engine<L, D, S, F> {
    /// The deployment group's setup (listeners, services).
    pub async fn group(&self, b: &Binding) -> Result<DeploymentGroupFacts> {
        self.deployments.deployment_group(&b.application, &b.deployment_group).await.map_err(|e| match e.aws_kind() {
            Some(crate::AwsErrorKind::NotFound) => Error::Misconfigured(format!(
                "binding {} names a CodeDeploy deployment group that does not exist ({e})",
                b.label()
            )),
            _ => e,
        })
    }

    /// The group's setup for routing a task event: cached for [`GROUP_CACHE_TTL`]; a group that cannot be read
    /// is not cached, so the next event tries again.
    pub(super) async fn group_for_task(&self, b: &Binding) -> Result<DeploymentGroupFacts> {
        if let Some(facts) = self.groups.get(b) {
            return Ok(facts);
        }
        let facts = self.group(b).await?;
        self.groups.put(b, &facts);
        Ok(facts)
    }

    /// Re-establishes I1–I3 for `b` from the live public state, on every private side.
    pub async fn reconcile(&self, b: &Binding, group: &DeploymentGroupFacts, t: &Tracker) -> Result<Reconciled> {
        t.binding(b);
        // Its rounds of reads (the preflight, then the observation) take one turn in the read lane between them.
        self.lb.begin_check();
        let pass = &self.sides_pass(b, t).await?;
        on_every_side(b, |side| async move { self.reconcile_side(&side, group, pass.side(side.side), t).await }).await
    }

    /// `first`: the first round's reads, shared with the other sides, and this side's preflight when it was read
    /// with theirs; a further round reads anew.
    async fn reconcile_side(
        &self,
        b: &Binding,
        group: &DeploymentGroupFacts,
        first: SidePass<'_, '_, L>,
        t: &Tracker,
    ) -> Result<Reconciled> {
        let SidePass { reads: first, preflight: mut first_pre } = first;
        let mut out = Reconciled::of(b, b.side_label());
        let public_prod = group.production_listeners.first().map(|l| RouteRef::Listener(l.clone()));
        let public_test = group.test_listeners.first().map(|l| RouteRef::Listener(l.clone()));
        for round in 1..=3 {
            out.rounds = round;
            let again;
            let reads = match round {
                1 => first,
                _ => {
                    again = ReadOnce::new(&self.lb);
                    &again
                }
            };
            let pre = self.preflight_or_own(b, first_pre.take(), t).await?;
            let observing = Instant::now();
            let seen =
                self.observe(b, reads, public_prod.as_ref(), public_test.as_ref(), pre.production, pre.test).await?;
            if let (Some(public_ref), Some(public)) = (&public_prod, &seen.public_production) {
                if round < 3 && self.moved_since(&self.lb, public_ref, public, observing).await?.is_some() {
                    continue;
                }
            }
            if !self.apply(b, &seen, reads, &mut out, t).await? {
                break;
            }
            // Read-after-write: if the public route moved while we wrote, go round again.
            let (Some(public_ref), Some(mirrored)) = (&public_prod, &seen.public_production) else { break };
            if out.production.is_none() || self.lb.route(public_ref).await?.same_traffic(mirrored) {
                break;
            }
        }
        if out.changed() {
            t.note(format!(
                "reconciled {}: +{} -{} production {} test {}",
                out.binding,
                out.registered,
                out.deregistered,
                out.production.as_deref().unwrap_or("unchanged"),
                out.test.as_deref().unwrap_or("unchanged")
            ));
        }
        Ok(out)
    }

    /// What an ECS task event calls for, once for the events that come together: ECS sends one per task, and a
    /// task set that starts or stops sends several within a second, each of which would read the same four
    /// groups. The first claims the binding's next read [`EVENTS_SETTLE`] ahead and makes it then; the others,
    /// arriving before that read starts, leave it to that read, which sees what they would have. `None` when left
    /// to another. A claim that cannot be written costs the reads, not the event.
    pub async fn reconcile_membership_after_events(&self, b: &Binding, t: &Tracker) -> Result<Option<Reconciled>> {
        let now = now_ms();
        let settle = EVENTS_SETTLE.as_millis() as u64;
        match self.state.claim_read(&format!("membership#{}", b.label()), now, now + settle).await {
            Ok(false) => {
                t.note(format!("{}: a membership read already pending covers this event", b.label()));
                return Ok(None);
            }
            Ok(true) => tokio::time::sleep(EVENTS_SETTLE).await,
            Err(e) => t.note(format!("{}: membership read not claimed ({e}); reading now", b.label())),
        }
        self.reconcile_membership(b, t).await.map(Some)
    }

    /// Mirrors the membership of both pairs (I1) and nothing else: what an ECS task event calls for. Four reads
    /// of target health, no route read: routes are the hooks', the follower's and the full reconcile's.
    pub async fn reconcile_membership(&self, b: &Binding, t: &Tracker) -> Result<Reconciled> {
        t.binding(b);
        let reads = &ReadOnce::new(&self.lb);
        on_every_side(b, |side| async move { self.membership_side(&side, reads, t).await }).await
    }

    async fn membership_side(&self, b: &Binding, reads: &ReadOnce<'_, L>, t: &Tracker) -> Result<Reconciled> {
        let mut out = Reconciled { rounds: 1, ..Reconciled::of(b, b.side_label()) };
        let tgs: Vec<&str> = b.public_target_groups().into_iter().chain(b.private_target_groups()).collect();
        let targets = futures_util::future::try_join_all(tgs.iter().map(|tg| reads.targets(tg))).await?;
        let seen = Observed { targets: tgs.iter().map(|s| s.to_string()).zip(targets).collect(), ..Default::default() };
        if self.apply(b, &seen, reads, &mut out, t).await? {
            t.note(format!("mirrored {}: +{} -{}", out.binding, out.registered, out.deregistered));
        }
        Ok(out)
    }

    /// Plans from what was observed and applies it in the order that keeps I4: registrations, route changes,
    /// deregistrations. `Ok(false)` when there was nothing to change.
    async fn apply(
        &self,
        b: &Binding,
        seen: &Observed,
        reads: &ReadOnce<'_, L>,
        out: &mut Reconciled,
        t: &Tracker,
    ) -> Result<bool> {
        let mut plan = plan_reconcile(&b.pair_arns(), b.style(), seen, DEFAULT_BATCH)
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.side_label())))?;
        out.held_back = plan.held_back.clone();
        // A pair whose private read answered well after its public one has its registrations confirmed first.
        for (private, m) in plan.mirrors.iter_mut().filter(|(_, m)| !m.register.is_empty()) {
            let Some(public) = b.pairs.iter().find(|p| p.private_target_group == *private) else { continue };
            if !read_apart(reads.answered_later(&public.public_target_group, private)) {
                continue;
            }
            *m = self.confirm_registrations(std::mem::take(m), &public.public_target_group, private, t).await?;
        }
        if plan.is_empty() {
            return Ok(false);
        }
        for (tg, m) in &plan.mirrors {
            for batch in &m.register {
                self.lb.register(tg, batch).await?;
            }
            out.registered += m.registered();
        }
        if let (Some(to), Some(current)) = (&plan.production, &seen.private_production) {
            self.lb.set_route(&b.private_production_route, to).await?;
            t.route_change(current.to_string(), to.to_string());
            out.production = Some(format!("{current} -> {to}"));
            // The binding's record names the first side's live group.
            if let ([live], 0) = (to.live().as_slice(), b.side) {
                self.record_binding_live(b, live, None, None, t).await;
            }
        }
        if let (Some(to), Some(which), Some(current)) = (&plan.test, &b.private_test_route, &seen.private_test) {
            self.lb.set_route(which, to).await?;
            out.test = Some(format!("{current} -> {to}"));
        }
        for (tg, m) in &plan.mirrors {
            for batch in &m.deregister {
                self.lb.deregister(tg, batch).await?;
            }
            out.deregistered += m.deregistered();
        }
        t.mirrored(
            plan.mirrors.iter().map(|(_, m)| m.registered()).sum(),
            plan.mirrors.iter().map(|(_, m)| m.deregistered()).sum(),
        );
        Ok(true)
    }

    /// Whether the public production route read at `read_at` as `public` has moved since, when the reads after
    /// it waited their turn long enough ([`FRESH_FOR`]) for CodeDeploy to move on: the route as it stands now, or
    /// `None` (a fresh read is trusted without a second one). No private route is written from a stale read.
    async fn moved_since(
        &self,
        lb: &L,
        public_ref: &RouteRef,
        public: &Route,
        read_at: Instant,
    ) -> Result<Option<Route>> {
        if read_at.elapsed() <= FRESH_FOR {
            return Ok(None);
        }
        let now = lb.route(public_ref).await?;
        Ok((!now.same_action(public)).then_some(now))
    }

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
    /// `at_once`: a group has just stopped taking public traffic (a rollback or a stop, or the shift's last step):
    /// its tasks may be about to go, so the step's reads are neither paced nor held ([`LoadBalancers::at_once`]).
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
        (lb, reads): (&L, &ReadOnce<'_, L>),
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

    /// Reads both sides: routes and the targets of all four groups, concurrently, in the pass `reads` (the
    /// public ones are every side's).
    async fn observe(
        &self,
        b: &Binding,
        reads: &ReadOnce<'_, L>,
        public_prod: Option<&RouteRef>,
        public_test: Option<&RouteRef>,
        private_production: Route,
        private_test: Option<Route>,
    ) -> Result<Observed> {
        // The public production and test listeners in one read.
        let public: Vec<RouteRef> = public_prod.into_iter().chain(public_test).cloned().collect();
        let routes = reads.routes(&public);
        let tgs: Vec<&str> = b.public_target_groups().into_iter().chain(b.private_target_groups()).collect();
        let targets = futures_util::future::try_join_all(tgs.iter().map(|tg| reads.targets(tg)));
        let (routes, targets) = tokio::join!(routes, targets);
        let mut routes = routes?.into_iter();
        let pp = public_prod.and_then(|_| routes.next());
        let pt = public_test.and_then(|_| routes.next());
        Ok(Observed {
            public_production: pp,
            public_test: pt,
            private_production: Some(private_production),
            private_test,
            targets: tgs.iter().map(|s| s.to_string()).zip(targets?).collect(),
        })
    }

    /// Follows a deployment's public weights onto the private side until the deployment is over, the lease is
    /// lost, or the budget nears its end (then a fresh follower is started and takes the lease over). The public
    /// listener is read at the pace the deployment's configuration calls for ([`crate::domain::pacing`]): fast
    /// around the moments CodeDeploy will move the weights, slowly between them.
    pub async fn follow(&self, req: &FollowRequest, owner: &str, budget: Budget, t: &Tracker) -> Result<()> {
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
        if shift == TrafficShift::AllAtOnce {
            // One move, and AfterAllowTraffic runs right after it and flips the private side: nothing to follow.
            self.release_lease(&mut lease).await;
            t.note(format!(
                "deployment {} shifts all at once: AfterAllowTraffic flips the private side",
                req.deployment_id
            ));
            return Ok(());
        }
        t.note(format!("following deployment {} of {} ({shift:?})", req.deployment_id, b.label()));
        let mut pacing = Pacing::default();
        // Where the schedule stood at the last read: a full reconcile waits for a moment away from any move.
        let mut progress = Progress::default();
        let started = Instant::now();
        // A successor carries on with its predecessor's schedule: when the weights last moved.
        let inherited = (lease.last_move_ms > 0).then(|| now_ms().saturating_sub(lease.last_move_ms));
        let handover_at = budget.deadline() - (budget.remaining() / 4).min(Duration::from_secs(30));
        // What the private side was last made to mirror, and when the public weights were last seen to move.
        // The gate mirrored everything just before the follower was started: the first read only takes a baseline
        // (one read of each route), and the first full reconcile comes a period later.
        let mut seen = Followed { prefetched: first.ok(), ..Default::default() };
        let mut last_move = inherited.and_then(|ago| started.checked_sub(Duration::from_millis(ago)));
        let mut last_read_at = None::<Instant>;
        let (mut next_read, mut next_full, mut next_status, mut next_beat) =
            (started, started + FULL_RECONCILE_EVERY, started + STATUS_EVERY, started + HEARTBEAT_EVERY);
        let mut handing_over = false;
        // Counted in the census right after the first step, so that the first read is not delayed by it.
        let (mut next_census, mut share) = (started, Share::default());
        let mut failures = 0u32;
        // What this follower may read a second: the followers' whole rate until the census says how many share it.
        let mut share_per_s = follower_reads_per_s(self.config.elb_reads_per_s, 1);
        let followed: Result<()> = async {
            loop {
                let now = Instant::now();
                if now >= next_read {
                    // A transient failure (throttling that outlasted the SDK's retries, a 5xx) costs one read, not
                    // the follower: the next read comes later the more reads failed in a row.
                    let full = now >= next_full && full_reconcile_fits(&shift, &progress, share_per_s);
                    // A read held by the pace past the budget ends this follower, not the invocation: whatever
                    // the step left half done, the successor (or the schedule) finds and mirrors.
                    let step = self.follow_step(b, &mut group, &public_ref, &mut seen, full, t);
                    let Ok(step) = tokio::time::timeout_at(budget.deadline() - pacing.fast, step).await else {
                        t.note("the budget ended during a paced read; the successor carries on".to_string());
                        return Ok(());
                    };
                    let after = Instant::now();
                    match step {
                        Ok(step) => {
                            failures = 0;
                            // The schedule is anchored on the earliest moment the move can have happened, so that a
                            // move seen late never delays the fast reads around the next one: the read before (the
                            // move came after it), or, for a route already split at the first read, the follower's
                            // start (the gate that started it reported just before AllowTraffic began).
                            // A move seen and mirrored: the private weights lagged at most from the read that had
                            // not yet seen it to the write now done.
                            if step.moved && step.seen_before && seen.mirrored.is_some() {
                                if let Some(before) = last_read_at {
                                    t.followed_move(after - before);
                                }
                            }
                            let first_split = !step.seen_before && last_move.is_none() && !step.settled;
                            if (step.moved && step.seen_before) || first_split {
                                let anchor = if first_split { started } else { last_read_at.unwrap_or(now) };
                                last_move = Some(anchor);
                                lease.last_move_ms = now_ms().saturating_sub(anchor.elapsed().as_millis() as u64);
                            }
                            last_read_at = Some(now);
                            if step.full {
                                next_full = after + FULL_RECONCILE_EVERY;
                            }
                            progress = Progress {
                                since_start: after - started,
                                since_last_move: last_move.map(|m| after - m),
                                settled: step.settled,
                            };
                            // A held-back move is retried at the next fast read, not when the public side moves again.
                            let wait = if seen.mirrored.is_none() {
                                pacing.fast
                            } else {
                                next_read_in(&shift, &progress, &pacing)
                            };
                            next_read = after + wait;
                        }
                        Err(e) if e.is_transient() => {
                            failures += 1;
                            let wait = pacing.after_failures(failures);
                            t.note(format!("follower read failed, reading again in {} ms: {e}", wait.as_millis()));
                            next_read = after + wait;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if Instant::now() >= next_census {
                    next_census = Instant::now() + Duration::from_millis(Census::BEAT_MS);
                    if let Some(per_s) = self.count_in(owner, &mut share, t).await {
                        pacing = Pacing::default().sharing(per_s);
                        share_per_s = per_s;
                    }
                }
                if Instant::now() >= next_status {
                    next_status = Instant::now() + STATUS_EVERY;
                    if let Some(public) = &seen.mirrored {
                        if self.deployment_over(req, public).await {
                            let g = self.group_once(b, &mut group).await?;
                            self.reconcile(b, g, t).await?;
                            self.release_lease(&mut lease).await;
                            t.note(format!("deployment {} is over; follower done", req.deployment_id));
                            return Ok(());
                        }
                    }
                }
                if Instant::now() >= next_beat {
                    next_beat = Instant::now() + HEARTBEAT_EVERY;
                    if !self.renew(&mut lease, handing_over, t).await? {
                        t.note("follower lease taken over; stopping".to_string());
                        return Ok(());
                    }
                }
                if !handing_over && Instant::now() >= handover_at {
                    // The flag goes out before the successor is started, so that it finds the lease open to take.
                    handing_over = true;
                    if !self.renew(&mut lease, true, t).await? {
                        return Ok(());
                    }
                    next_beat = Instant::now() + HEARTBEAT_EVERY;
                    // Out of the census first, so that the successor does not count its predecessor and read at
                    // half its share.
                    self.leave_census(owner, &mut share).await;
                    next_census = budget.deadline() + Duration::from_secs(3600);
                    match self.followers.start(req).await {
                        Ok(true) => t.note("handing over to a fresh follower before the deadline".to_string()),
                        Ok(false) => t.note("no follower function configured to hand over to".to_string()),
                        Err(e) => t.note(format!("could not start the next follower: {e}")),
                    }
                }
                let wake = [
                    next_read,
                    next_census,
                    next_status,
                    next_beat,
                    if handing_over { next_beat } else { handover_at },
                ]
                .into_iter()
                .min()
                .unwrap_or(next_read);
                if budget.remaining() <= wake.saturating_duration_since(Instant::now()) + pacing.fast {
                    return Ok(());
                }
                tokio::time::sleep_until(wake).await;
            }
        }
        .await;
        // Bounded by the budget: an entry left behind stops counting within `Census::FRESH_MS`.
        let _ = tokio::time::timeout(budget.remaining(), self.leave_census(owner, &mut share)).await;
        self.lb.pace_reads(self.config.elb_reads_per_s * PROCESS_SHARE);
        followed
    }

    /// Writes this follower's heartbeat to the installation's census and paces its reads as one of the followers
    /// live now. A census that cannot be written leaves the pace as it was: the per-process bucket still holds.
    async fn count_in(&self, owner: &str, share: &mut Share, t: &Tracker) -> Option<f64> {
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
                self.lb.pace_reads(per_s);
                t.note(format!("{live} follower(s) at once: reading ELB at {per_s:.2} a second"));
                share.live = live;
                Some(per_s)
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
        seen.last_read = Some(public.clone());
        let moved = seen.mirrored.as_ref().is_none_or(|m| !m.same_action(&public));
        let r = if full_due {
            let g = self.group_once(b, group).await?;
            Some(self.reconcile(b, g, t).await?)
        } else if moved {
            Some(self.mirror_production(b, &public, (public_ref, read_at), (public_joining, public_leaving), t).await?)
        } else {
            None
        };
        if let Some(r) = &r {
            if !r.held_back.is_empty() {
                t.note(r.held_back.join("; "));
            }
            seen.mirrored = if r.held_back.is_empty() { Some(public.clone()) } else { None };
        }
        Ok(FollowStep { moved: public_moved, seen_before, full: full_due, settled: public.live().len() <= 1 })
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
    async fn deployment_over(&self, req: &FollowRequest, public: &Route) -> bool {
        if public.live().len() != 1 {
            return false;
        }
        if let Ok(Some(rec)) = self.state.deployment(&req.deployment_id).await {
            if rec.phases.contains_key(Phase::AfterAllowTraffic.as_str()) {
                return true;
            }
        }
        matches!(self.deployments.deployment(&req.deployment_id).await, Ok(d) if d.is_finished())
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

/// What a reconcile would change, in words (for operators and `--dry-run`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanSummary {
    /// Private target group name → targets to register / deregister.
    pub register: BTreeMap<String, Vec<String>>,
    pub deregister: BTreeMap<String, Vec<String>>,
    pub production: Option<String>,
    pub test: Option<String>,
    pub held_back: Vec<String>,
}

impl PlanSummary {
    pub fn is_empty(&self) -> bool {
        self.register.is_empty() && self.deregister.is_empty() && self.production.is_none() && self.test.is_none()
    }
}

/// One binding as an operator sees it: both sides, and what a reconcile would change.
#[derive(Debug, Clone, Serialize)]
pub struct BindingStatus {
    pub binding: String,
    pub public_production: Option<String>,
    pub public_test: Option<String>,
    pub private_production: Option<String>,
    pub private_test: Option<String>,
    /// Target group name → `ip:port health` of each target.
    pub targets: BTreeMap<String, Vec<String>>,
    /// I1–I3 hold when a reconcile would change nothing.
    pub in_sync: bool,
    pub pending: PlanSummary,
    pub warnings: Vec<String>,
}

impl<L: LoadBalancers, D: Deployments, S: StateStore, F: Followers> Engine<L, D, S, F> {
    /// Checks a binding against the live account without changing anything: its deployment group uses the
    /// binding's public target groups, every resource passes the preflight, the state table answers. Returns
    /// the warnings.
    pub async fn check(&self, b: &Binding, group: &DeploymentGroupFacts, t: &Tracker) -> Result<Vec<String>> {
        super::uses_only_bound_groups(b, &group.target_group_names)?;
        if group.production_listeners.is_empty() {
            return Err(Error::Misconfigured(format!(
                "deployment group {} has no production listener (is it an ECS blue/green group with a load balancer?)",
                b.deployment_group
            )));
        }
        self.preflight_and_state(b, t).await?;
        if self.config.stored {
            self.check_managed_tag(b).await?;
        }
        Ok(t.snapshot().notes.into_iter().filter(|n| n.starts_with("warning")).collect())
    }

    /// A stored binding is served by the fleet installation, whose roles may change only private resources
    /// tagged [`MANAGED_TAG`]`=true`: an untagged one would fail its first deployment with AccessDenied.
    async fn check_managed_tag(&self, b: &Binding) -> Result<()> {
        let mut arns = b.all_private_target_groups();
        arns.extend(b.all_private_routes().into_iter().map(RouteRef::arn));
        let tags = self.lb.tags(&arns).await?;
        let untagged: Vec<&str> = arns
            .iter()
            .copied()
            .filter(|a| tags.get(*a).and_then(|t| t.get(MANAGED_TAG)).map(String::as_str) != Some("true"))
            .collect();
        if untagged.is_empty() {
            return Ok(());
        }
        Err(Error::Misconfigured(format!(
            "binding {}: {} not tagged {MANAGED_TAG}=true, which the fleet installation's roles require before they \
             change anything; tag them: aws elbv2 add-tags --resource-arns {} --tags Key={MANAGED_TAG},Value=true",
            b.label(),
            untagged.join(", "),
            untagged.join(" ")
        )))
    }

    /// The public side and every private side of a binding (one status per private side), and what a reconcile
    /// would change, without changing anything.
    pub async fn status(&self, b: &Binding, group: &DeploymentGroupFacts, t: &Tracker) -> Result<Vec<BindingStatus>> {
        let pass = &self.sides_pass(b, t).await?;
        futures_util::future::try_join_all(
            b.sides().iter().map(|side| self.status_side(side, group, pass.side(side.side), t)),
        )
        .await
    }

    async fn status_side(
        &self,
        b: &Binding,
        group: &DeploymentGroupFacts,
        pass: SidePass<'_, '_, L>,
        t: &Tracker,
    ) -> Result<BindingStatus> {
        let SidePass { reads, preflight } = pass;
        let pre = self.preflight_or_own(b, preflight, t).await?;
        let public_prod = group.production_listeners.first().map(|l| RouteRef::Listener(l.clone()));
        let public_test = group.test_listeners.first().map(|l| RouteRef::Listener(l.clone()));
        let seen = self.observe(b, reads, public_prod.as_ref(), public_test.as_ref(), pre.production, pre.test).await?;
        let plan = plan_reconcile(&b.pair_arns(), b.style(), &seen, DEFAULT_BATCH)
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.side_label())))?;
        let name = |tg: &str| crate::domain::arn::target_group_name(tg).unwrap_or(tg).to_string();
        let mut pending = PlanSummary { held_back: plan.held_back.clone(), ..Default::default() };
        for (tg, m) in &plan.mirrors {
            if m.registered() > 0 {
                pending.register.insert(name(tg), m.register.iter().flatten().map(|t| t.key.to_string()).collect());
            }
            if m.deregistered() > 0 {
                pending.deregister.insert(name(tg), m.deregister.iter().flatten().map(ToString::to_string).collect());
            }
        }
        let show = |r: &Option<Route>| r.as_ref().map(Route::to_string);
        pending.production = plan
            .production
            .as_ref()
            .map(|to| format!("{} -> {to}", show(&seen.private_production).unwrap_or_default()));
        pending.test = plan.test.as_ref().map(|to| format!("{} -> {to}", show(&seen.private_test).unwrap_or_default()));
        Ok(BindingStatus {
            binding: b.side_label(),
            public_production: show(&seen.public_production),
            public_test: show(&seen.public_test),
            private_production: show(&seen.private_production),
            private_test: show(&seen.private_test),
            targets: seen
                .targets
                .iter()
                .map(|(tg, ts)| (name(tg), ts.iter().map(|t| format!("{} {}", t.key(), t.health.as_str())).collect()))
                .collect(),
            in_sync: plan.is_empty(),
            pending,
            warnings: t.snapshot().notes.into_iter().filter(|n| n.starts_with("warning")).collect(),
        })
    }
}

/// Runs `each` on every private side of `b` at once and merges what they changed. Every side is tried even when
/// another fails (a side that cannot be read must not keep the others from mirroring the public side); the first
/// error is then returned.
async fn on_every_side<F, Fut>(b: &Binding, each: F) -> Result<Reconciled>
where
    F: Fn(Binding) -> Fut,
    Fut: std::future::Future<Output = Result<Reconciled>>,
{
    let mut sides = b.sides();
    if sides.len() == 1 {
        if let Some(only) = sides.pop() {
            return each(only).await;
        }
    }
    let results = futures_util::future::join_all(sides.into_iter().map(each)).await;
    let mut out = Reconciled::of(b, b.label());
    let mut first_error = None;
    let both = |a: &mut Option<String>, side: &str, b: Option<String>| {
        if let Some(b) = b {
            let line = format!("{side}: {b}");
            *a = Some(match a.take() {
                Some(a) => format!("{a}; {line}"),
                None => line,
            });
        }
    };
    for r in results {
        match r {
            Ok(r) => {
                out.registered += r.registered;
                out.deregistered += r.deregistered;
                both(&mut out.production, &r.binding, r.production);
                both(&mut out.test, &r.binding, r.test);
                out.held_back.extend(r.held_back);
                out.rounds = out.rounds.max(r.rounds);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
