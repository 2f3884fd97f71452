//! The reconcile: `reconcile` re-establishes I1–I3 for one binding from the live public state, at any moment:
//! between deployments (scaling, replaced tasks), after a rollback that ran no hook, or on a schedule;
//! `reconcile_membership` mirrors I1 alone, for ECS task events. The follower (`follow`) and the operator's views
//! (`status`) build on its steps.
//!
//! Concurrent writers (a hook, an event-driven reconcile, the follower) need no lock: each one mirrors the public
//! route it read, then re-reads it after writing and goes round again if it moved meanwhile, so the last write
//! always mirrors a public state read after it.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::sweep::{public_routes, Ahead};
use super::{Engine, ReadOnce, Shadow, SidePass, Tracker};
use crate::clock::now_ms;
use crate::config::{Binding, RouteRef};
use crate::domain::{plan_reconcile, Observed, Route, DEFAULT_BATCH};
use crate::ports::{Claim, Coordination, DeploymentGroupFacts, Deployments, Followers, LoadBalancers, StateStore};
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

/// How long the first of an ECS service's task events waits for the others of the same moment before it reads.
/// A task set's events arrive within a few hundred ms (those of tasks stopping within a few); a task that goes
/// keeps serving for its target group's deregistration delay (300 s by default, seconds at the least), inside
/// which its private mirror must go, so the wait stays a fraction of a second.
pub const EVENTS_SETTLE: Duration = Duration::from_millis(300);

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
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
        self.reconcile_from(b, group, None, t).await
    }

    /// [`Self::reconcile`], starting from the sweep's reads ahead when `b` has some: its first round is then a
    /// look (the routes as read ahead, the health now), and a binding it finds anything to change on goes round
    /// again on reads of its own.
    pub(super) async fn reconcile_from(
        &self,
        b: &Binding,
        group: &DeploymentGroupFacts,
        ahead: Option<&Ahead>,
        t: &Tracker,
    ) -> Result<Reconciled> {
        t.binding(b);
        // Its rounds of reads (the preflight, then the observation) take one turn in the read lane between them.
        let _check = crate::reads::check();
        let (pass, look) = match ahead.and_then(|a| a.pass(&self.lb, b)) {
            Some(pass) => (pass, true),
            None => (self.sides_pass(b, t).await?, false),
        };
        let pass = &pass;
        on_every_side(b, |side| async move { self.reconcile_side(&side, group, pass.side(side.side), look, t).await })
            .await
    }

    /// `first`: the first round's reads, shared with the other sides, and this side's preflight when it was read
    /// with theirs; a further round reads anew. `look`: the first round's routes were read ahead, and only say
    /// whether there is anything to do.
    async fn reconcile_side(
        &self,
        b: &Binding,
        group: &DeploymentGroupFacts,
        first: SidePass<'_, '_, Shadow<L>>,
        look: bool,
        t: &Tracker,
    ) -> Result<Reconciled> {
        let SidePass { reads: first, preflight: mut first_pre } = first;
        let mut out = Reconciled::of(b, b.side_label());
        let (public_prod, public_test) = public_routes(group);
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
            if round == 1 && look {
                // Nothing is written from routes read ahead: in sync, the check is done; otherwise it reads anew.
                match plan_reconcile(&b.pair_arns(), b.style(), &seen, DEFAULT_BATCH) {
                    Ok(plan) if plan.is_empty() && plan.held_back.is_empty() => break,
                    _ => continue,
                }
            }
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
    /// to another. The claim is `owner`'s (the invocation's request id): Lambda's retry of an attempt that died
    /// after claiming takes the claim back and reads at once, where deferring would leave the moment's events
    /// unread. A claim that cannot be written costs the reads, not the event.
    pub async fn reconcile_membership_after_events(
        &self,
        b: &Binding,
        owner: &str,
        t: &Tracker,
    ) -> Result<Option<Reconciled>> {
        let now = now_ms();
        let settle = EVENTS_SETTLE.as_millis() as u64;
        match self.state.claim_read(&format!("membership#{}", b.label()), owner, now, now + settle).await {
            Ok(Claim::Pending) => {
                t.note(format!("{}: a membership read already pending covers this event", b.label()));
                return Ok(None);
            }
            Ok(Claim::Taken) => tokio::time::sleep(EVENTS_SETTLE).await,
            // A retry: the moment's events have had the first attempt's time and Lambda's wait to come, and the
            // tasks that stopped are draining meanwhile.
            Ok(Claim::TakenBack) => {
                t.note(format!("{}: membership read taken back from an earlier attempt", b.label()))
            }
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

    async fn membership_side(&self, b: &Binding, reads: &ReadOnce<'_, Shadow<L>>, t: &Tracker) -> Result<Reconciled> {
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
    pub(super) async fn apply(
        &self,
        b: &Binding,
        seen: &Observed,
        reads: &ReadOnce<'_, Shadow<L>>,
        out: &mut Reconciled,
        t: &Tracker,
    ) -> Result<bool> {
        let mut plan = plan_reconcile(&b.pair_arns(), b.style(), seen, DEFAULT_BATCH)
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.side_label())))?;
        out.held_back = plan.held_back.clone();
        // A pair whose public read is stale has its registrations confirmed first.
        for (private, m) in plan.mirrors.iter_mut().filter(|(_, m)| !m.register.is_empty()) {
            let Some(public) = b.pairs.iter().find(|p| p.private_target_group == *private) else { continue };
            if !crate::domain::stale(reads.age(&public.public_target_group)) {
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

    /// Whether the public production route read at `read_at` as `public` has moved since, when that read is stale
    /// ([`crate::domain::stale`]): the route as it stands now, or `None` (a fresh read is trusted without a second
    /// one). No private route is written from a stale read.
    pub(super) async fn moved_since(
        &self,
        lb: &Shadow<L>,
        public_ref: &RouteRef,
        public: &Route,
        read_at: Instant,
    ) -> Result<Option<Route>> {
        if !crate::domain::stale(Some(read_at.elapsed())) {
            return Ok(None);
        }
        let now = lb.route(public_ref).await?;
        Ok((!now.same_action(public)).then_some(now))
    }

    /// Reads both sides: routes and the targets of all four groups, concurrently, in the pass `reads` (the
    /// public ones are every side's).
    pub(super) async fn observe(
        &self,
        b: &Binding,
        reads: &ReadOnce<'_, Shadow<L>>,
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
}

/// Runs `each` on every private side of `b` at once and merges what they changed. Every side is tried even when
/// another fails (a side that cannot be read must not keep the others from mirroring the public side); the first
/// error is then returned.
pub(super) async fn on_every_side<F, Fut>(b: &Binding, each: F) -> Result<Reconciled>
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
