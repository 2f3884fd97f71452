//! Use cases: what each hook decides, written against the ports only. The steps the hooks share (resolve the
//! deployment to a binding, preflight the binding's resources, find green, mirror a pair, record) live here;
//! each hook's sequence lives in its own module. Failure policy (report, retry) belongs to the harness.

mod after_allow_traffic;
mod after_install;
mod before_allow_traffic;
mod bindings;
mod once;
mod reconcile;
mod rollback;
mod trigger;

pub use bindings::BINDING_CACHE_TTL;
pub use reconcile::{BindingStatus, PlanSummary, Reconciled};
pub use trigger::{Concerned, Trigger};

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::now_ms;
use crate::config::{Binding, Config, RouteRef};
use crate::domain::{
    arn, compat, plan_mirror, BindingRecord, DeploymentRecord, GroupShape, MirrorPlan, ObservedTarget, Phase, Route,
    TargetKey, DEFAULT_BATCH,
};
use crate::harness::{Budget, Epilogue, Tracker};
use crate::ports::{DeploymentFacts, Deployments, Followers, LoadBalancers, Saved, StateStore, TaskSetLabel};
use crate::{AwsErrorKind, Error, Result};
use once::ReadOnce;

/// Reads answered within this of each other went together: what they saw is as of one moment, as far as a task's
/// stopping goes.
const READS_TOGETHER: Duration = Duration::from_millis(500);

/// Whether a pair's two reads answered too far apart for a registration to stand on them: `apart` is how much
/// later the private read answered than the public one, `None` when that is not known (taken as apart).
fn read_apart(apart: Option<Duration>) -> bool {
    apart.is_none_or(|d| d > READS_TOGETHER)
}

/// The engine: every function's use cases (the three hooks, the reconciler) over one set of ports.
#[derive(Debug)]
pub struct Engine<L, D, S, F> {
    pub lb: L,
    pub deployments: D,
    pub state: S,
    pub followers: F,
    pub config: Config,
    /// Deployment groups' setup as last read, for routing ECS task events (see `Engine::group_for_task`).
    groups: reconcile::GroupCache,
    /// Stored bindings as last read (see `Engine::binding_of`).
    bindings: bindings::BindingCache,
}

/// A deployment resolved to its binding.
#[derive(Debug)]
struct Resolved<'a> {
    facts: DeploymentFacts,
    binding: std::borrow::Cow<'a, Binding>,
}

/// Which pair is green in this deployment.
#[derive(Debug, Clone)]
struct Green {
    public: String,
    private: String,
    blue_public: String,
    blue_private: String,
    desired_count: Option<u32>,
}

impl Green {
    /// The same deployment's groups on private side `side` (the public ones are every side's).
    fn on(&self, side: &Binding) -> Green {
        let private = side.private_of(&self.public).unwrap_or_default().to_string();
        let blue_private = side.private_of(&self.blue_public).unwrap_or_default().to_string();
        Green { private, blue_private, ..self.clone() }
    }

    /// This side's groups in its deployment record (the route's ARN names the sides after the first), over what
    /// the record held for it.
    fn recorded(&self, side: &Binding, kept: crate::domain::SideRecord) -> crate::domain::SideRecord {
        crate::domain::SideRecord {
            private_production_route: (side.side > 0).then(|| side.private_production_route.arn().to_string()),
            green_private_target_group: Some(self.private.clone()),
            blue_private_target_group: Some(self.blue_private.clone()),
            ..kept
        }
    }
}

/// The private routes as the preflight found them.
#[derive(Debug)]
struct Preflight {
    production: Route,
    test: Option<Route>,
}

/// One pass over the private sides of a binding that then go their own ways (a reconcile's first round,
/// `status`): the public reads they share, and each side's preflight read together with the others' (see
/// [`Engine::preflight_together`]), handed to that side once.
struct SidesPass<'l, L> {
    reads: ReadOnce<'l, L>,
    preflights: std::sync::Mutex<Vec<Option<Result<Preflight>>>>,
}

/// What one side takes from a [`SidesPass`]: the shared reads, and its preflight when it was read with the
/// others' (a side without one makes its own, see [`Engine::preflight_or_own`]).
struct SidePass<'p, 'l, L> {
    reads: &'p ReadOnce<'l, L>,
    preflight: Option<Result<Preflight>>,
}

