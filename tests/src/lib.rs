//! In-memory fakes behind the ports, and a fixture builder (`World`) that sets up one binding with its public
//! and private load balancers the way a real account would look before a deployment. The fakes keep a log of
//! every call and every route change, can fail or panic at the n-th call, and check invariant I4 on every
//! private route change, so that flow tests assert on outcomes rather than on "it ran".

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_debug_implementations)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bluegreen_mirror::config::{Config, RouteRef};
use bluegreen_mirror::domain::{
    BindingRecord, Census, CensusEntry, DeploymentRecord, FollowerLease, HealthCheck, HealthState, LaneMode,
    ObservedTarget, Phase, Route, RouteStyle, StoredBinding, Target, TargetKey, TrafficShift, WeightedTargetGroup,
    ARNS_PER_CALL,
};
use bluegreen_mirror::harness::{self, Invocation, Outcome, Summary, Tracker};
use bluegreen_mirror::ports::{
    Claim, Coordination, DeploymentFacts, DeploymentGroupFacts, Deployments, FollowRequest, Followers, HookReporter,
    HookStatus, LoadBalancers, Reported, Saved, StateStore, TargetGroupFacts, TaskSet, TaskSetLabel,
};
use bluegreen_mirror::reads;
use bluegreen_mirror::usecase::Engine;
use bluegreen_mirror::{AwsErrorKind, Error, Result};

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Fail(AwsErrorKind),
    Panic,
}

/// The shared call log and fault plan of all fakes of one world.
#[derive(Default)]
pub struct Calls {
    log: Mutex<Vec<String>>,
    /// The reads among them with what each read: `(op, arn)`.
    reads: Mutex<Vec<(String, String)>>,
    fault_at: Mutex<Option<(usize, Fault)>>,
    /// Every call whose operation starts with the prefix fails with the kind (a missing resource or permission).
    fail_every: Mutex<Vec<(String, AwsErrorKind)>>,
    /// Every call whose operation starts with the prefix first hangs this long (a call that times out).
    stall_every: Mutex<Vec<(String, Duration)>>,
    /// Every call whose operation starts with the prefix steps aside from a busy read lane, when the reads wait
    /// their turn in it (as in the adapter, counted and outside reads never do).
    lane_busy: Mutex<Vec<String>>,
    /// The read pace at each read that found it changed: an invocation's own (`reads::pace_at`), or `None`, the
    /// process's.
    paces: Mutex<Vec<Option<f64>>>,
    /// ELB reads that waited their turn in the lane (the others were counted, or outside it).
    waited: Mutex<usize>,
    /// The calls made at once (`LoadBalancers::at_once`), in order.
    at_once: Mutex<Vec<String>>,
}

impl Calls {
    fn enter(&self, op: &str) -> Result<()> {
        self.enter_as(op, true)
    }

    /// A call; `in_lane`: false for a read made at once (`LoadBalancers::at_once`), which never waits in the lane
    /// whatever the invocation's mode.
    fn enter_as(&self, op: &str, in_lane: bool) -> Result<()> {
        let n = {
            let mut log = self.log.lock().unwrap();
            log.push(op.to_string());
            log.len() - 1
        };
        if !in_lane {
            self.at_once.lock().unwrap().push(op.to_string());
        }
        if op.starts_with("elb:Describe") {
            let pace = reads::pace();
            let mut paces = self.paces.lock().unwrap();
            if paces.last() != Some(&pace) {
                paces.push(pace);
            }
        }
        // How the invocation's reads take their turns in the lane, by the adapter's own rules.
        let waits = in_lane && reads::mode() == LaneMode::Wait;
        if waits && self.lane_busy.lock().unwrap().iter().any(|p| op.starts_with(p.as_str())) {
            return Err(Error::LaneBusy(format!("injected: the read lane is busy for {op}")));
        }
        if waits && op.starts_with("elb:Describe") {
            *self.waited.lock().unwrap() += 1;
            reads::had_turn();
        }
        if let Some((_, kind)) = self.fail_every.lock().unwrap().iter().find(|(p, _)| op.starts_with(p.as_str())) {
            return Err(Error::Aws {
                service: "fake",
                operation: "injected",
                kind: *kind,
                message: format!("injected {kind:?} on every {op}"),
                source: None,
            });
        }
        let plan = *self.fault_at.lock().unwrap();
        match plan {
            Some((at, Fault::Fail(kind))) if at == n => Err(Error::Aws {
                service: "fake",
                operation: "injected",
                kind,
                message: format!("injected {kind:?} at call {n} ({op})"),
                source: None,
            }),
            Some((at, Fault::Panic)) if at == n => panic!("injected panic at call {n} ({op})"),
            _ => Ok(()),
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
        self.reads.lock().unwrap().clear();
        *self.waited.lock().unwrap() = 0;
    }

    /// How many ELB reads waited their turn in the read lane: in a check, its first; outside one, every read.
    pub fn waited_reads(&self) -> usize {
        *self.waited.lock().unwrap()
    }

    fn read_of(&self, op: &str, arn: &str) {
        self.reads.lock().unwrap().push((op.to_string(), arn.to_string()));
    }

    /// Forgets the calls made at once so far.
    pub fn clear_at_once(&self) {
        self.at_once.lock().unwrap().clear();
    }

    /// The calls made at once (neither paced, queued nor held), in order.
    pub fn at_once(&self) -> Vec<String> {
        self.at_once.lock().unwrap().clone()
    }

    /// Every read that names what it read (`op`, ARN), in order.
    pub fn reads(&self) -> Vec<(String, String)> {
        self.reads.lock().unwrap().clone()
    }

    /// How many reads of `op` asked for `arn` (a target group's targets, a listener's or rule's route).
    pub fn reads_of(&self, op: &str, arn: &str) -> usize {
        self.reads.lock().unwrap().iter().filter(|(o, a)| o == op && a == arn).count()
    }

    /// How many calls of `op` (e.g. `dynamodb:Scan`) the log holds.
    pub fn count(&self, op: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|c| *c == op).count()
    }

    pub fn fault_at(&self, n: usize, fault: Fault) {
        *self.fault_at.lock().unwrap() = Some((n, fault));
    }

    pub fn no_faults(&self) {
        *self.fault_at.lock().unwrap() = None;
        self.fail_every.lock().unwrap().clear();
        self.stall_every.lock().unwrap().clear();
        self.lane_busy.lock().unwrap().clear();
    }

    /// Makes every call whose operation starts with `prefix` step aside as a read whose turn in the lane comes
    /// after its invocation's time does, until [`Self::no_faults`].
    pub fn lane_busy_on(&self, prefix: &str) {
        self.lane_busy.lock().unwrap().push(prefix.to_string());
    }

    /// Makes every call whose operation starts with `prefix` hang for `d` (virtual time) before it answers.
    pub fn stall_every(&self, prefix: &str, d: Duration) {
        self.stall_every.lock().unwrap().push((prefix.to_string(), d));
    }

    async fn stall(&self, op: &str) {
        let d = self.stall_every.lock().unwrap().iter().find(|(p, _)| op.starts_with(p.as_str())).map(|(_, d)| *d);
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }

    /// Fails every call whose operation starts with `prefix` (e.g. `dynamodb:`) until [`Self::no_faults`].
    pub fn fail_every(&self, prefix: &str, kind: AwsErrorKind) {
        self.fail_every.lock().unwrap().push((prefix.to_string(), kind));
    }
}

/// A target group in the fake ELB.
#[derive(Clone)]
pub struct FakeGroup {
    pub facts: TargetGroupFacts,
    pub targets: BTreeMap<TargetKey, ObservedTarget>,
    /// The group's `deregistration_delay.timeout_seconds`.
    pub deregistration_delay: Duration,
}

#[derive(Default)]
struct ElbState {
    groups: BTreeMap<String, FakeGroup>,
    routes: BTreeMap<String, Route>,
    /// Every change of a route: (route ARN, new route, when).
    route_log: Vec<(String, Route, tokio::time::Instant)>,
    /// Target groups whose load balancer cannot reach the tasks: targets registered there stay unhealthy.
    unreachable: BTreeSet<String>,
    /// Route changes that left a private route forwarding only to groups with no healthy target.
    dark: Vec<String>,
    /// Routes whose writes are refused (AccessDenied), to fail one private side.
    refused: BTreeSet<String>,
    private_routes: BTreeSet<String>,
    /// Resource ARN → tags.
    tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Runs once, right after the next read of targets has answered: something that changes between two reads
    /// of one reconcile.
    after_next_targets_read: Option<ElbChange>,
    /// Target groups whose reads answer this much later than the others (paced, or retried after a throttle).
    read_delay: BTreeMap<String, Duration>,
}

/// A change of the fake ELB's state, made at a chosen moment.
type ElbChange = Box<dyn FnOnce(&mut ElbState) + Send>;

/// ELB held in memory. Registration makes a target healthy at once (or unhealthy where unreachable);
/// deregistration removes it (draining is modelled by tests that insert draining targets themselves).
#[derive(Clone)]
pub struct FakeElb {
    state: Arc<Mutex<ElbState>>,
    calls: Arc<Calls>,
    /// Its reads go at once (`LoadBalancers::at_once`): never in the lane, whatever the invocation's mode.
    at_once: bool,
}

impl FakeElb {
    fn s(&self) -> MutexGuard<'_, ElbState> {
        self.state.lock().unwrap()
    }

    /// The read pace (reads a second) at each read that found it changed, in order: `None` is the process's own.
    pub fn paces(&self) -> Vec<Option<f64>> {
        self.calls.paces.lock().unwrap().clone()
    }

    pub fn tag(&self, arn: &str, key: &str, value: &str) {
        self.s().tags.entry(arn.to_string()).or_default().insert(key.to_string(), value.to_string());
    }

    pub fn members(&self, tg: &str) -> Vec<String> {
        self.s().groups[tg].targets.values().filter(|t| !t.is_draining()).map(|t| t.key().to_string()).collect()
    }

    pub fn route_of(&self, arn: &str) -> Route {
        self.s().routes[arn].clone()
    }

    /// Changes a route from outside (what CodeDeploy does to the public side), logged like any change.
    pub fn put_route(&self, arn: &str, route: Route) {
        let mut s = self.s();
        s.route_log.push((arn.to_string(), route.clone(), tokio::time::Instant::now()));
        s.routes.insert(arn.to_string(), route);
    }

    /// Once the next read of targets has answered, the targets `keys` leave the groups `tgs`: a task that stops
    /// while a reconcile's reads are spread out, taken off both sides (ECS on the public one, its own event's
    /// reconcile on the private one) before the reconcile reads the rest.
    pub fn remove_after_next_read(&self, tgs: &[&str], keys: &[TargetKey]) {
        let (tgs, keys): (Vec<String>, Vec<TargetKey>) = (tgs.iter().map(|t| t.to_string()).collect(), keys.to_vec());
        self.s().after_next_targets_read = Some(Box::new(move |s: &mut ElbState| {
            for tg in &tgs {
                if let Some(g) = s.groups.get_mut(tg) {
                    keys.iter().for_each(|k| {
                        g.targets.remove(k);
                    });
                }
            }
        }));
    }

    /// Reads of `tg`'s targets answer `d` later than the others.
    pub fn delay_reads_of(&self, tg: &str, d: Duration) {
        self.s().read_delay.insert(tg.to_string(), d);
    }

    pub fn remove_targets(&self, tg: &str, keys: &[TargetKey]) {
        self.group_mut(tg, |g| {
            keys.iter().for_each(|k| {
                g.targets.remove(k);
            })
        });
    }

    pub fn route_log(&self) -> Vec<(String, Route)> {
        self.s().route_log.iter().map(|(a, r, _)| (a.clone(), r.clone())).collect()
    }

    /// Route changes with the (tokio) time they happened.
    pub fn timed_route_log(&self) -> Vec<(String, Route, tokio::time::Instant)> {
        self.s().route_log.clone()
    }

    pub fn dark_moments(&self) -> Vec<String> {
        self.s().dark.clone()
    }

    /// Refuses every write of this route with AccessDenied, as a role missing that listener would.
    pub fn refuse_writes(&self, arn: &str) {
        self.s().refused.insert(arn.to_string());
    }

    pub fn make_unreachable(&self, tg: &str) {
        self.s().unreachable.insert(tg.to_string());
    }

    pub fn group_mut(&self, tg: &str, f: impl FnOnce(&mut FakeGroup)) {
        f(self.s().groups.get_mut(tg).unwrap())
    }

    pub fn remove_group(&self, tg: &str) {
        self.s().groups.remove(tg);
    }

    pub fn remove_route(&self, arn: &str) {
        self.s().routes.remove(arn);
    }

    /// Adds targets directly (what ECS does to a public target group).
    pub fn add_targets(&self, tg: &str, keys: &[TargetKey], health: HealthState) {
        let mut s = self.s();
        let g = s.groups.get_mut(tg).unwrap();
        for k in keys {
            g.targets.insert(*k, observed(*k, health));
        }
    }

    pub fn set_health(&self, tg: &str, health: HealthState) {
        self.group_mut(tg, |g| g.targets.values_mut().for_each(|t| t.health = health));
    }
}

fn observed(key: TargetKey, health: HealthState) -> ObservedTarget {
    ObservedTarget { target: Target { key, availability_zone: None }, health, reason: None }
}

impl FakeElb {
    fn enter(&self, op: &str) -> Result<()> {
        self.calls.enter_as(op, !self.at_once)
    }

    async fn read_targets(&self, target_group: &str) -> Result<Vec<ObservedTarget>> {
        self.enter("elb:DescribeTargetHealth")?;
        self.calls.read_of("elb:DescribeTargetHealth", target_group);

        self.calls.stall("elb:DescribeTargetHealth").await;
        let delay = self.s().read_delay.get(target_group).copied();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut s = self.s();
        let g = s.groups.get(target_group).ok_or_else(|| not_found("DescribeTargetHealth", target_group))?;
        let read = g.targets.values().cloned().collect();
        if let Some(change) = s.after_next_targets_read.take() {
            change(&mut s);
        }
        Ok(read)
    }
}

