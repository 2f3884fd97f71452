//! The reconciler's use cases. `reconcile` re-establishes I1–I3 for one binding from the live public state, at
//! any moment: between deployments (scaling, replaced tasks), after a rollback that ran no hook, or on a schedule.
//! `follow` does the same many times a second while CodeDeploy shifts traffic step by step, holding a lease in
//! DynamoDB so that exactly one follower runs per binding, and hands over to a fresh invocation before its Lambda
//! deadline.
//!
//! Concurrent writers (a hook, an event-driven reconcile, the follower) need no lock: each one mirrors the public
//! route it read, then re-reads it after writing and goes round again if it moved meanwhile, so the last write
//! always mirrors a public state read after it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{now_ms, Engine, Tracker};
use crate::config::{Binding, RouteRef};
use crate::domain::{plan_reconcile, FollowerLease, Observed, Phase, Route, DEFAULT_BATCH};
use crate::harness::Budget;
use crate::ports::{DeploymentGroupFacts, Deployments, FollowRequest, Followers, LoadBalancers, Saved, StateStore};
use crate::{Error, Result};

/// What one reconcile of one binding changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciled {
    pub binding: String,
    pub registered: usize,
    pub deregistered: usize,
    pub production: Option<String>,
    pub test: Option<String>,
    pub held_back: Vec<String>,
    pub rounds: usize,
}

impl Reconciled {
    pub fn changed(&self) -> bool {
        self.registered + self.deregistered > 0 || self.production.is_some() || self.test.is_some()
    }
}