impl<'l, L: LoadBalancers> SidesPass<'l, L> {
    fn side(&self, side: usize) -> SidePass<'_, 'l, L> {
        let preflight = self
            .preflights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(side)
            .and_then(Option::take);
        SidePass { reads: &self.reads, preflight }
    }
}

/// How long a hook waits for a DynamoDB read that stands between it and a route change. A read that hangs until
/// the SDK's 10 s attempt timeout would otherwise hold the private side back while production moves; a missing
/// table or permission answers at once, and everything read there can be derived from ELB instead.
pub(crate) const STATE_READ_BOUND: Duration = Duration::from_secs(1);

fn name(tg: &str) -> &str {
    arn::target_group_name(tg).unwrap_or(tg)
}

/// Turns "not found" from AWS into a message that names the missing thing and what to do.
fn missing(what: String) -> impl FnOnce(Error) -> Error {
    move |e| match e.aws_kind() {
        Some(AwsErrorKind::NotFound) => Error::Misconfigured(format!("{what} does not exist ({e})")),
        _ => e,
    }
}

impl<L: LoadBalancers, D: Deployments, S: StateStore, F: Followers> Engine<L, D, S, F> {
    pub fn new(lb: L, deployments: D, state: S, followers: F, config: Config) -> Self {
        Self {
            lb,
            deployments,
            state,
            followers,
            config,
            groups: reconcile::GroupCache::default(),
            bindings: bindings::BindingCache::default(),
        }
    }

