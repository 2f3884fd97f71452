//! ELB in memory: its target groups and routes, a log of every call, faults injected at the n-th call, and
//! I4 checked on every private route change.

use super::*;

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
    pub(crate) fn enter(&self, op: &str) -> Result<()> {
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

    pub(crate) async fn stall(&self, op: &str) {
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
pub(crate) struct ElbState {
    pub(crate) groups: BTreeMap<String, FakeGroup>,
    pub(crate) routes: BTreeMap<String, Route>,
    /// Every change of a route: (route ARN, new route, when).
    pub(crate) route_log: Vec<(String, Route, tokio::time::Instant)>,
    /// Target groups whose load balancer cannot reach the tasks: targets registered there stay unhealthy.
    pub(crate) unreachable: BTreeSet<String>,
    /// Route changes that left a private route forwarding only to groups with no healthy target.
    pub(crate) dark: Vec<String>,
    /// Routes whose writes are refused (AccessDenied), to fail one private side.
    pub(crate) refused: BTreeSet<String>,
    pub(crate) private_routes: BTreeSet<String>,
    /// Resource ARN → tags.
    pub(crate) tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Runs once, right after the next read of targets has answered: something that changes between two reads
    /// of one reconcile.
    pub(crate) after_next_targets_read: Option<ElbChange>,
    /// Target groups whose reads answer this much later than the others (paced, or retried after a throttle).
    pub(crate) read_delay: BTreeMap<String, Duration>,
}

/// A change of the fake ELB's state, made at a chosen moment.
pub(crate) type ElbChange = Box<dyn FnOnce(&mut ElbState) + Send>;

/// ELB held in memory. Registration makes a target healthy at once (or unhealthy where unreachable);
/// deregistration removes it (draining is modelled by tests that insert draining targets themselves).
#[derive(Clone)]
pub struct FakeElb {
    pub(crate) state: Arc<Mutex<ElbState>>,
    pub(crate) calls: Arc<Calls>,
    /// Its reads go at once (`LoadBalancers::at_once`): never in the lane, whatever the invocation's mode.
    pub(crate) at_once: bool,
}

impl FakeElb {
    pub(crate) fn s(&self) -> MutexGuard<'_, ElbState> {
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
    pub(crate) fn enter(&self, op: &str) -> Result<()> {
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