impl LoadBalancers for FakeElb {
    async fn target_groups(&self, arns: &[&str]) -> Result<Vec<TargetGroupFacts>> {
        // As the adapter reads them: ARNS_PER_CALL to a call.
        for _ in arns.chunks(ARNS_PER_CALL) {
            self.enter("elb:DescribeTargetGroups")?;
        }
        let s = self.s();
        arns.iter()
            .map(|a| {
                s.groups.get(*a).map(|g| g.facts.clone()).ok_or_else(|| Error::Aws {
                    service: "elasticloadbalancing",
                    operation: "DescribeTargetGroups",
                    kind: AwsErrorKind::NotFound,
                    message: format!("TargetGroupNotFound: {a}"),
                    source: None,
                })
            })
            .collect()
    }

    fn at_once(&self) -> Self {
        Self { at_once: true, ..self.clone() }
    }

    async fn targets(&self, target_group: &str) -> Result<Vec<ObservedTarget>> {
        self.read_targets(target_group).await
    }

    async fn register(&self, target_group: &str, targets: &[Target]) -> Result<()> {
        self.calls.enter("elb:RegisterTargets")?;
        let mut s = self.s();
        let health = if s.unreachable.contains(target_group) { HealthState::Unhealthy } else { HealthState::Healthy };
        let g = s.groups.get_mut(target_group).ok_or_else(|| not_found("RegisterTargets", target_group))?;
        for t in targets {
            g.targets.insert(t.key, ObservedTarget { target: t.clone(), health, reason: None });
        }
        Ok(())
    }

    async fn deregister(&self, target_group: &str, targets: &[TargetKey]) -> Result<()> {
        self.calls.enter("elb:DeregisterTargets")?;
        let mut s = self.s();
        let g = s.groups.get_mut(target_group).ok_or_else(|| not_found("DeregisterTargets", target_group))?;
        for k in targets {
            g.targets.remove(k);
        }
        Ok(())
    }

    async fn route(&self, route: &RouteRef) -> Result<Route> {
        let op = match route {
            RouteRef::Listener(_) => "elb:DescribeListeners",
            RouteRef::Rule(_) => "elb:DescribeRules",
        };
        self.enter(op)?;
        self.calls.read_of(op, route.arn());
        // What a read answers is what stood when it was answered, after any wait.
        self.calls.stall(op).await;
        self.s().routes.get(route.arn()).cloned().ok_or_else(|| not_found("DescribeListeners", route.arn()))
    }

    async fn routes(&self, routes: &[RouteRef]) -> Result<Vec<Route>> {
        // As the adapter reads them: the listeners in one call and the rules in another, ARNS_PER_CALL to a call.
        for (is_rule, op) in [(false, "elb:DescribeListeners"), (true, "elb:DescribeRules")] {
            let mut arns: Vec<&str> =
                routes.iter().filter(|r| matches!(r, RouteRef::Rule(_)) == is_rule).map(RouteRef::arn).collect();
            arns.sort_unstable();
            arns.dedup();
            if !arns.is_empty() {
                for _ in arns.chunks(ARNS_PER_CALL) {
                    self.enter(op)?;
                }
                for r in routes.iter().filter(|r| matches!(r, RouteRef::Rule(_)) == is_rule) {
                    self.calls.read_of(op, r.arn());
                }
                self.calls.stall(op).await;
            }
        }
        let s = self.s();
        routes
            .iter()
            .map(|r| s.routes.get(r.arn()).cloned().ok_or_else(|| not_found("DescribeListeners", r.arn())))
            .collect()
    }

    async fn set_route(&self, route: &RouteRef, to: &Route) -> Result<()> {
        self.calls.enter(match route {
            RouteRef::Listener(_) => "elb:ModifyListener",
            RouteRef::Rule(_) => "elb:ModifyRule",
        })?;
        let mut s = self.s();
        if !s.routes.contains_key(route.arn()) {
            return Err(not_found("ModifyListener", route.arn()));
        }
        if s.refused.contains(route.arn()) {
            return Err(Error::Aws {
                service: "elasticloadbalancing",
                operation: "ModifyListener",
                kind: AwsErrorKind::AccessDenied,
                message: format!("not authorized to perform elasticloadbalancing:ModifyListener on {}", route.arn()),
                source: None,
            });
        }
        if route.style() == RouteStyle::Single && to.target_groups.len() != 1 {
            return Err(Error::Aws {
                service: "elasticloadbalancing",
                operation: "ModifyListener",
                kind: AwsErrorKind::Invalid,
                message: "an NLB listener forwards to one target group".into(),
                source: None,
            });
        }
        if s.private_routes.contains(route.arn()) {
            let dark = to.live().iter().all(|tg| {
                s.groups.get(*tg).is_none_or(|g| !g.targets.values().any(|t| t.health == HealthState::Healthy))
            });
            if dark {
                let note = format!("{} -> {to}", route.arn());
                s.dark.push(note);
            }
        }
        s.routes.insert(route.arn().to_string(), to.clone());
        s.route_log.push((route.arn().to_string(), to.clone(), tokio::time::Instant::now()));
        Ok(())
    }

    async fn deregistration_delays(&self, arns: &[&str]) -> Result<BTreeMap<String, Duration>> {
        let mut out = BTreeMap::new();
        for arn in arns {
            self.enter("elb:DescribeTargetGroupAttributes")?;
            let s = self.s();
            let g = s.groups.get(*arn).ok_or_else(|| not_found("DescribeTargetGroupAttributes", arn))?;
            out.insert(arn.to_string(), g.deregistration_delay);
        }
        Ok(out)
    }

    async fn tags(&self, arns: &[&str]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        self.enter("elb:DescribeTags")?;
        let s = self.s();
        Ok(arns.iter().map(|a| (a.to_string(), s.tags.get(*a).cloned().unwrap_or_default())).collect())
    }
}

fn not_found(op: &'static str, what: &str) -> Error {
    Error::Aws {
        service: "elasticloadbalancing",
        operation: op,
        kind: AwsErrorKind::NotFound,
        message: format!("not found: {what}"),
        source: None,
    }
}

type DeploymentEntry = (DeploymentFacts, Vec<TaskSet>);

/// CodeDeploy, both sides, in memory. Reports follow CodeDeploy's rule: the first status of an execution wins
/// and later ones get `LifecycleEventAlreadyCompletedException`.
#[derive(Clone, Default)]
pub struct FakeCodeDeploy {
    deployments: Arc<Mutex<BTreeMap<String, DeploymentEntry>>>,
    reports: Arc<Mutex<Vec<(String, String, HookStatus)>>>,
    task_sets_fail: Arc<Mutex<bool>>,
    calls: Arc<Calls>,
}

impl FakeCodeDeploy {
    pub fn put(&self, facts: DeploymentFacts, sets: Vec<TaskSet>) {
        self.deployments.lock().unwrap().insert(facts.deployment_id.clone(), (facts, sets));
    }