    /// Runs the use case of `phase` within its budget. On failure — an error, a panic, the budget running out —
    /// a route change the use case asked to be undone is put back, and the deployment record says what
    /// happened (best effort).
    pub async fn run<'a>(
        &'a self,
        phase: Phase,
        deployment_id: &str,
        budget: Budget,
        t: &'a Tracker,
    ) -> Result<Epilogue<'a>> {
        match phase {
            Phase::AfterInstall => {
                self.run_hook(phase, deployment_id, budget, t, self.after_install(deployment_id, budget, t)).await
            }
            Phase::BeforeAllowTraffic => {
                let work = self.before_allow_traffic(deployment_id, budget, t);
                self.run_hook(phase, deployment_id, budget, t, work).await
            }
            Phase::AfterAllowTraffic => {
                let work = self.after_allow_traffic(deployment_id, budget, t);
                self.run_hook(phase, deployment_id, budget, t, work).await
            }
        }
    }

    /// [`Engine::run`] for one hook's use case, `work`, passed in: a function built for one hook calls this with
    /// its own use case, so that its binary links no other hook's (the zips Lambda loads stay small).
    /// What the use case leaves to do after its verdict (AfterAllowTraffic's records) comes back as its epilogue.
    pub async fn run_hook<'e, T: Into<Epilogue<'e>>>(
        &self,
        phase: Phase,
        deployment_id: &str,
        budget: Budget,
        t: &Tracker,
        work: impl Future<Output = Result<T>>,
    ) -> Result<Epilogue<'e>> {
        let result = crate::harness::guard(budget, phase.as_str(), work).await;
        if result.is_err() {
            // Every side is put back together: a binding is never left with some sides flipped and others not.
            let undo = t.take_undo();
            let restores = undo.iter().map(|(which, before)| async move {
                match self.lb.set_route(which, before).await {
                    Ok(()) => t.note(format!("{which} restored to {before}")),
                    Err(e) => t.note(format!("could not restore {which} to {before}: {e}")),
                }
            });
            futures_util::future::join_all(restores).await;
        }
        if let Err(e) = &result {
            let message = format!("{phase}: {}", crate::harness::error_chain(e));
            self.record_existing(deployment_id, t, |r| {
                r.outcome = Some("failed".to_string());
                r.last_message = Some(message.clone());
            })
            .await;
        }
        result.map(Into::into)
    }

    /// GetDeployment + GetDeploymentGroup, then the checks that make the deployment ours to mirror.
    async fn resolve(&self, deployment_id: &str, t: &Tracker) -> Result<Resolved<'_>> {
        let facts = self
            .deployments
            .deployment(deployment_id)
            .await
            .map_err(missing(format!("CodeDeploy deployment {deployment_id}")))?;
        if facts.compute_platform != "ECS" {
            return Err(Error::Misconfigured(format!(
                "deployment {deployment_id} is a {} deployment; bluegreen-mirror hooks serve ECS blue/green deployments only: \
                 remove them from this application's appspec",
                facts.compute_platform
            )));
        }
        if facts.deployment_type != "BLUE_GREEN" {
            return Err(Error::Misconfigured(format!(
                "deployment {deployment_id} is of type {}; bluegreen-mirror hooks serve BLUE_GREEN deployments only",
                facts.deployment_type
            )));
        }
        let binding = self
            .binding_of(&facts.application, &facts.deployment_group)
            .await?
            .ok_or_else(|| self.no_binding(&facts.application, &facts.deployment_group))?;
        t.binding(&binding);
        uses_only_bound_groups(&binding, &facts.target_group_names)?;
        for tg in binding.public_target_groups() {
            if !facts.target_group_names.is_empty()
                && !facts.target_group_names.iter().any(|n| Some(n.as_str()) == arn::target_group_name(tg))
            {
                return Err(Error::Misconfigured(format!(
                    "binding {} names public target group {} but deployment group {} does not use it (it uses {})",
                    binding.label(),
                    name(tg),
                    facts.deployment_group,
                    facts.target_group_names.join(", ")
                )));
            }
        }
        Ok(Resolved { facts, binding })
    }

    /// Checks every resource the binding names before anything is changed: the four target groups exist, are
    /// of type `ip`, mirror each other's port and protocol, and the private ones belong to the private load
    /// balancer only; the private routes exist, are plain forwards, and forward only to the binding's private
    /// target groups.
    async fn preflight(&self, b: &Binding, t: &Tracker) -> Result<Preflight> {
        let mut arns = b.public_target_groups();
        arns.extend(b.private_target_groups());
        let each = || async {
            let production = self
                .lb
                .route(&b.private_production_route)
                .await
                .map_err(missing(format!("private production route ({})", b.private_production_route)))?;
            let test = match &b.private_test_route {
                Some(r) => Some(self.lb.route(r).await.map_err(missing(format!("private test route ({r})")))?),
                None => None,
            };
            Ok::<_, Error>((production, test))
        };
        // Both routes in one read (one call for the listeners, one for the rules), as a binding of several sides
        // reads them; one that is missing is named by reading each.
        let route_reads = async {
            let Some(test) = &b.private_test_route else { return each().await };
            match self.lb.routes(&[b.private_production_route.clone(), test.clone()]).await {
                Ok(read) => match <[Route; 2]>::try_from(read) {
                    Ok([production, test]) => Ok((production, Some(test))),
                    Err(read) => Err(Error::Invariant(format!("2 private routes asked for, {} answered", read.len()))),
                },
                Err(e) if e.aws_kind() == Some(AwsErrorKind::NotFound) => each().await,
                Err(e) => Err(e),
            }
        };
        let (groups, routes) = tokio::join!(self.lb.target_groups(&arns), route_reads);
        let groups = groups.map_err(missing(format!("one of the target groups of binding {}", b.side_label())))?;
        let (production, test) = routes?;
        checked_preflight(b, &groups, production, test, t)
    }

    /// Which pair is green: CodeDeploy's task-set labels when it lists them, else the public production
    /// listener (the live public target group is blue; the other one is green).
    async fn green(&self, r: &Resolved<'_>, t: &Tracker) -> Result<Green> {
        let b: &Binding = &r.binding;
        let by_task_set = match self.deployments.task_sets(&r.facts.deployment_id).await {
            Ok(sets) => sets.into_iter().find(|s| s.label == TaskSetLabel::Green).and_then(|s| {
                let public = s.target_group_name.as_deref().and_then(|n| b.public_named(n))?.to_string();
                Some((public, s.desired_count))
            }),
            Err(e) => {
                t.note(format!("task sets not available ({e}); finding green from the production listener"));
                None
            }
        };
        let (public, desired_count) = match by_task_set {
            Some(found) => found,
            None => {
                let listener = r.facts.production_listeners.first().ok_or_else(|| {
                    Error::Misconfigured(format!(
                        "deployment group {} has no production listener and CodeDeploy lists no green task set",
                        r.facts.deployment_group
                    ))
                })?;
                let route = self.lb.route(&RouteRef::Listener(listener.clone())).await?;
                let live = route.live();
                let publics = b.public_target_groups();
                match live.as_slice() {
                    [blue] if publics.contains(blue) => {
                        let green = publics.iter().find(|p| *p != blue).map(|p| p.to_string()).unwrap_or_default();
                        (green, None)
                    }
                    _ => {
                        return Err(Error::Misconfigured(format!(
                            "cannot tell green: the public production listener forwards to {route}, not to exactly one \
                             of the binding's public target groups"
                        )))
                    }
                }
            }
        };
        let private = b.private_of(&public).unwrap_or_default().to_string();
        let (blue_public, blue_private) = b
            .pairs
            .iter()
            .find(|p| p.public_target_group != public)
            .map(|p| (p.public_target_group.clone(), p.private_target_group.clone()))
            .unwrap_or_default();
        Ok(Green { public, private, blue_public, blue_private, desired_count })
    }

    /// Polls `check` every poll interval until it yields a value or the budget runs out; transient AWS errors
    /// count as "not yet". `check` yields `Err(state)` while waiting; the last state is the timeout's message.
    /// Each poll is one check in the read lane: one turn for its rounds of reads.
    async fn poll<T, C, Fut>(&self, budget: Budget, mut check: C) -> Result<T>
    where
        C: FnMut() -> Fut,
        Fut: Future<Output = Result<std::result::Result<T, String>>>,
    {
        loop {
            self.lb.begin_check();
            let last = match check().await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(state)) => state,
                Err(e) if e.is_transient() => format!("last read failed: {e}"),
                Err(e) => return Err(e),
            };
            let step = self.config.poll_interval;
            if budget.remaining() <= step {
                return Err(Error::Timeout(last));
            }
            tokio::time::sleep(step).await;
        }
    }

    /// Waits until the public green target group holds the replacement tasks (the desired count when
    /// CodeDeploy tells it, else at least one target).
    async fn wait_for_public_green(&self, g: &Green, budget: Budget) -> Result<Vec<ObservedTarget>> {
        let want = g.desired_count.unwrap_or(1).max(1) as usize;
        self.poll(budget, || async {
            let targets = self.lb.targets(&g.public).await?;
            let live = targets.iter().filter(|t| !t.is_draining()).count();
            Ok(if live >= want {
                Ok(targets)
            } else {
                Err(format!("public target group {} holds {live} of the {want} replacement tasks", name(&g.public)))
            })
        })
        .await
    }

    /// Mirrors green's public group into its private one (full diff), given the public targets. Its registrations
    /// are not confirmed however long the private read waited in the read lane: a replacement task that stopped
    /// in between is taken off by BeforeAllowTraffic's gate, which mirrors green again at every poll and passes
    /// only on an unchanged mirror, so a confirmation would cost a read for nothing.
    async fn mirror_green(&self, source: &[ObservedTarget], g: &Green, t: &Tracker) -> Result<MirrorPlan> {
        let current = self.lb.targets(&g.private).await?;
        self.mirror_onto((source, &g.public), &current, &g.private, Some(Duration::ZERO), t).await
    }

    /// Makes `private` (holding `current`) mirror `source`, read from public group `public`: registrations
    /// first, then deregistrations. `apart` is how much later `current` was read than `source` (`None`: not
    /// known): registrations planned on reads that did not go together are confirmed first (see [`read_apart`],
    /// [`Self::confirm_registrations`]).
    async fn mirror_onto(
        &self,
        (source, public): (&[ObservedTarget], &str),
        current: &[ObservedTarget],
        private: &str,
        apart: Option<Duration>,
        t: &Tracker,
    ) -> Result<MirrorPlan> {
        let mut plan = plan_mirror(source, current, DEFAULT_BATCH);
        if !plan.register.is_empty() && read_apart(apart) {
            plan = self.confirm_registrations(plan, public, private, t).await?;
        }
        for batch in &plan.register {
            self.lb.register(private, batch).await?;
        }
        for batch in &plan.deregister {
            self.lb.deregister(private, batch).await?;
        }
        if !plan.is_empty() {
            t.mirrored(plan.registered(), plan.deregistered());
            t.note(format!("mirrored into {}: +{} -{}", name(private), plan.registered(), plan.deregistered()));
        }
        Ok(plan)
    }

    /// Keeps only the registrations of `plan` (into `private`, from public group `public`) that one more read of
    /// `public` still holds. A plan's reads are issued together but not always answered together: paced reads
    /// spread over seconds, and a throttled one is tried again later. A task that stopped between the public read
    /// and a later private one, and that its own event's reconcile took off the private side meanwhile, would
    /// otherwise be registered back into the group, where nothing looks again until a sweep reaches it.
    async fn confirm_registrations(
        &self,
        plan: MirrorPlan,
        public: &str,
        private: &str,
        t: &Tracker,
    ) -> Result<MirrorPlan> {
        let fresh = self.lb.targets(public).await?;
        let (confirmed, dropped) = plan.confirmed(&fresh, DEFAULT_BATCH);
        if !dropped.is_empty() {
            let dropped: Vec<String> = dropped.iter().map(ToString::to_string).collect();
            t.note(format!(
                "{}: not registering {}, gone from {} since it was read",
                name(private),
                dropped.join(", "),
                name(public)
            ));
        }
        Ok(confirmed)
    }

    /// Mirrors a pair; both groups are read at once, the public one in the pass the sides share.
    async fn mirror_pair(
        &self,
        reads: &ReadOnce<'_, L>,
        public: &str,
        private: &str,
        t: &Tracker,
    ) -> Result<MirrorPlan> {
        let current = async { self.lb.targets(private).await.map(|read| (read, Instant::now())) };
        let (source, current) = tokio::join!(reads.targets(public), current);
        let (source, (current, read_at)) = (source?, current?);
        // The public read may be another side's, made earlier in the pass.
        let apart = reads.answered_at(public).map(|at| read_at.saturating_duration_since(at));
        self.mirror_onto((&source, public), &current, private, apart, t).await
    }

    /// Sets a private route unless it already is `to` (weight-0 attachments included).
    async fn ensure_route(&self, which: &RouteRef, current: &Route, to: &Route, t: &Tracker) -> Result<bool> {
        if current.same_action(to) {
            return Ok(false);
        }
        self.lb.set_route(which, to).await?;
        t.route_change(current.to_string(), to.to_string());
        t.note(format!("{which}: {current} -> {to}"));
        Ok(true)
    }

    /// Read-modify-write of the deployment record with the version check, retried on conflict. State is a
    /// record, not the truth: a failure here is noted and never fails the hook.
    async fn record<U>(&self, b: &Binding, deployment_id: &str, t: &Tracker, update: U)
    where
        U: Fn(&mut DeploymentRecord) + Send + Sync,
    {
        self.record_over(b, deployment_id, None, t, update).await;
    }

    /// [`Self::record`] over a record read earlier in the invocation: its first write needs no read, and a
    /// write lost to another writer reads the record again.
    async fn record_over<U>(
        &self,
        b: &Binding,
        deployment_id: &str,
        known: Option<DeploymentRecord>,
        t: &Tracker,
        update: U,
    ) where
        U: Fn(&mut DeploymentRecord) + Send + Sync,
    {
        let id = deployment_id.to_string();
        let (app, group) = (b.application.clone(), b.deployment_group.clone());
        let fresh = || Some(DeploymentRecord::new(&id, &app, &group, now_ms()));
        let outcome = self.update_record(&id, &update, fresh, known).await;
        if let Err(e) = outcome {
            t.note(format!("warning: deployment state not recorded: {e}"));
        }
    }

    /// Like [`Self::record`] but only when a record exists (no binding known to create one).
    async fn record_existing<U>(&self, deployment_id: &str, t: &Tracker, update: U)
    where
        U: Fn(&mut DeploymentRecord) + Send + Sync,
    {
        if let Err(e) = self.update_record(deployment_id, &update, || None, None).await {
            t.note(format!("warning: deployment state not recorded: {e}"));
        }
    }

    async fn update_record<U>(
        &self,
        deployment_id: &str,
        update: &U,
        fresh: impl Fn() -> Option<DeploymentRecord>,
        mut known: Option<DeploymentRecord>,
    ) -> Result<()>
    where
        U: Fn(&mut DeploymentRecord) + Send + Sync,
    {
        for _ in 0..5 {
            let read = match known.take() {
                Some(rec) => Some(rec),
                None => self.state.deployment(deployment_id).await?,
            };
            let Some(mut rec) = read.or_else(&fresh) else {
                return Ok(());
            };
            update(&mut rec);
            rec.version += 1;
            if self.state.put_deployment(&rec).await? == Saved::Written {
                return Ok(());
            }
        }
        Err(Error::Conflict(format!(
            "deployment record {deployment_id} kept changing under five attempts to update it"
        )))
    }

    /// The binding record's view after a completed flip (best effort, version-checked), written over `known`
    /// (the binding's record as read earlier: no read first) when given. `deployment_id` is `None` when the reconciler
    /// moved the route outside a deployment's hooks.
    async fn record_binding_live(
        &self,
        b: &Binding,
        live: &str,
        deployment_id: Option<&str>,
        mut known: Option<BindingRecord>,
        t: &Tracker,
    ) {
        let result: Result<()> = async {
            for _ in 0..5 {
                let read = match known.take() {
                    Some(rec) => Some(rec),
                    None => self.state.binding(&b.application, &b.deployment_group).await?,
                };
                let mut rec = read.unwrap_or_else(|| BindingRecord::new(&b.application, &b.deployment_group));
                if rec.live_private_target_group.as_deref() == Some(live) {
                    return Ok(());
                }
                rec.live_private_target_group = Some(live.to_string());
                if let Some(id) = deployment_id {
                    rec.last_deployment = Some(id.to_string());
                }
                rec.updated_at_ms = now_ms();
                rec.version += 1;
                if self.state.put_binding(&rec).await? == Saved::Written {
                    return Ok(());
                }
            }
            Err(Error::Conflict(format!("binding record {} kept changing", b.label())))
        }
        .await;
        if let Err(e) = result {
            t.note(format!("warning: binding state not recorded: {e}"));
        }
    }

    /// [`Self::preflight`] of every private side and, alongside, the state table check: what a hook runs
    /// before it changes anything. The reconciler and the flip's slow path use the preflight alone: keeping the
    /// private side in lockstep never waits on a record, and the two hooks before the flip have checked the table
    /// already. Returns each side with its preflight, in order, and the binding's record as the check read it.
    async fn preflight_and_state(
        &self,
        b: &Binding,
        t: &Tracker,
    ) -> Result<(Vec<(Binding, Preflight)>, Option<BindingRecord>)> {
        let (pre, state) = tokio::join!(self.preflight_sides(b, t), self.state_table_usable(b, t));
        let pre = pre?;
        Ok((pre, state?))
    }

    /// [`Self::preflight`] of every private side: together (see [`Self::preflight_together`]), or each on its
    /// own when the reads together found something missing, so that the error says which side and what.
    async fn preflight_sides(&self, b: &Binding, t: &Tracker) -> Result<Vec<(Binding, Preflight)>> {
        let sides = b.sides();
        if let Some(pres) = self.preflight_together(&sides, t).await? {
            return sides.into_iter().zip(pres).map(|(side, pre)| Ok((side, pre?))).collect();
        }
        let pres = futures_util::future::try_join_all(sides.iter().map(|side| self.preflight(side, t))).await?;
        Ok(sides.into_iter().zip(pres).collect())
    }

    /// A [`SidesPass`] over every side of `b`: the sides' preflights read together; a side whose preflight fails
    /// fails alone.
    async fn sides_pass(&self, b: &Binding, t: &Tracker) -> Result<SidesPass<'_, L>> {
        let together = self.preflight_together(&b.sides(), t).await?;
        Ok(SidesPass {
            reads: ReadOnce::new(&self.lb),
            preflights: std::sync::Mutex::new(together.unwrap_or_default().into_iter().map(Some).collect()),
        })
    }

    /// The preflight read with the other sides', or this side's own when there was none.
    async fn preflight_or_own(&self, b: &Binding, read: Option<Result<Preflight>>, t: &Tracker) -> Result<Preflight> {
        match read {
            Some(pre) => pre,
            None => self.preflight(b, t).await,
        }
    }

    /// Every side's preflight from one read of them all, when there is more than one side: every side's groups in
    /// one `DescribeTargetGroups` (the public ones are every side's) and every side's private routes in one read
    /// per kind, instead of a round of reads per side. Each side's own outcome, in order; `None` when there is one
    /// side, or when the read found something missing (a read of many ARNs does not say which one), for each
    /// side's own preflight to name it. Any other failed read fails them all: reading again per side would only
    /// spend more of a throttled budget.
    async fn preflight_together(&self, sides: &[Binding], t: &Tracker) -> Result<Option<Vec<Result<Preflight>>>> {
        if sides.len() < 2 {
            return Ok(None);
        }
        let mut arns: Vec<&str> =
            sides.iter().flat_map(|s| s.public_target_groups().into_iter().chain(s.private_target_groups())).collect();
        arns.sort_unstable();
        arns.dedup();
        let refs: Vec<RouteRef> = sides
            .iter()
            .flat_map(|s| std::iter::once(s.private_production_route.clone()).chain(s.private_test_route.clone()))
            .collect();
        let (groups, routes) = tokio::join!(self.lb.target_groups(&arns), self.lb.routes(&refs));
        let (groups, routes) = match (groups, routes) {
            (Ok(groups), Ok(routes)) => (groups, routes),
            (Err(e), _) | (_, Err(e)) if e.aws_kind() != Some(AwsErrorKind::NotFound) => return Err(e),
            _ => return Ok(None),
        };
        let read = |r: &RouteRef| {
            refs.iter()
                .position(|x| x == r)
                .and_then(|i| routes.get(i))
                .cloned()
                .ok_or_else(|| Error::Invariant(format!("route {r} asked for and not answered")))
        };
        Ok(Some(
            sides
                .iter()
                .map(|side| {
                    let production = read(&side.private_production_route)?;
                    let test = side.private_test_route.as_ref().map(&read).transpose()?;
                    checked_preflight(side, &groups, production, test, t)
                })
                .collect(),
        ))
    }

    /// The state table must exist and be readable: records, the planned flip and the follower's lease live
    /// there. A missing table or a missing permission is configuration and fails; anything else (throttling
    /// that outlasted the retries, a 5xx, no answer within [`STATE_READ_BOUND`]) is noted, because a record is
    /// never the truth. The check reads the binding's record: returned (version 0 when there is none yet), or
    /// `None` when it could not be read.
    async fn state_table_usable(&self, b: &Binding, t: &Tracker) -> Result<Option<BindingRecord>> {
        let read = tokio::time::timeout(STATE_READ_BOUND, self.state.binding(&b.application, &b.deployment_group));
        let e = match read.await {
            Ok(Ok(rec)) => {
                return Ok(Some(rec.unwrap_or_else(|| BindingRecord::new(&b.application, &b.deployment_group))))
            }
            Ok(Err(e)) => e,
            Err(_) => {
                t.note(format!(
                    "warning: state table {} did not answer within {} ms",
                    self.config.table,
                    STATE_READ_BOUND.as_millis()
                ));
                return Ok(None);
            }
        };
        match e.aws_kind() {
            Some(AwsErrorKind::NotFound) => Err(Error::Misconfigured(format!(
                "the state table {} does not exist: create it (infra/template.yaml does) or set \
                 BLUEGREEN_MIRROR_TABLE to the table's name ({e})",
                self.config.table
            ))),
            Some(AwsErrorKind::AccessDenied) => Err(e),
            _ => {
                t.note(format!("warning: state table {} not readable now: {e}", self.config.table));
                Ok(None)
            }
        }
    }
}

