//! Use cases: what each hook decides, written against the ports only. The steps the hooks share (resolve the
//! deployment to a binding, find green, mirror a pair) live here, the preflight and the records in modules of
//! their own; each hook's sequence lives in its own module. Failure policy (report, retry) belongs to the harness.

mod after_allow_traffic;
mod after_install;
mod before_allow_traffic;
mod bindings;
mod follow;
mod once;
mod preflight;
mod reconcile;
mod records;
mod rollback;
mod shadow;
mod status;
mod sweep;
mod trigger;

pub use bindings::BINDING_CACHE_TTL;
pub use reconcile::{Reconciled, EVENTS_SETTLE};
pub use shadow::Shadow;
pub use status::{BindingStatus, PlanSummary};
pub use trigger::{Concerned, Trigger};

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use crate::config::{Binding, Config, Mode, RouteRef};
use crate::domain::{arn, plan_mirror, MirrorPlan, ObservedTarget, Phase, Route, TargetKey, DEFAULT_BATCH};
use crate::harness::{Budget, Epilogue, Tracker};
use crate::ports::{Coordination, DeploymentFacts, Deployments, Followers, LoadBalancers, StateStore, TaskSetLabel};
use crate::{AwsErrorKind, Error, Result};
use once::ReadOnce;
use preflight::{uses_only_bound_groups, SidePass};

/// The engine: every function's use cases (the three hooks, the reconciler) over one set of ports.
#[derive(Debug)]
pub struct Engine<L, D, S, F> {
    /// ELB, through shadow mode for the bindings that observe.
    pub lb: Shadow<L>,
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

/// What the two hooks before the flip set up first: the deployment resolved to its binding, every side's
/// preflight, the binding's record as the state table's check read it, green, and each side's private production
/// route once blue's mirror is in place under it.
struct Setup<'a> {
    r: Resolved<'a>,
    sides: Vec<(Binding, preflight::Preflight)>,
    binding_record: Option<crate::domain::BindingRecord>,
    green: Green,
    productions: Vec<Route>,
}

/// How much of a hook's budget a setup tried again must leave: an attempt under throttling spends up to half a
/// minute in its reads' own pauses, and the hook must still report. A hook given less than two of these keeps
/// half of its time instead.
const SETUP_AGAIN_MARGIN: Duration = Duration::from_secs(60);