    pub fn edit(&self, id: &str, f: impl FnOnce(&mut DeploymentFacts)) {
        f(&mut self.deployments.lock().unwrap().get_mut(id).unwrap().0)
    }

    /// Every report received, accepted or not.
    pub fn reports(&self) -> Vec<(String, String, HookStatus)> {
        self.reports.lock().unwrap().clone()
    }

    pub fn without_task_sets(&self) {
        *self.task_sets_fail.lock().unwrap() = true;
    }
}

impl Deployments for FakeCodeDeploy {
    async fn deployment_group(&self, application: &str, group: &str) -> Result<DeploymentGroupFacts> {
        self.calls.enter("codedeploy:GetDeploymentGroup")?;
        let deployments = self.deployments.lock().unwrap();
        let found =
            deployments.values().map(|d| &d.0).find(|f| f.application == application && f.deployment_group == group);
        found
            .map(|f| DeploymentGroupFacts {
                target_group_names: f.target_group_names.clone(),
                production_listeners: f.production_listeners.clone(),
                test_listeners: f.test_listeners.clone(),
                ecs_services: vec![("prod".into(), "web".into())],
                termination_wait: f.termination_wait,
            })
            .ok_or_else(|| Error::Aws {
                service: "codedeploy",
                operation: "GetDeploymentGroup",
                kind: AwsErrorKind::NotFound,
                message: format!("DeploymentGroupDoesNotExistException: {application}/{group}"),
                source: None,
            })
    }

    async fn deployment(&self, deployment_id: &str) -> Result<DeploymentFacts> {
        self.calls.enter("codedeploy:GetDeployment")?;
        self.calls.enter("codedeploy:GetDeploymentGroup")?;
        self.deployments.lock().unwrap().get(deployment_id).map(|d| d.0.clone()).ok_or_else(|| Error::Aws {
            service: "codedeploy",
            operation: "GetDeployment",
            kind: AwsErrorKind::NotFound,
            message: format!("DeploymentDoesNotExistException: {deployment_id}"),
            source: None,
        })
    }

    async fn traffic_shift(&self, config_name: &str) -> Result<TrafficShift> {
        self.calls.enter("codedeploy:GetDeploymentConfig")?;
        Ok(match config_name {
            "CodeDeployDefault.ECSAllAtOnce" => TrafficShift::AllAtOnce,
            "CodeDeployDefault.ECSCanary10Percent5Minutes" => {
                TrafficShift::Canary { percentage: 10, interval: Duration::from_secs(300) }
            }
            "CodeDeployDefault.ECSLinear10PercentEvery1Minutes" => {
                TrafficShift::Linear { percentage: 10, interval: Duration::from_secs(60) }
            }
            other => {
                return Err(Error::Aws {
                    service: "codedeploy",
                    operation: "GetDeploymentConfig",
                    kind: AwsErrorKind::NotFound,
                    message: format!("DeploymentConfigDoesNotExistException: {other}"),
                    source: None,
                })
            }
        })
    }

    async fn task_sets(&self, deployment_id: &str) -> Result<Vec<TaskSet>> {
        self.calls.enter("codedeploy:GetDeploymentTarget")?;
        if *self.task_sets_fail.lock().unwrap() {
            return Err(Error::Aws {
                service: "codedeploy",
                operation: "ListDeploymentTargets",
                kind: AwsErrorKind::Other,
                message: "not implemented".into(),
                source: None,
            });
        }
        Ok(self.deployments.lock().unwrap().get(deployment_id).map(|d| d.1.clone()).unwrap_or_default())
    }
}

impl HookReporter for FakeCodeDeploy {
    async fn report(&self, deployment_id: &str, execution_id: &str, status: HookStatus) -> Result<Reported> {
        // Reports do not go through the fault plan: the harness's own guarantee is what is under test.
        let mut reports = self.reports.lock().unwrap();
        let seen = reports.iter().any(|(d, e, _)| d == deployment_id && e == execution_id);
        reports.push((deployment_id.to_string(), execution_id.to_string(), status));
        Ok(if seen { Reported::AlreadyCompleted } else { Reported::Accepted })
    }
}

/// DynamoDB in memory, with the same version rule as the real adapter.
#[derive(Clone, Default)]
pub struct FakeState {
    deployments: Arc<Mutex<BTreeMap<String, DeploymentRecord>>>,
    bindings: Arc<Mutex<BTreeMap<String, BindingRecord>>>,
    followers: Arc<Mutex<BTreeMap<String, FollowerLease>>>,
    /// Stored bindings by key; a `String` is an item that does not decode.
    stored: Arc<Mutex<BTreeMap<String, std::result::Result<StoredBinding, String>>>>,
    census: Arc<Mutex<Census>>,
    /// Pending reads claimed (`StateStore::claim_read`), by what they read.
    claims: Arc<Mutex<BTreeMap<String, (u64, String)>>>,
    /// Bindings due for the next sweep (`StateStore::mark_due`), by label.
    due: Arc<Mutex<BTreeSet<String>>>,
    calls: Arc<Calls>,
}

impl FakeState {
    /// The followers' census as it stands.
    pub fn census_now(&self) -> Census {
        self.census.lock().unwrap().clone()
    }

    /// The bindings due for the next sweep, as stored.
    pub fn due_now(&self) -> BTreeSet<String> {
        self.due.lock().unwrap().clone()
    }

    /// Another follower's heartbeat in the census (a deployment of another service being followed).
    pub fn count_in(&self, owner: &str, at_ms: u64) {
        self.census.lock().unwrap().heartbeats.insert(owner.to_string(), at_ms);
    }

    pub fn record(&self, id: &str) -> Option<DeploymentRecord> {
        self.deployments.lock().unwrap().get(id).cloned()
    }

    /// Stores a binding as `bluegreen-mirror bindings apply` would.
    pub fn store_binding(&self, binding: &bluegreen_mirror::config::Binding) {
        let key = StoredBinding::key(&binding.application, &binding.deployment_group);
        let mut m = self.stored.lock().unwrap();
        let version = m.get(&key).and_then(|s| s.as_ref().ok()).map_or(0, |s| s.version) + 1;
        m.insert(
            key,
            Ok(StoredBinding {
                application: binding.application.clone(),
                deployment_group: binding.deployment_group.clone(),
                version,
                binding: serde_json::to_value(binding).unwrap(),
                ..Default::default()
            }),
        );
    }

    pub fn stored_binding_of(&self, app: &str, group: &str) -> Option<StoredBinding> {
        self.stored.lock().unwrap().get(&StoredBinding::key(app, group)).and_then(|s| s.clone().ok())
    }

    /// Stores an item under `key` as it is, usable or not.
    pub fn store_raw(&self, key: &str, item: std::result::Result<StoredBinding, String>) {
        self.stored.lock().unwrap().insert(key.to_string(), item);
    }

    pub fn binding_record(&self, app: &str, group: &str) -> Option<BindingRecord> {
        self.bindings.lock().unwrap().get(&BindingRecord::key(app, group)).cloned()
    }

    pub fn lease(&self, app: &str, group: &str) -> Option<FollowerLease> {
        self.followers.lock().unwrap().get(&FollowerLease::key(app, group)).cloned()
    }