/// The preflight's rules over what was read for side `b`: `groups` holds (at least) its four target groups.
fn checked_preflight(
    b: &Binding,
    groups: &[crate::ports::TargetGroupFacts],
    production: Route,
    test: Option<Route>,
    t: &Tracker,
) -> Result<Preflight> {
    let lb_arn = b.private_load_balancer().unwrap_or_default();
    let find = |a: &str| {
        groups.iter().find(|g| g.arn == a).ok_or_else(|| {
            Error::Misconfigured(format!("target group {a} of binding {} does not exist", b.side_label()))
        })
    };
    for p in &b.pairs {
        let (public, private) = (find(&p.public_target_group)?, find(&p.private_target_group)?);
        for g in [public, private] {
            if g.target_type != "ip" {
                return Err(Error::Misconfigured(format!(
                    "target group {} is of type `{}`; task IPs can only be mirrored between target groups of type `ip`",
                    g.name, g.target_type
                )));
            }
        }
        let (public_shape, private_shape) = (shape(public), shape(private));
        if let Some(problem) = compat::incompatibility(&public_shape, &private_shape) {
            return Err(Error::Misconfigured(format!("binding {}: {problem}", b.side_label())));
        }
        if let Some(other) = private.load_balancers.iter().find(|l| **l != lb_arn) {
            return Err(Error::Misconfigured(format!(
                "private target group {} is attached to load balancer {other}, not (only) to the binding's private \
                 load balancer {lb_arn}: a mirror must belong to the private load balancer alone",
                private.name
            )));
        }
        for warning in compat::weaker_health_checks(&public_shape, &private_shape) {
            t.note(warning);
        }
    }
    let privates = b.private_target_groups();
    let check = |what: &str, route: &Route| -> Result<()> {
        for w in &route.target_groups {
            if !privates.contains(&w.target_group.as_str()) {
                return Err(Error::Misconfigured(format!(
                    "the {what} forwards to target group {}, which binding {} does not name; \
                     point it at the binding's private target groups",
                    name(&w.target_group),
                    b.side_label()
                )));
            }
        }
        Ok(())
    };
    check("private production route", &production)?;
    if let Some(test) = &test {
        check("private test route", test)?;
    }
    Ok(Preflight { production, test })
}