/// How the follower paces itself.
const FOLLOW_TICK: Duration = Duration::from_millis(150);
const FULL_RECONCILE_EVERY: Duration = Duration::from_secs(5);
const STATUS_EVERY: Duration = Duration::from_secs(2);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

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

    /// Re-establishes I1–I3 for `b` from the live public state.
    pub async fn reconcile(&self, b: &Binding, group: &DeploymentGroupFacts, t: &Tracker) -> Result<Reconciled> {
        t.binding(b.label());
        let mut out = Reconciled { binding: b.label(), ..Default::default() };
        let public_prod = group.production_listeners.first().map(|l| RouteRef::Listener(l.clone()));
        let public_test = group.test_listeners.first().map(|l| RouteRef::Listener(l.clone()));
        for round in 1..=3 {
            out.rounds = round;
            let pre = self.preflight(b, t).await?;
            let seen = self.observe(b, public_prod.as_ref(), public_test.as_ref(), pre.production, pre.test).await?;
            let plan = plan_reconcile(&b.pair_arns(), b.style(), &seen, DEFAULT_BATCH)
                .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.label())))?;
            out.held_back = plan.held_back.clone();
            if plan.is_empty() {
                break;
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
                if let [live] = to.live().as_slice() {
                    self.record_binding_live(b, live, None, t).await;
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
            // Read-after-write: if the public route moved while we wrote, go round again.
            let (Some(public_ref), Some(mirrored)) = (&public_prod, &seen.public_production) else { break };
            if plan.production.is_none() || self.lb.route(public_ref).await?.same_traffic(mirrored) {
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

    /// Reads both sides: routes and the targets of all four groups, concurrently.
    async fn observe(
        &self,
        b: &Binding,
        public_prod: Option<&RouteRef>,
        public_test: Option<&RouteRef>,
        private_production: Route,
        private_test: Option<Route>,
    ) -> Result<Observed> {
        let route_of = |r: Option<&RouteRef>| {
            let r = r.cloned();
            async move {
                match r {
                    Some(r) => self.lb.route(&r).await.map(Some),
                    None => Ok(None),
                }
            }
        };
        let tgs: Vec<&str> = b.public_target_groups().into_iter().chain(b.private_target_groups()).collect();
        let reads = futures_util::future::try_join_all(tgs.iter().map(|tg| self.lb.targets(tg)));
        let (pp, pt, targets) = tokio::join!(route_of(public_prod), route_of(public_test), reads);
        Ok(Observed {
            public_production: pp?,
            public_test: pt?,
            private_production: Some(private_production),
            private_test,
            targets: tgs.iter().map(|s| s.to_string()).zip(targets?).collect(),
        })
    }

    /// Follows a deployment's public weights onto the private side until the deployment is over, the lease is
    /// lost, or the budget nears its end (then a fresh follower is started and takes the lease over).
    pub async fn follow(&self, req: &FollowRequest, owner: &str, budget: Budget, t: &Tracker) -> Result<()> {
        let b = self.config.binding(&req.application, &req.deployment_group).ok_or_else(|| {
            Error::Misconfigured(format!("no binding for {}/{}", req.application, req.deployment_group))
        })?;
        let group = self.group(b).await?;
        let Some(mut lease) = self.take_lease(req, owner).await? else {
            t.note(format!("{} is already followed by a live follower", b.label()));
            return Ok(());
        };
        t.note(format!("following deployment {} of {}", req.deployment_id, b.label()));
        let public_ref =
            group.production_listeners.first().map(|l| RouteRef::Listener(l.clone())).ok_or_else(|| {
                Error::Misconfigured(format!("deployment group {} has no production listener", b.deployment_group))
            })?;
        let handover_at = budget.deadline() - (budget.remaining() / 4).min(Duration::from_secs(30));
        let (mut last_public, mut last_full, mut last_status, mut last_beat) =
            (None::<Route>, None, Instant::now(), Instant::now());
        let mut handing_over = false;
        loop {
            // A transient failure (throttling that outlasted the SDK's retries, a 5xx) costs one tick, not the
            // follower: the next tick reads again.
            let tick = async {
                let public = self.lb.route(&public_ref).await?;
                let moved = last_public.as_ref().is_none_or(|p| !p.same_action(&public));
                let full_due = last_full.is_none_or(|at: Instant| at.elapsed() >= FULL_RECONCILE_EVERY);
                if moved || full_due {
                    let r = self.reconcile(b, &group, t).await?;
                    if !r.held_back.is_empty() && !moved {
                        t.note(r.held_back.join("; "));
                    }
                    // A held-back move is retried at the next tick, not when the public side moves again.
                    last_public = if r.held_back.is_empty() { Some(public.clone()) } else { None };
                    last_full = Some(Instant::now());
                }
                Ok::<_, Error>(public)
            };
            let public = match tick.await {
                Ok(public) => public,
                Err(e) if e.is_transient() => {
                    t.note(format!("follower tick failed, retrying: {e}"));
                    tokio::time::sleep(FOLLOW_TICK).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if last_status.elapsed() >= STATUS_EVERY {
                last_status = Instant::now();
                if self.deployment_over(req, &public).await {
                    self.reconcile(b, &group, t).await?;
                    self.release_lease(&mut lease).await;
                    t.note(format!("deployment {} is over; follower done", req.deployment_id));
                    return Ok(());
                }
            }
            if last_beat.elapsed() >= HEARTBEAT_EVERY {
                last_beat = Instant::now();
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
                last_beat = Instant::now();
                match self.followers.start(req).await {
                    Ok(true) => t.note("handing over to a fresh follower before the deadline".to_string()),
                    Ok(false) => t.note("no follower function configured to hand over to".to_string()),
                    Err(e) => t.note(format!("could not start the next follower: {e}")),
                }
            }
            if budget.remaining() <= FOLLOW_TICK {
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_TICK).await;
        }
    }

    /// The deployment is over when CodeDeploy says so, or when AfterAllowTraffic is done and the public route
    /// rests on one target group.
    async fn deployment_over(&self, req: &FollowRequest, public: &Route) -> bool {
        if let Ok(Some(rec)) = self.state.deployment(&req.deployment_id).await {
            if rec.phases.contains_key(Phase::AfterAllowTraffic.as_str()) && public.live().len() == 1 {
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

/// What woke the reconciler, in the engine's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Follow a deployment's traffic shifting (started by BeforeAllowTraffic, or by a follower handing over).
    Follow(FollowRequest),
    /// A CodeDeploy deployment changed state (START, SUCCESS, FAILURE, STOP, READY, ...).
    Deployment { application: String, deployment_group: String, deployment_id: String, state: String },
    /// An ECS task of `service` in `cluster` changed state.
    Task { cluster: String, service: String },
    /// The schedule: every binding.
    Schedule,
}

impl<L: LoadBalancers, D: Deployments, S: StateStore, F: Followers> Engine<L, D, S, F> {
    /// The bindings a trigger concerns. Bindings whose deployment group cannot be read are returned as errors.
    pub async fn bindings_for(&self, trigger: &Trigger) -> Vec<(&Binding, Result<DeploymentGroupFacts>)> {
        let candidates: Vec<&Binding> = match trigger {
            Trigger::Follow(_) => Vec::new(),
            Trigger::Deployment { application, deployment_group, .. } => {
                self.config.binding(application, deployment_group).into_iter().collect()
            }
            Trigger::Task { .. } | Trigger::Schedule => self.config.bindings.iter().collect(),
        };
        let mut out = Vec::new();
        for b in candidates {
            let group = self.group(b).await;
            let wanted = match (trigger, &group) {
                (Trigger::Task { cluster, service }, Ok(g)) => {
                    g.ecs_services.iter().any(|(c, s)| c == cluster && s == service)
                }
                _ => true,
            };
            if wanted {
                out.push((b, group));
            }
        }
        out
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
        Ok(t.snapshot().notes.into_iter().filter(|n| n.starts_with("warning")).collect())
    }

    /// Both sides of a binding and what a reconcile would change, without changing anything.
    pub async fn status(&self, b: &Binding, group: &DeploymentGroupFacts, t: &Tracker) -> Result<BindingStatus> {
        let pre = self.preflight(b, t).await?;
        let public_prod = group.production_listeners.first().map(|l| RouteRef::Listener(l.clone()));
        let public_test = group.test_listeners.first().map(|l| RouteRef::Listener(l.clone()));
        let seen = self.observe(b, public_prod.as_ref(), public_test.as_ref(), pre.production, pre.test).await?;
        let plan = plan_reconcile(&b.pair_arns(), b.style(), &seen, DEFAULT_BATCH)
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.label())))?;
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
            binding: b.label(),
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
