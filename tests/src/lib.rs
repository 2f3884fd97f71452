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

mod codedeploy;
mod elb;
mod state;

pub use codedeploy::FakeCodeDeploy;
pub use elb::{Calls, FakeElb, FakeGroup, Fault};
pub use state::{FakeFollowers, FakeState};

fn not_found(op: &'static str, what: &str) -> Error {
    Error::Aws {
        service: "elasticloadbalancing",
        operation: op,
        kind: AwsErrorKind::NotFound,
        message: format!("not found: {what}"),
        source: None,
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