/// What the compatibility rule reads of a target group.
fn shape(g: &crate::ports::TargetGroupFacts) -> GroupShape<'_> {
    GroupShape { arn: &g.arn, name: &g.name, protocol: g.protocol.as_deref(), port: g.port, health: &g.health_check }
}

/// Refuses a deployment group whose target groups the binding does not name as public ones.
fn uses_only_bound_groups(b: &Binding, target_group_names: &[String]) -> Result<()> {
    match target_group_names.iter().find(|n| b.public_named(n).is_none()) {
        Some(tg) => Err(Error::Misconfigured(format!(
            "deployment group {} uses target group {tg}, which binding {} does not name as a public target group: \
             fix the binding's pairs",
            b.deployment_group,
            b.label()
        ))),
        None => Ok(()),
    }
}

/// The keys of the non-draining targets.
fn live_keys(targets: &[ObservedTarget]) -> BTreeSet<TargetKey> {
    targets.iter().filter(|t| !t.is_draining()).map(ObservedTarget::key).collect()
}

/// Caps a health wait at the binding's timeout.
fn health_budget(budget: Budget, b: &Binding) -> Budget {
    budget.capped(Duration::from_secs(b.health_timeout_seconds))
}

impl<L: LoadBalancers, D: Deployments, S: StateStore, F: Followers> Engine<L, D, S, F> {
    /// Makes the private production route mirror the public one (I2) and keeps every private target group of
    /// the binding attached. Returns the private route now in place.
    /// The public route is read in the pass the sides share.
    async fn converge_production(
        &self,
        reads: &ReadOnce<'_, L>,
        r: &Resolved<'_>,
        b: &Binding,
        current: &Route,
        t: &Tracker,
    ) -> Result<Route> {
        let Some(listener) = r.facts.production_listeners.first() else {
            return Ok(current.clone());
        };
        let public = reads.route(&RouteRef::Listener(listener.clone())).await?;
        let desired = crate::domain::mirror_route(&public, &b.pair_arns(), b.style(), Some(current))
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.side_label())))?;
        if !desired.same_traffic(current) {
            t.note(format!("private production route had drifted from the public one ({public}); converging"));
        }
        self.ensure_route(&b.private_production_route, current, &desired, t).await?;
        Ok(desired)
    }

    /// Points the private test route at the green mirror, keeping blue's mirror attached at weight 0.
    async fn test_route_to_green(&self, b: &Binding, current: Option<&Route>, g: &Green, t: &Tracker) -> Result<()> {
        if let (Some(which), Some(current)) = (&b.private_test_route, current) {
            let mut to = Route::all_to(&g.private, &[&g.blue_private], b.style());
            to.stickiness_seconds = current.stickiness_seconds;
            self.ensure_route(which, current, &to, t).await?;
        }
        Ok(())
    }
}