    pub fn forget(&self, id: &str) {
        self.deployments.lock().unwrap().remove(id);
    }
}

fn versioned_put<T: Clone>(
    map: &Mutex<BTreeMap<String, T>>,
    key: String,
    version: u64,
    stored: impl Fn(&T) -> u64,
    rec: &T,
) -> Saved {
    let mut m = map.lock().unwrap();
    let current = m.get(&key).map(&stored).unwrap_or(0);
    if current + 1 != version {
        return Saved::Conflict;
    }
    m.insert(key, rec.clone());
    Saved::Written
}

impl StateStore for FakeState {
    async fn deployment(&self, deployment_id: &str) -> Result<Option<DeploymentRecord>> {
        self.calls.enter("dynamodb:GetItem")?;
        self.calls.stall("dynamodb:GetItem").await;
        Ok(self.record(deployment_id))
    }

    async fn put_deployment(&self, record: &DeploymentRecord) -> Result<Saved> {
        self.calls.enter("dynamodb:PutItem")?;
        Ok(versioned_put(&self.deployments, record.deployment_id.clone(), record.version, |r| r.version, record))
    }

    async fn put_deployment_and_binding(
        &self,
        deployment: &DeploymentRecord,
        binding: &BindingRecord,
    ) -> Result<Saved> {
        self.calls.enter("dynamodb:TransactWriteItems")?;
        self.calls.stall("dynamodb:TransactWriteItems").await;
        let mut deployments = self.deployments.lock().unwrap();
        let mut bindings = self.bindings.lock().unwrap();
        let key = BindingRecord::key(&binding.application, &binding.deployment_group);
        let current = (
            deployments.get(&deployment.deployment_id).map_or(0, |r| r.version),
            bindings.get(&key).map_or(0, |r| r.version),
        );
        if current != (deployment.version.saturating_sub(1), binding.version.saturating_sub(1)) {
            return Ok(Saved::Conflict);
        }
        deployments.insert(deployment.deployment_id.clone(), deployment.clone());
        bindings.insert(key, binding.clone());
        Ok(Saved::Written)
    }

    async fn binding(&self, application: &str, group: &str) -> Result<Option<BindingRecord>> {
        self.calls.enter("dynamodb:GetItem")?;
        self.calls.stall("dynamodb:GetItem").await;
        Ok(self.binding_record(application, group))
    }

    async fn put_binding(&self, record: &BindingRecord) -> Result<Saved> {
        self.calls.enter("dynamodb:PutItem")?;
        let key = BindingRecord::key(&record.application, &record.deployment_group);
        Ok(versioned_put(&self.bindings, key, record.version, |r| r.version, record))
    }

    async fn follower(&self, application: &str, group: &str) -> Result<Option<FollowerLease>> {
        self.calls.enter("dynamodb:GetItem")?;
        Ok(self.lease(application, group))
    }

    async fn put_follower(&self, lease: &FollowerLease) -> Result<Saved> {
        self.calls.enter("dynamodb:PutItem")?;
        let key = FollowerLease::key(&lease.application, &lease.deployment_group);
        Ok(versioned_put(&self.followers, key, lease.version, |r| r.version, lease))
    }

    async fn stored_binding(&self, application: &str, group: &str) -> Result<Option<StoredBinding>> {
        self.calls.enter("dynamodb:GetItem")?;
        match self.stored.lock().unwrap().get(&StoredBinding::key(application, group)) {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(s.clone())),
            Some(Err(why)) => Err(Error::Misconfigured(why.clone())),
        }
    }

    async fn stored_bindings(&self) -> Result<Vec<Result<StoredBinding>>> {
        self.calls.enter("dynamodb:Scan")?;
        Ok(self.stored.lock().unwrap().values().map(|s| s.clone().map_err(Error::Misconfigured)).collect())
    }

    async fn put_stored_binding(&self, stored: &StoredBinding) -> Result<Saved> {
        self.calls.enter("dynamodb:PutItem")?;
        let key = StoredBinding::key(&stored.application, &stored.deployment_group);
        let mut m = self.stored.lock().unwrap();
        let current = m.get(&key).and_then(|s| s.as_ref().ok()).map_or(0, |s| s.version);
        if current + 1 != stored.version {
            return Ok(Saved::Conflict);
        }
        m.insert(key, Ok(stored.clone()));
        Ok(Saved::Written)
    }

    async fn remove_stored_binding(&self, application: &str, group: &str, version: u64) -> Result<Saved> {
        self.calls.enter("dynamodb:DeleteItem")?;
        let key = StoredBinding::key(application, group);
        let mut m = self.stored.lock().unwrap();
        if m.get(&key).and_then(|s| s.as_ref().ok()).map(|s| s.version) != Some(version) {
            return Ok(Saved::Conflict);
        }
        m.remove(&key);
        Ok(Saved::Written)
    }
}

impl Coordination for FakeState {
    async fn claim_read(&self, what: &str, owner: &str, now_ms: u64, read_at_ms: u64) -> Result<Claim> {
        self.calls.enter("dynamodb:UpdateItem")?;
        let mut claims = self.claims.lock().unwrap();
        let was = claims.get(what).cloned();
        if was.as_ref().is_some_and(|(at, by)| *at >= now_ms && by != owner) {
            return Ok(Claim::Pending);
        }
        claims.insert(what.to_string(), (read_at_ms, owner.to_string()));
        Ok(if was.is_some_and(|(_, by)| by == owner) { Claim::TakenBack } else { Claim::Taken })
    }

    async fn census(&self, entry: &CensusEntry) -> Result<Census> {
        self.calls.enter("dynamodb:UpdateItem")?;
        let mut census = self.census.lock().unwrap();
        match entry.heartbeat_ms {
            Some(at) => census.heartbeats.insert(entry.owner.clone(), at),
            None => census.heartbeats.remove(&entry.owner),
        };
        for gone in entry.forget.iter().filter(|g| **g != entry.owner) {
            census.heartbeats.remove(gone);
        }
        Ok(census.clone())
    }

    async fn mark_due(&self, labels: &[String]) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        self.calls.enter("dynamodb:UpdateItem")?;
        self.due.lock().unwrap().extend(labels.iter().cloned());
        Ok(())
    }

    async fn take_due(&self) -> Result<BTreeSet<String>> {
        self.calls.enter("dynamodb:UpdateItem")?;
        Ok(std::mem::take(&mut *self.due.lock().unwrap()))
    }
}

/// Lambda's asynchronous invoke of the follower, recorded.
#[derive(Clone, Default)]
pub struct FakeFollowers {
    started: Arc<Mutex<Vec<FollowRequest>>>,
}

impl FakeFollowers {
    pub fn started(&self) -> Vec<FollowRequest> {
        self.started.lock().unwrap().clone()
    }
}

impl Followers for FakeFollowers {
    async fn start(&self, request: &FollowRequest) -> Result<bool> {
        self.started.lock().unwrap().push(request.clone());
        Ok(true)
    }
}