/// The longest wait between two attempts at a setup.
const SETUP_AGAIN_MAX_WAIT: Duration = Duration::from_secs(30);

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

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    pub fn new(lb: L, deployments: D, state: S, followers: F, config: Config) -> Self {
        let lb = Shadow::new(lb);
        for b in &config.bindings {
            lb.scope(b, config.mode_of(b) == Mode::Observe);
        }
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
        // The installation's mode until the deployment resolves to a binding, which may name its own.
        t.observing(self.config.mode == Mode::Observe);
        self.lb.begin();
        // A hook's reads wait their turn in the read lane, as long as it takes: a hook has minutes.
        let result = crate::reads::under(
            crate::reads::ReadPolicy::new(crate::domain::LaneMode::Wait, None),
            crate::harness::guard(budget, phase.as_str(), work),
        )
        .await;
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
        if t.observes() {
            let failure = result.as_ref().err().map(|e| format!("{phase}: {}", crate::harness::error_chain(e)));
            self.keep_would_be(Some(deployment_id), phase.as_str(), failure, t).await;
        } else if let Err(e) = &result {
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
        t.deployment_group(&facts.application, &facts.deployment_group);
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
        t.observing(self.observes(&binding));
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
            let last = {
                let _one_check = crate::reads::check();
                match check().await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(state)) => state,
                    Err(e) if e.is_transient() => format!("last read failed: {e}"),
                    Err(e) => return Err(e),
                }
            };
            let step = self.config.poll_interval;
            if budget.remaining() <= step {
                return Err(Error::Timeout(last));
            }
            tokio::time::sleep(step).await;
        }
    }

    /// The setup of AfterInstall and BeforeAllowTraffic ([`Setup`]), one check in the read lane, tried again while
    /// it fails for a transient reason (ELB throttling the account, a 5xx, a dropped connection) and the budget
    /// leaves [`SETUP_AGAIN_MARGIN`] (or half of what it had, if less): after 1 s, doubling up to
    /// [`SETUP_AGAIN_MAX_WAIT`]. A hook has up to 15 minutes where failing rolls the deployment back, and an outage
    /// of ELB's reads lasts tens of seconds to minutes. Its writes mirror what it read (blue's membership, the
    /// private route to blue's mirror), so an attempt made again changes nothing twice.
    async fn setup(&self, deployment_id: &str, budget: Budget, t: &Tracker) -> Result<Setup<'_>> {
        let attempt = || async {
            let _check = crate::reads::check();
            let r = self.resolve(deployment_id, t).await?;
            let (sides, binding_record) = self.preflight_and_state(&r.binding, t).await?;
            let green = self.green(&r, t).await?;
            // Blue's mirror first: it is what each private production route serves until AfterAllowTraffic.
            let reads = &ReadOnce::new(&self.lb);
            let productions = futures_util::future::try_join_all(sides.iter().map(|(side, pre)| async {
                let g = green.on(side);
                self.mirror_pair(reads, &g.blue_public, &g.blue_private, t).await?;
                self.converge_production(reads, &r, side, &pre.production, t).await
            }))
            .await?;
            Ok::<_, Error>(Setup { r, sides, binding_record, green, productions })
        };
        let margin = SETUP_AGAIN_MARGIN.min(budget.remaining() / 2);
        let mut wait = Duration::from_secs(1);
        loop {
            match attempt().await {
                Err(e) if e.is_transient() && budget.remaining() > wait + margin => {
                    t.note(format!(
                        "setup failed for a reason that passes ({e}); trying again in {} s",
                        wait.as_secs()
                    ));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(SETUP_AGAIN_MAX_WAIT);
                }
                other => return other,
            }
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

    /// Makes `private` (holding `current`) mirror `source`, read from public group `public` `age` ago (`None`: not
    /// known): registrations first, then deregistrations. Registrations planned on a stale public read are
    /// confirmed first ([`crate::domain::stale`], [`Self::confirm_registrations`]).
    async fn mirror_onto(
        &self,
        (source, public): (&[ObservedTarget], &str),
        current: &[ObservedTarget],
        private: &str,
        age: Option<Duration>,
        t: &Tracker,
    ) -> Result<MirrorPlan> {
        let mut plan = plan_mirror(source, current, DEFAULT_BATCH);
        if !plan.register.is_empty() && crate::domain::stale(age) {
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
        reads: &ReadOnce<'_, Shadow<L>>,
        public: &str,
        private: &str,
        t: &Tracker,
    ) -> Result<MirrorPlan> {
        let (source, current) = tokio::join!(reads.targets(public), self.lb.targets(private));
        let (source, current) = (source?, current?);
        // The public read may be another side's, made earlier in the pass.
        self.mirror_onto((&source, public), &current, private, reads.age(public), t).await
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
}

/// The keys of the non-draining targets.
fn live_keys(targets: &[ObservedTarget]) -> BTreeSet<TargetKey> {
    targets.iter().filter(|t| !t.is_draining()).map(ObservedTarget::key).collect()
}

/// Caps a health wait at the binding's timeout.
fn health_budget(budget: Budget, b: &Binding) -> Budget {
    budget.capped(Duration::from_secs(b.health_timeout_seconds))
}

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// Makes the private production route mirror the public one (I2) and keeps every private target group of
    /// the binding attached. Returns the private route now in place.
    /// The public route is read in the pass the sides share.
    async fn converge_production(
        &self,
        reads: &ReadOnce<'_, Shadow<L>>,
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