pub const ACCOUNT: &str = "arn:aws:elasticloadbalancing:eu-west-1:111122223333";
pub const APP: &str = "web";
pub const GROUP: &str = "web-bg";
pub const DEPLOYMENT: &str = "d-TEST00001";

/// CodeDeploy's state change for the end of `DEPLOYMENT` (`SUCCESS`, `FAILURE`, `STOP`), sent at `at` (seconds
/// since the epoch; EventBridge's time for the event).
pub fn ended(state: &str, at: Option<u64>) -> bluegreen_mirror::usecase::Trigger {
    bluegreen_mirror::usecase::Trigger::Deployment {
        application: APP.into(),
        deployment_group: GROUP.into(),
        deployment_id: DEPLOYMENT.into(),
        state: state.into(),
        at,
    }
}

/// ARNs of the fixture.
#[derive(Debug, Clone)]
pub struct Arns {
    pub pub_blue: String,
    pub pub_green: String,
    pub prv_blue: String,
    pub prv_green: String,
    pub pub_lb: String,
    pub prv_lb: String,
    pub pub_prod: String,
    pub pub_test: String,
    pub prv_prod: String,
    pub prv_test: String,
    /// A second private side, an NLB (used by [`World::two_sides`]).
    pub nlb_blue: String,
    pub nlb_green: String,
    pub nlb_lb: String,
    pub nlb_prod: String,
    pub nlb_test: String,
}

impl Arns {
    pub fn new(private_kind: &str) -> Self {
        let prv_test = if private_kind == "net" {
            format!("{ACCOUNT}:listener/net/private/2222/8080")
        } else {
            format!("{ACCOUNT}:listener-rule/app/private/2222/80/77")
        };
        Self {
            pub_blue: format!("{ACCOUNT}:targetgroup/pub-blue/0001"),
            pub_green: format!("{ACCOUNT}:targetgroup/pub-green/0002"),
            prv_blue: format!("{ACCOUNT}:targetgroup/prv-blue/0003"),
            prv_green: format!("{ACCOUNT}:targetgroup/prv-green/0004"),
            pub_lb: format!("{ACCOUNT}:loadbalancer/app/public/1111"),
            prv_lb: format!("{ACCOUNT}:loadbalancer/{private_kind}/private/2222"),
            pub_prod: format!("{ACCOUNT}:listener/app/public/1111/80"),
            pub_test: format!("{ACCOUNT}:listener/app/public/1111/8080"),
            prv_prod: format!("{ACCOUNT}:listener/{private_kind}/private/2222/80"),
            prv_test,
            nlb_blue: format!("{ACCOUNT}:targetgroup/nlb-blue/0005"),
            nlb_green: format!("{ACCOUNT}:targetgroup/nlb-green/0006"),
            nlb_lb: format!("{ACCOUNT}:loadbalancer/net/link/3333"),
            nlb_prod: format!("{ACCOUNT}:listener/net/link/3333/80"),
            nlb_test: format!("{ACCOUNT}:listener/net/link/3333/8080"),
        }
    }
}

pub fn ip(n: u32) -> TargetKey {
    let [a, b, c, d] = (0x0a00_0000u32 + n).to_be_bytes();
    TargetKey::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), 8080)
}

pub fn keys(range: std::ops::Range<u32>) -> Vec<TargetKey> {
    range.map(ip).collect()
}

/// A public route with `green_weight` % on green, the rest on blue (one of CodeDeploy's steps).
pub fn weighted(blue: &str, green: &str, green_weight: u32) -> Route {
    Route {
        target_groups: vec![
            WeightedTargetGroup { target_group: blue.into(), weight: 100 - green_weight },
            WeightedTargetGroup { target_group: green.into(), weight: green_weight },
        ],
        stickiness_seconds: None,
    }
}

/// Target keys as sorted `ip:port` strings, the form `FakeElb::members` returns.
pub fn strings(keys: &[TargetKey]) -> Vec<String> {
    let mut v: Vec<String> = keys.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

/// The ARN of resource `what` of [`World::fleet`]'s binding `k`: `pub-blue`, `pub-green`, `prv-blue`, `prv-green`
/// (target groups), `pub-lb`, `pub-prod`, `pub-test` (its public ALB and listeners), `prv-prod`, `prv-test` (its
/// rules on the shared internal ALB).
pub fn fleet_arn(k: usize, what: &str) -> String {
    match what {
        "pub-lb" => format!("{ACCOUNT}:loadbalancer/app/pub-{k}/{k:04}"),
        "pub-prod" => format!("{ACCOUNT}:listener/app/pub-{k}/{k:04}/80"),
        "pub-test" => format!("{ACCOUNT}:listener/app/pub-{k}/{k:04}/8080"),
        "prv-prod" => format!("{ACCOUNT}:listener-rule/app/private/2222/80/{k:04}"),
        "prv-test" => format!("{ACCOUNT}:listener-rule/app/private/2222/8080/{k:04}"),
        tg => format!("{ACCOUNT}:targetgroup/{tg}-{k}/{k:04}"),
    }
}

/// One binding, both load balancers, a deployment in progress: the fixture every flow test starts from.
pub struct World {
    pub arns: Arns,
    pub elb: FakeElb,
    pub codedeploy: FakeCodeDeploy,
    pub state: FakeState,
    pub followers: FakeFollowers,
    pub calls: Arc<Calls>,
    pub config: Config,
}

impl World {
    /// Blue tasks `10.0.0.1..=3` serve on both sides; the deployment `DEPLOYMENT` has just been created with
    /// three green tasks to come. The private load balancer is an ALB.
    pub fn new() -> Self {
        Self::build("app")
    }

    /// The same with an NLB on the private side (single-target-group listeners, test listener required).
    pub fn nlb() -> Self {
        Self::build("net")
    }

    /// A binding with two private sides: the internal ALB of [`World::new`] and an NLB for PrivateLink
    /// (`nlb-blue`/`nlb-green` in TCP, production listener on blue, test listener on the idle green).
    pub fn two_sides() -> Self {
        let mut w = Self::build("app");
        let a = &w.arns;
        let side = format!(
            r#"{{"pairs":[{{"public_target_group":"{}","private_target_group":"{}"}},
                         {{"public_target_group":"{}","private_target_group":"{}"}}],
                "private_production_route":{{"listener":"{}"}},
                "private_test_route":{{"listener":"{}"}}}}"#,
            a.pub_blue, a.nlb_blue, a.pub_green, a.nlb_green, a.nlb_prod, a.nlb_test
        );
        w.config.bindings[0].additional_private_sides = vec![serde_json::from_str(&side).unwrap()];
        {
            let mut s = w.elb.s();
            for (tg, name) in [(&a.nlb_blue, "nlb-blue"), (&a.nlb_green, "nlb-green")] {
                let mut g = s.groups[&a.prv_blue].clone();
                g.facts.arn = tg.clone();
                g.facts.name = name.to_string();
                g.facts.protocol = Some("TCP".into());
                g.facts.load_balancers = vec![a.nlb_lb.clone()];
                g.targets.clear();
                s.groups.insert(tg.clone(), g);
            }
            s.routes.insert(a.nlb_prod.clone(), Route::all_to(&a.nlb_blue, &[], RouteStyle::Single));
            s.routes.insert(a.nlb_test.clone(), Route::all_to(&a.nlb_green, &[], RouteStyle::Single));
            s.private_routes.insert(a.nlb_prod.clone());
        }
        w.elb.add_targets(&a.nlb_blue, &keys(1..4), HealthState::Healthy);
        w
    }

    /// The same, the binding stored in the state table (`bluegreen-mirror bindings apply`) instead of the
    /// environment.
    pub fn stored() -> Self {
        let mut w = Self::build("app");
        for b in std::mem::take(&mut w.config.bindings) {
            w.state.store_binding(&b);
        }
        w.config.stored = true;
        w
    }

    /// `n` bindings on one installation, the fleet shape: each service its own public ALB (listeners :80 and
    /// :8080) and four target groups, the private side one shared internal ALB with a production and a test rule
    /// per service; blue tasks serve on both sides, in sync, no deployment in progress. Binding `k` (from 0) is
    /// `web/svc{k}-bg`; [`fleet_arn`] names its resources.
    pub fn fleet(n: usize) -> Self {
        let mut w = Self::build("app");
        let mut bindings = Vec::new();
        {
            let mut s = w.elb.s();
            let template = s.groups[&w.arns.prv_blue].clone();
            for k in 0..n {
                let arn = |what: &str| fleet_arn(k, what);
                for (what, lb) in [
                    ("pub-blue", arn("pub-lb")),
                    ("pub-green", arn("pub-lb")),
                    ("prv-blue", w.arns.prv_lb.clone()),
                    ("prv-green", w.arns.prv_lb.clone()),
                ] {
                    let mut g = template.clone();
                    g.facts.arn = arn(what);
                    g.facts.name = format!("{what}-{k}");
                    g.facts.load_balancers = vec![lb];
                    g.targets.clear();
                    s.groups.insert(arn(what), g);
                }
                let blue = Route::all_to(&arn("pub-blue"), &[&arn("pub-green")], RouteStyle::Weighted);
                s.routes.insert(arn("pub-prod"), blue.clone());
                s.routes.insert(arn("pub-test"), blue);
                for what in ["prv-prod", "prv-test"] {
                    s.routes
                        .insert(arn(what), Route::all_to(&arn("prv-blue"), &[&arn("prv-green")], RouteStyle::Weighted));
                    s.private_routes.insert(arn(what));
                }
                bindings.push(serde_json::json!({
                    "application": APP, "deployment_group": format!("svc{k}-bg"),
                    "pairs": [{"public_target_group": arn("pub-blue"), "private_target_group": arn("prv-blue")},
                              {"public_target_group": arn("pub-green"), "private_target_group": arn("prv-green")}],
                    "private_production_route": {"rule": arn("prv-prod")},
                    "private_test_route": {"rule": arn("prv-test")},
                }));
            }
        }
        for k in 0..n {
            let arn = |what: &str| fleet_arn(k, what);
            let task = ip(10_000 + u32::try_from(k).unwrap());
            w.elb.add_targets(&arn("pub-blue"), &[task], HealthState::Healthy);
            w.elb.add_targets(&arn("prv-blue"), &[task], HealthState::Healthy);
            w.codedeploy.put(
                DeploymentFacts {
                    deployment_id: format!("d-FLEET{k:05}"),
                    application: APP.into(),
                    deployment_group: format!("svc{k}-bg"),
                    compute_platform: "ECS".into(),
                    deployment_type: "BLUE_GREEN".into(),
                    status: "Succeeded".into(),
                    target_group_names: vec![format!("pub-blue-{k}"), format!("pub-green-{k}")],
                    production_listeners: vec![arn("pub-prod")],
                    test_listeners: vec![arn("pub-test")],
                    ..Default::default()
                },
                Vec::new(),
            );
        }
        let json = serde_json::json!({ "bindings": bindings }).to_string();
        w.config.bindings = Config::parse_bindings(&json).unwrap();
        // No deployment to play: the schedule's sweep on AWS's clock.
        w.config.minute = Duration::from_secs(60);
        w
    }

    fn build(private_kind: &str) -> Self {
        let a = Arns::new(private_kind);
        let calls = Arc::new(Calls::default());
        let style = if private_kind == "net" { RouteStyle::Single } else { RouteStyle::Weighted };
        let test_route = if private_kind == "net" {
            format!(r#"{{"listener":"{}"}}"#, a.prv_test)
        } else {
            format!(r#"{{"rule":"{}"}}"#, a.prv_test)
        };
        let bindings = format!(
            r#"{{"bindings":[{{"application":"{APP}","deployment_group":"{GROUP}",
                "pairs":[{{"public_target_group":"{}","private_target_group":"{}"}},
                         {{"public_target_group":"{}","private_target_group":"{}"}}],
                "private_production_route":{{"listener":"{}"}},
                "private_test_route":{test_route},
                "health_timeout_seconds":60}}]}}"#,
            a.pub_blue, a.prv_blue, a.pub_green, a.prv_green, a.prv_prod
        );
        let mut config = Config::parse("bluegreen-mirror", &bindings).unwrap();
        config.poll_interval = Duration::from_secs(1);
        // CodeDeploy's minutes played as seconds, as in the rehearsal: a linear step every second.
        config.minute = Duration::from_secs(1);

        let elb = FakeElb { state: Arc::default(), calls: calls.clone(), at_once: false };
        {
            let mut s = elb.s();
            let protocol = if private_kind == "net" { "TCP" } else { "HTTP" };
            for (tg, name, lb) in [
                (&a.pub_blue, "pub-blue", &a.pub_lb),
                (&a.pub_green, "pub-green", &a.pub_lb),
                (&a.prv_blue, "prv-blue", &a.prv_lb),
                (&a.prv_green, "prv-green", &a.prv_lb),
            ] {
                let proto = if tg.contains("pub-") { "HTTP" } else { protocol };
                s.groups.insert(
                    tg.clone(),
                    FakeGroup {
                        facts: TargetGroupFacts {
                            arn: tg.clone(),
                            name: name.to_string(),
                            target_type: "ip".into(),
                            protocol: Some(proto.into()),
                            port: Some(8080),
                            load_balancers: vec![lb.clone()],
                            // NLB groups can health-check HTTP on a path, and these do: as strong a gate as the ALB's.
                            health_check: HealthCheck {
                                protocol: Some("HTTP".into()),
                                port: Some("traffic-port".into()),
                                path: Some("/health".into()),
                            },
                        },
                        targets: BTreeMap::new(),
                        // ELB's default.
                        deregistration_delay: Duration::from_secs(300),
                    },
                );
            }
            s.routes.insert(a.pub_prod.clone(), Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted));
            s.routes.insert(a.pub_test.clone(), Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted));
            s.routes.insert(a.prv_prod.clone(), Route::all_to(&a.prv_blue, &[&a.prv_green], style));
            let test = if style == RouteStyle::Single { &a.prv_green } else { &a.prv_blue };
            s.routes.insert(a.prv_test.clone(), Route::all_to(test, &[&a.prv_green, &a.prv_blue], style));
            s.private_routes.insert(a.prv_prod.clone());
        }
        elb.add_targets(&a.pub_blue, &keys(1..4), HealthState::Healthy);
        elb.add_targets(&a.prv_blue, &keys(1..4), HealthState::Healthy);

        let codedeploy = FakeCodeDeploy { calls: calls.clone(), ..Default::default() };
        codedeploy.put(
            DeploymentFacts {
                deployment_id: DEPLOYMENT.into(),
                application: APP.into(),
                deployment_group: GROUP.into(),
                compute_platform: "ECS".into(),
                deployment_type: "BLUE_GREEN".into(),
                creator: Some("user".into()),
                status: "InProgress".into(),
                config_name: Some("CodeDeployDefault.ECSLinear10PercentEvery1Minutes".into()),
                target_group_names: vec!["pub-blue".into(), "pub-green".into()],
                production_listeners: vec![a.pub_prod.clone()],
                test_listeners: vec![a.pub_test.clone()],
                // The original task set goes an hour after the reroute.
                termination_wait: Some(Duration::from_secs(60 * 60)),
            },
            vec![
                TaskSet {
                    label: TaskSetLabel::Blue,
                    target_group_name: Some("pub-blue".into()),
                    desired_count: Some(3),
                    running_count: Some(3),
                },
                TaskSet {
                    label: TaskSetLabel::Green,
                    target_group_name: Some("pub-green".into()),
                    desired_count: Some(3),
                    running_count: Some(3),
                },
            ],
        );
        let state = FakeState { calls: calls.clone(), ..Default::default() };
        Self { arns: a, elb, codedeploy, state, followers: FakeFollowers::default(), calls, config }
    }

    /// ECS starts the replacement task set and registers it into the green public target group.
    pub fn install_green(&self) {
        self.elb.add_targets(&self.arns.pub_green, &keys(101..104), HealthState::Healthy);
    }

    /// The deployment up to the gate: green installed, AfterInstall and BeforeAllowTraffic succeeded.
    pub async fn through_the_gate(&self) {
        self.install_green();
        for (phase, exec) in [(Phase::AfterInstall, "gate-ai"), (Phase::BeforeAllowTraffic, "gate-bat")] {
            let out = self.invoke(phase, exec).await;
            assert_eq!(out.status, HookStatus::Succeeded, "{phase}: {:?}", out.message);
        }
    }

    /// CodeDeploy's AllowTestTraffic: the public test listener moves to green.
    pub fn allow_test_traffic(&self) {
        self.elb.put_route(
            &self.arns.pub_test,
            Route::all_to(&self.arns.pub_green, &[&self.arns.pub_blue], RouteStyle::Weighted),
        );
    }

    /// CodeDeploy's AllowTraffic, all at once.
    pub fn allow_traffic(&self) {
        self.elb.put_route(
            &self.arns.pub_prod,
            Route::all_to(&self.arns.pub_green, &[&self.arns.pub_blue], RouteStyle::Weighted),
        );
    }

    pub fn hooks(&self) -> Engine<FakeElb, FakeCodeDeploy, FakeState, FakeFollowers> {
        Engine::new(
            self.elb.clone(),
            self.codedeploy.clone(),
            self.state.clone(),
            self.followers.clone(),
            self.config.clone(),
        )
    }

    /// Runs the whole deployment: AfterInstall, BeforeAllowTraffic, AllowTraffic (public), AfterAllowTraffic.
    pub async fn deploy(&self) -> [Outcome; 3] {
        self.install_green();
        let a = self.invoke(Phase::AfterInstall, "exec-ai").await;
        self.allow_test_traffic();
        let b = self.invoke(Phase::BeforeAllowTraffic, "exec-bat").await;
        self.allow_traffic();
        let c = self.invoke(Phase::AfterAllowTraffic, "exec-aat").await;
        [a, b, c]
    }

    /// Runs `trigger` through the reconciler's handler, as Lambda does, with a minute's budget: its result, what it
    /// reconciled, and its summary (notes, stepped aside, shadow mode's findings).
    pub async fn run_trigger(
        &self,
        trigger: &bluegreen_mirror::usecase::Trigger,
    ) -> (bluegreen_mirror::Result<serde_json::Value>, Vec<bluegreen_mirror::usecase::Reconciled>, Summary) {
        self.run_trigger_on(&self.hooks(), trigger).await
    }

    /// [`Self::run_trigger`] on a given engine (a warm process's).
    pub async fn run_trigger_on(
        &self,
        engine: &Engine<FakeElb, FakeCodeDeploy, FakeState, FakeFollowers>,
        trigger: &bluegreen_mirror::usecase::Trigger,
    ) -> (bluegreen_mirror::Result<serde_json::Value>, Vec<bluegreen_mirror::usecase::Reconciled>, Summary) {
        let (t, mut done) = (Tracker::default(), Vec::new());
        let out =
            engine.run_trigger(trigger, "r-1", harness::Budget::after(Duration::from_secs(60)), &t, &mut done).await;
        (out, done, t.snapshot())
    }

    /// Runs one hook invocation through the harness, as the Lambda handler does.
    pub async fn invoke(&self, phase: Phase, execution: &str) -> Outcome {
        self.invoke_for(phase, DEPLOYMENT, execution, Duration::from_secs(120)).await
    }

    pub async fn invoke_for(&self, phase: Phase, deployment: &str, execution: &str, timeout: Duration) -> Outcome {
        self.invoke_reporting_to(&self.codedeploy, phase, deployment, execution, timeout).await
    }

    /// [`Self::invoke_for`] with the verdict reported to `reporter` (a test's own, to see what CodeDeploy is told
    /// and when).
    pub async fn invoke_reporting_to<R: HookReporter>(
        &self,
        reporter: &R,
        phase: Phase,
        deployment: &str,
        execution: &str,
        timeout: Duration,
    ) -> Outcome {
        let hooks = self.hooks();
        let inv = Invocation {
            phase,
            deployment_id: deployment.into(),
            execution_id: execution.into(),
            deadline: SystemTime::now() + timeout,
        };
        let tracker = Tracker::default();
        harness::run(reporter, &inv, &tracker, |budget| {
            let (hooks, inv, tracker) = (&hooks, &inv, &tracker);
            async move { hooks.run(inv.phase, &inv.deployment_id, budget, tracker).await }
        })
        .await
    }

    /// The reports CodeDeploy received for one execution.
    pub fn reports_for(&self, execution: &str) -> Vec<HookStatus> {
        self.codedeploy.reports().into_iter().filter(|(_, e, _)| e == execution).map(|(_, _, s)| s).collect()
    }

    /// Changes made to the private side (registrations, deregistrations, route writes) in the call log.
    pub fn private_writes(&self) -> Vec<String> {
        self.calls
            .log()
            .into_iter()
            .filter(|c| {
                matches!(
                    c.as_str(),
                    "elb:RegisterTargets" | "elb:DeregisterTargets" | "elb:ModifyListener" | "elb:ModifyRule"
                )
            })
            .collect()
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}
