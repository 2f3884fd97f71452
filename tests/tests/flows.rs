//! The three hooks in order against in-memory fakes: outcomes on target-group membership, routes, reports and
//! the DynamoDB record, for the happy paths, repeated and concurrent invocations, a failure or panic injected
//! at every step, and every kind of bad input.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use bluegreen_mirror::domain::{HealthState, Phase, Route, RouteStyle};
use bluegreen_mirror::ports::{HookStatus, Reported};
use bluegreen_mirror::AwsErrorKind;
use bluegreen_mirror_tests::{ip, keys, strings, Fault, World, APP, DEPLOYMENT, GROUP};

/// `bluegreen-mirror check` of the world's binding: its warnings.
async fn check(w: &World) -> Vec<String> {
    let engine = w.hooks();
    let b = w.config.bindings[0].clone();
    let group = engine.group(&b).await.unwrap();
    engine.check(&b, &group, &bluegreen_mirror::harness::Tracker::default()).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn happy_path_all_at_once() {
    let w = World::new();
    let a = &w.arns;
    w.install_green();

    let ai = w.invoke(Phase::AfterInstall, "exec-ai").await;
    assert_eq!(ai.status, HookStatus::Succeeded, "{:?}", ai.message);
    assert_eq!(w.elb.members(&a.prv_green), strings(&keys(101..104)));
    assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..4)));
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_blue, &[&a.prv_green], RouteStyle::Weighted));
    assert_eq!(w.elb.route_of(&a.prv_test), Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted));
    let rec = w.state.record(DEPLOYMENT).expect("record after AfterInstall");
    assert!(rec.phases.contains_key("AfterInstall"));
    assert_eq!(rec.green_private_target_group.as_deref(), Some(a.prv_green.as_str()));
    assert_eq!(rec.targets_mirrored, 3);

    w.allow_test_traffic();
    let bat = w.invoke(Phase::BeforeAllowTraffic, "exec-bat").await;
    assert_eq!(bat.status, HookStatus::Succeeded, "{:?}", bat.message);
    let rec = w.state.record(DEPLOYMENT).expect("record");
    assert_eq!(rec.planned_private_route, Some(Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted)));
    assert_eq!(rec.private_route_before, Some(Route::all_to(&a.prv_blue, &[&a.prv_green], RouteStyle::Weighted)));
    // Production has not moved on either side.
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_blue.as_str()]);

    w.allow_traffic();
    w.calls.clear();
    let aat = w.invoke(Phase::AfterAllowTraffic, "exec-aat").await;
    assert_eq!(aat.status, HookStatus::Succeeded, "{:?}", aat.message);
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted));
    assert_eq!(w.elb.route_of(&a.prv_test), Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted));
    // The critical path: one read (the planned flip) and one write.
    let log = w.calls.log();
    let flip = log.iter().position(|c| c == "elb:ModifyListener").expect("a ModifyListener");
    assert_eq!(&log[..=flip], ["dynamodb:GetItem", "elb:ModifyListener"]);
    let rec = w.state.record(DEPLOYMENT).expect("record");
    assert_eq!(rec.outcome.as_deref(), Some("succeeded"));
    assert!(rec.private_flip_at_ms.is_some());
    assert!(rec.phases.contains_key("AfterAllowTraffic"));
    let b = w.state.binding_record(APP, GROUP).expect("binding record");
    assert_eq!(b.live_private_target_group.as_deref(), Some(a.prv_green.as_str()));

    for exec in ["exec-ai", "exec-bat", "exec-aat"] {
        assert_eq!(w.reports_for(exec), vec![HookStatus::Succeeded], "{exec}");
    }
    assert!(w.elb.dark_moments().is_empty(), "{:?}", w.elb.dark_moments());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_state_read_does_not_hold_the_flip() {
    let w = prepared(Phase::AfterAllowTraffic).await;
    let a = &w.arns;
    w.calls.stall_every("dynamodb:GetItem", Duration::from_secs(10));
    let started = tokio::time::Instant::now();
    let aat = w.invoke(Phase::AfterAllowTraffic, "exec-aat").await;
    assert_eq!(aat.status, HookStatus::Succeeded, "{:?}", aat.message);
    let flip = w
        .elb
        .timed_route_log()
        .into_iter()
        .find(|(arn, r, _)| arn == &a.prv_prod && r.live() == vec![a.prv_green.as_str()]);
    let (_, _, at) = flip.expect("the private production route flipped to green");
    // The planned flip is given a second; the slow path then derives it from ELB without waiting for the read.
    assert!(at - started < Duration::from_secs(2), "flipped {:?} after the event", at - started);
    assert!(w.elb.dark_moments().is_empty(), "{:?}", w.elb.dark_moments());
}

#[tokio::test(start_paused = true)]
async fn stale_targets_from_an_earlier_deployment_are_removed() {
    let w = World::new();
    let a = &w.arns;
    w.elb.add_targets(&a.prv_green, &[ip(50), ip(51)], HealthState::Healthy);
    let [ai, ..] = w.deploy().await;
    assert_eq!(ai.summary.deregistered, 2);
    assert_eq!(w.elb.members(&a.prv_green), strings(&keys(101..104)));
}

#[tokio::test(start_paused = true)]
async fn a_task_that_stops_between_a_hooks_reads_is_not_registered_back() {
    // The private read answers two seconds after the public one (waiting in the read lane, or retried after a
    // throttle); a second in, a blue task stops: ECS takes it off the public group, and its own event's reconcile
    // off the private one. After AfterAllowTraffic nothing looks again until a sweep reaches the binding.
    for phase in [Phase::BeforeAllowTraffic, Phase::AfterAllowTraffic] {
        let w = prepared(phase).await;
        let a = &w.arns;
        w.elb.delay_reads_of(&a.prv_blue, Duration::from_secs(2));
        w.calls.clear();
        let stop = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            w.elb.remove_targets(&a.pub_blue, &[ip(3)]);
            w.elb.remove_targets(&a.prv_blue, &[ip(3)]);
        };
        let (out, ()) = tokio::join!(w.invoke(phase, "exec"), stop);
        assert_eq!(out.status, HookStatus::Succeeded, "{phase}: {:?}", out.message);
        assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..3)), "{phase}: {:?}", out.summary.notes);
        assert_eq!(w.elb.members(&a.prv_blue), w.elb.members(&a.pub_blue), "{phase}");
        let note = "prv-blue: not registering 10.0.0.3:8080, gone from pub-blue since it was read".to_string();
        assert!(out.summary.notes.contains(&note), "{phase}: {:?}", out.summary.notes);
    }

    // AfterInstall mirrors green without confirming: a replacement task that stops meanwhile is registered, and
    // BeforeAllowTraffic's gate, which mirrors green again at every poll, takes it off before traffic moves.
    let w = World::new();
    let a = &w.arns;
    w.install_green();
    w.elb.delay_reads_of(&a.prv_green, Duration::from_secs(2));
    let stop = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        w.elb.remove_targets(&a.pub_green, &[ip(103)]);
    };
    let (out, ()) = tokio::join!(w.invoke(Phase::AfterInstall, "exec-ai"), stop);
    assert_eq!(out.status, HookStatus::Succeeded, "{:?}", out.message);
    assert_eq!(w.elb.members(&a.prv_green), strings(&keys(101..104)), "registered on the first read");
    // ECS replaces the stopped task.
    w.elb.add_targets(&a.pub_green, &[ip(104)], HealthState::Healthy);
    w.elb.delay_reads_of(&a.prv_green, Duration::ZERO);
    let out = w.invoke(Phase::BeforeAllowTraffic, "exec-bat").await;
    assert_eq!(out.status, HookStatus::Succeeded, "{:?}", out.message);
    assert_eq!(w.elb.members(&a.prv_green), w.elb.members(&a.pub_green), "{:?}", out.summary.notes);
    assert!(!w.elb.members(&a.prv_green).contains(&ip(103).to_string()));

    // Reads answered together need no confirmation: a scale-out is registered on one read of each group.
    let w = prepared(Phase::AfterAllowTraffic).await;
    let a = &w.arns;
    w.elb.add_targets(&a.pub_blue, &[ip(7)], HealthState::Healthy);
    w.calls.clear();
    let out = w.invoke(Phase::AfterAllowTraffic, "exec").await;
    assert_eq!(out.status, HookStatus::Succeeded, "{:?}", out.message);
    assert_eq!(w.elb.members(&a.prv_blue), w.elb.members(&a.pub_blue));
    assert_eq!(out.summary.registered, 1);
    assert_eq!(w.calls.reads_of("elb:DescribeTargetHealth", &a.pub_blue), 1, "{:?}", w.calls.log());
}

#[tokio::test(start_paused = true)]
async fn a_hooks_rounds_of_reads_wait_in_the_read_lane_once_per_step() {
    let w = World::new();
    w.install_green();
    w.calls.clear();
    let ai = w.invoke(Phase::AfterInstall, "exec-ai").await;
    assert_eq!(ai.status, HookStatus::Succeeded, "{:?}", ai.message);
    let reads = |w: &World| w.calls.log().iter().filter(|c| c.starts_with("elb:Describe")).count();
    // Its setup (preflight, green, blue's mirror), the poll for green's tasks (there at once), and green's mirror
    // with the test route: three turns, whatever the rounds within each.
    assert_eq!(w.calls.waited_reads(), 3, "{} reads: {:?}", reads(&w), w.calls.log());
    assert!(reads(&w) >= 8, "{:?}", w.calls.log());

    w.allow_test_traffic();
    w.calls.clear();
    let bat = w.invoke(Phase::BeforeAllowTraffic, "exec-bat").await;
    assert_eq!(bat.status, HookStatus::Succeeded, "{:?}", bat.message);
    // Its setup, the poll for green's tasks and the gate's one poll (healthy at once).
    assert_eq!(w.calls.waited_reads(), 3, "{} reads: {:?}", reads(&w), w.calls.log());
    assert!(reads(&w) >= 8, "{:?}", w.calls.log());
}

#[tokio::test(start_paused = true)]
async fn weighted_public_route_is_mirrored_with_its_weights() {
    let w = World::new();
    let a = &w.arns;
    w.through_the_gate().await;
    // A public route part-way through a shift, and no planned flip: the slow path copies the weights.
    let weighted = Route {
        target_groups: vec![
            bluegreen_mirror::domain::WeightedTargetGroup { target_group: a.pub_blue.clone(), weight: 30 },
            bluegreen_mirror::domain::WeightedTargetGroup { target_group: a.pub_green.clone(), weight: 70 },
        ],
        stickiness_seconds: None,
    };
    w.elb.put_route(&a.pub_prod, weighted);
    w.state.forget(DEPLOYMENT);
    let out = w.invoke(Phase::AfterAllowTraffic, "e3").await;
    assert_eq!(out.status, HookStatus::Succeeded, "{:?}", out.message);
    let private = w.elb.route_of(&a.prv_prod);
    assert_eq!(private.weight(&a.prv_blue), Some(30));
    assert_eq!(private.weight(&a.prv_green), Some(70));
}

#[tokio::test(start_paused = true)]
async fn a_stale_plan_is_corrected_against_the_public_truth() {
    let w = World::new();
    let a = &w.arns;
    w.through_the_gate().await;
    // The public side did not move (e.g. it was rolled back meanwhile): the private side must follow it.
    let out = w.invoke(Phase::AfterAllowTraffic, "e3").await;
    assert_eq!(out.status, HookStatus::Succeeded, "{:?}", out.message);
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_blue.as_str()]);
}

#[tokio::test(start_paused = true)]
async fn green_is_found_from_the_listener_when_task_sets_are_not_listed() {
    let w = World::new();
    w.codedeploy.without_task_sets();
    let [ai, bat, aat] = w.deploy().await;
    for o in [&ai, &bat, &aat] {
        assert_eq!(o.status, HookStatus::Succeeded, "{:?}", o.message);
    }
    assert_eq!(w.elb.members(&w.arns.prv_green), strings(&keys(101..104)));
    assert_eq!(w.elb.route_of(&w.arns.prv_prod).live(), vec![w.arns.prv_green.as_str()]);
}

#[tokio::test(start_paused = true)]
async fn nlb_private_side_flips_production_and_keeps_idle_on_the_test_listener() {
    let w = World::nlb();
    let a = &w.arns;
    let [ai, bat, aat] = w.deploy().await;
    for o in [&ai, &bat, &aat] {
        assert_eq!(o.status, HookStatus::Succeeded, "{:?}", o.message);
    }
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_green, &[], RouteStyle::Single));
    // The test listener takes the now-idle blue group, keeping it attached and health-checked.
    assert_eq!(w.elb.route_of(&a.prv_test), Route::all_to(&a.prv_blue, &[], RouteStyle::Single));
    assert!(w.elb.dark_moments().is_empty());
}

/// Public ALB groups in HTTP, private NLB groups in TCP (the PrivateLink case): the pair mirrors, and `check`
/// warns when the NLB's health check is TCP only, naming the command that makes it as strong as the ALB's.
#[tokio::test(start_paused = true)]
async fn an_nlb_mirror_in_tcp_of_an_alb_in_http_passes_and_a_tcp_only_health_check_is_warned() {
    let w = World::nlb();
    let a = &w.arns;
    assert_eq!(check(&w).await, Vec::<String>::new());
    w.elb.group_mut(&a.prv_green, |g| {
        g.facts.health_check.protocol = Some("TCP".into());
        g.facts.health_check.path = None;
    });
    let warnings = check(&w).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("prv-green health-checks with TCP only")
            && warnings[0].contains(&format!("--target-group-arn {} --health-check-protocol HTTP", a.prv_green)),
        "{warnings:?}"
    );
    // A warning, not a refusal: the deployment goes through.
    let [ai, bat, aat] = w.deploy().await;
    for o in [&ai, &bat, &aat] {
        assert_eq!(o.status, HookStatus::Succeeded, "{:?}", o.message);
    }
}

/// A private group that drains a stopped task for 30 s while its public mirror drains for 300 s: `check` warns
/// with the command that aligns them, after one attribute read per group; equal delays say nothing.
#[tokio::test(start_paused = true)]
async fn check_warns_when_a_private_group_drains_for_less_than_its_public_mirror() {
    let w = World::new();
    let a = &w.arns;
    assert_eq!(check(&w).await, Vec::<String>::new());
    w.elb.group_mut(&a.prv_blue, |g| g.deregistration_delay = Duration::from_secs(30));
    w.calls.clear();
    let warnings = check(&w).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("prv-blue drains a deregistered task for 30 s, less than its public mirror pub-blue"));
    assert!(warnings[0].contains(&format!("--target-group-arn {} --attributes", a.prv_blue)), "{}", warnings[0]);
    assert_eq!(w.calls.count("elb:DescribeTargetGroupAttributes"), 4, "each of the four groups read once");
}

/// An NLB private side whose deployment group terminates the original tasks 5 minutes after rerouting: its traffic
/// may reach them for up to 10 minutes after the flip, so `check` and AfterInstall warn, naming the command that
/// keeps them 10 minutes. A warning, not a refusal. Ten minutes, or an ALB side, is not warned.
#[tokio::test(start_paused = true)]
async fn an_nlb_side_whose_original_tasks_go_before_its_traffic_has_moved_is_warned() {
    for (w, minutes, warned) in [(World::nlb(), 5, true), (World::nlb(), 10, false), (World::new(), 5, false)] {
        w.codedeploy.edit(DEPLOYMENT, |f| f.termination_wait = Some(Duration::from_secs(minutes * 60)));
        let warnings = check(&w).await;
        let nlb: Vec<&String> = warnings.iter().filter(|w| w.contains("flips an NLB")).collect();
        assert_eq!(nlb.len(), usize::from(warned), "{minutes} min: {warnings:?}");
        if warned {
            assert!(nlb[0].contains("terminates them 5 minutes after rerouting"), "{}", nlb[0]);
            assert!(
                nlb[0].contains(&format!("--application-name {APP} --current-deployment-group-name {GROUP}"))
                    && nlb[0].contains("terminationWaitTimeInMinutes=10"),
                "{}",
                nlb[0]
            );
        }
        let [ai, bat, aat] = w.deploy().await;
        for o in [&ai, &bat, &aat] {
            assert_eq!(o.status, HookStatus::Succeeded, "{:?}", o.message);
        }
        assert_eq!(ai.summary.notes.iter().any(|n| n.contains("flips an NLB")), warned, "{:?}", ai.summary.notes);
    }
}

/// With a follower asked for at the gate, AfterAllowTraffic reads the private routes before writing: a side the
/// follower already flipped is not written again, and that read serves the checks after it (no more reads than
/// the blind write's path); a side the follower did not reach is written as without one.
#[tokio::test(start_paused = true)]
async fn after_allow_traffic_leaves_a_flip_the_follower_made_and_makes_one_it_did_not() {
    for follower_flipped in [true, false] {
        let mut w = World::new();
        w.config.follower_function = Some("reconciler".into());
        let a = &w.arns;
        w.through_the_gate().await;
        assert!(w.state.record(DEPLOYMENT).is_some_and(|r| r.followed), "the gate records that a follower follows");
        w.allow_traffic();
        let flipped = Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted);
        if follower_flipped {
            w.elb.put_route(&a.prv_prod, flipped.clone());
        }
        w.calls.clear();
        let out = w.invoke(Phase::AfterAllowTraffic, "e3").await;
        assert_eq!(out.status, HookStatus::Succeeded, "{:?}", out.message);
        assert!(w.elb.route_of(&a.prv_prod).same_action(&flipped));
        // The production route is a listener here (the test route a rule, converged after the flip either way).
        let writes = w.calls.count("elb:ModifyListener");
        let reads = w.calls.count("elb:DescribeListeners") + w.calls.count("elb:DescribeRules");
        if follower_flipped {
            assert_eq!((writes, reads), (0, 2), "one read of the routes, no write: {:?}", w.calls.log());
            assert_eq!(out.summary.flip_skew_ms, None, "the hook flipped nothing");
        } else {
            assert_eq!((writes, reads), (1, 4), "read, written, read again to check: {:?}", w.calls.log());
        }
        assert!(w.elb.dark_moments().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn every_hook_invoked_twice_converges_to_the_same_state() {
    let w = World::new();
    let a = &w.arns;
    w.deploy().await;
    let routes_after_once = w.elb.route_log().len();
    let members = (w.elb.members(&a.prv_blue), w.elb.members(&a.prv_green));
    let prod = w.elb.route_of(&a.prv_prod);

    // Again after each reported (same execution ids): nothing changes, reports are "already completed".
    let ai = w.invoke(Phase::AfterInstall, "exec-ai").await;
    let bat = w.invoke(Phase::BeforeAllowTraffic, "exec-bat").await;
    let aat = w.invoke(Phase::AfterAllowTraffic, "exec-aat").await;
    for o in [&ai, &bat, &aat] {
        assert_eq!(o.reported, Some(Reported::AlreadyCompleted));
    }
    assert_eq!(w.elb.route_of(&a.prv_prod), prod);
    assert_eq!((w.elb.members(&a.prv_blue), w.elb.members(&a.prv_green)), members);
    // AfterAllowTraffic's replay re-applies the same planned route once; AfterInstall/BeforeAllowTraffic after
    // the flip converge production to the public truth, which is what it already is.
    assert!(w.elb.route_log()[routes_after_once..].iter().all(|(arn, r)| arn != &a.prv_prod || *r == prod));
}

#[tokio::test(start_paused = true)]
async fn concurrent_invocations_of_the_same_hook_agree() {
    let w = World::new();
    let a = &w.arns;
    w.install_green();
    let (x, y) = tokio::join!(w.invoke(Phase::AfterInstall, "c1"), w.invoke(Phase::AfterInstall, "c1"));
    assert_eq!((x.status, y.status), (HookStatus::Succeeded, HookStatus::Succeeded));
    let (x, y) = tokio::join!(w.invoke(Phase::BeforeAllowTraffic, "c2"), w.invoke(Phase::BeforeAllowTraffic, "c2"));
    assert_eq!((x.status, y.status), (HookStatus::Succeeded, HookStatus::Succeeded));
    w.allow_traffic();
    let (x, y) = tokio::join!(w.invoke(Phase::AfterAllowTraffic, "c3"), w.invoke(Phase::AfterAllowTraffic, "c3"));
    assert_eq!((x.status, y.status), (HookStatus::Succeeded, HookStatus::Succeeded));
    assert_eq!(w.elb.members(&a.prv_green), strings(&keys(101..104)));
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_green.as_str()]);
    let rec = w.state.record(DEPLOYMENT).expect("record");
    assert_eq!(rec.outcome.as_deref(), Some("succeeded"));
    // One accepted report per execution; the twin got "already completed".
    for e in ["c1", "c2", "c3"] {
        assert_eq!(w.reports_for(e).len(), 2);
    }
}

/// Keeps the injected panics (caught by the harness) out of the test output; other panics print as usual.
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with("injected panic"));
        if !injected {
            default(info);
        }
    }));
}

async fn prepared(phase: Phase) -> World {
    let w = World::new();
    w.install_green();
    if phase >= Phase::BeforeAllowTraffic {
        w.invoke(Phase::AfterInstall, "prep-ai").await;
    }
    if phase >= Phase::AfterAllowTraffic {
        w.invoke(Phase::BeforeAllowTraffic, "prep-bat").await;
        w.allow_traffic();
    }
    w
}

/// The private side as a hook leaves it: both mirrors' members and both private routes.
fn private_side(w: &World) -> (Vec<String>, Vec<String>, Route, Route) {
    let a = &w.arns;
    (w.elb.members(&a.prv_blue), w.elb.members(&a.prv_green), w.elb.route_of(&a.prv_prod), w.elb.route_of(&a.prv_test))
}

#[tokio::test(start_paused = true)]
async fn a_failure_or_panic_at_every_step_reports_exactly_once_and_never_goes_dark() {
    quiet_injected_panics();
    for phase in [Phase::AfterInstall, Phase::BeforeAllowTraffic, Phase::AfterAllowTraffic] {
        let clean = prepared(phase).await;
        clean.calls.clear();
        assert_eq!(clean.invoke(phase, "clean").await.status, HookStatus::Succeeded);
        let n = clean.calls.log().len();
        assert!(n >= 5, "{phase} makes {n} calls");
        let expected = private_side(&clean);
        for at in 0..n {
            for fault in [Fault::Fail(AwsErrorKind::Throttled), Fault::Fail(AwsErrorKind::AccessDenied), Fault::Panic] {
                let w = prepared(phase).await;
                let before = w.elb.route_of(&w.arns.prv_prod);
                w.calls.clear();
                w.calls.fault_at(at, fault);
                let exec = format!("{phase}-{at}-{fault:?}");
                let out = w.invoke(phase, &exec).await;
                let op = w.calls.log().get(at).cloned().unwrap_or_default();
                let reports = w.reports_for(&exec);
                assert_eq!(reports.len(), 1, "{exec} ({op}): {reports:?}");
                assert_eq!(reports[0], out.status);
                // Recording state and listing task sets (green is then read from the listener) are best effort,
                // and waits absorb a transient error; any other failure, and any panic, fails the hook.
                let best_effort = op.starts_with("dynamodb:") || op == "codedeploy:GetDeploymentTarget";
                // AfterAllowTraffic records its outcome after its verdict, beside the report (its epilogue): every
                // DynamoDB call after its first read. A fault there, even a panic, cannot change the verdict.
                let after_verdict = phase == Phase::AfterAllowTraffic && op.starts_with("dynamodb:") && at > 0;
                let must_fail = !after_verdict
                    && (fault == Fault::Panic || (fault == Fault::Fail(AwsErrorKind::AccessDenied) && !best_effort));
                if after_verdict && fault == Fault::Panic {
                    assert_eq!(out.status, HookStatus::Succeeded, "{exec} ({op}): {:?}", out.message);
                    assert!(
                        out.summary.notes.iter().any(|n| n.contains("after the verdict: panicked")),
                        "{exec}: {:?}",
                        out.summary.notes
                    );
                }
                if must_fail {
                    assert_eq!(out.status, HookStatus::Failed, "{exec} ({op}) should fail");
                    let msg = out.message.clone().unwrap_or_default();
                    assert!(msg.contains("injected") || msg.contains("panic"), "{exec}: {msg}");
                }
                if out.status == HookStatus::Succeeded {
                    // A success despite the fault must leave exactly what a clean run leaves.
                    assert_eq!(private_side(&w), expected, "{exec} ({op})");
                } else {
                    // A failed hook leaves production where it was (restored, if AfterAllowTraffic flipped it).
                    let now = w.elb.route_of(&w.arns.prv_prod);
                    assert!(now.same_traffic(&before), "{exec} ({op}): {before} -> {now}");
                }
                assert!(w.elb.dark_moments().is_empty(), "{exec}: {:?}", w.elb.dark_moments());
                // Whatever happened, running the hook again without faults converges.
                w.calls.no_faults();
                let again = w.invoke(phase, &format!("{exec}-retry")).await;
                assert_eq!(again.status, HookStatus::Succeeded, "{exec} retry: {:?}", again.message);
                assert_eq!(private_side(&w), expected, "{exec} retry");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn before_allow_traffic_waits_out_a_minute_of_elb_throttling_and_fails_once_without_the_time() {
    for (timeout, waits) in [(Duration::from_secs(900), true), (Duration::from_secs(50), false)] {
        let w = World::new();
        let a = &w.arns;
        w.install_green();
        assert_eq!(w.invoke(Phase::AfterInstall, "ai").await.status, HookStatus::Succeeded);
        let before = w.elb.route_of(&a.prv_prod);
        // ELB refuses every read for a minute from BeforeAllowTraffic's start: the account's bucket run dry.
        w.calls.fail_every("elb:Describe", AwsErrorKind::Throttled);
        let outage = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            w.calls.no_faults();
        };
        let (out, ()) = tokio::join!(w.invoke_for(Phase::BeforeAllowTraffic, DEPLOYMENT, "bat", timeout), outage);
        assert_eq!(w.reports_for("bat"), [out.status], "reported exactly once");
        let notes = &out.summary.notes;
        if waits {
            assert_eq!(out.status, HookStatus::Succeeded, "{:?} {notes:?}", out.message);
            assert!(notes.iter().filter(|n| n.contains("trying again")).count() >= 5, "{notes:?}");
            let record = w.state.record(DEPLOYMENT).expect("the deployment's record");
            assert!(record.phases.contains_key("BeforeAllowTraffic"), "the gate passed and planned the flip");
        } else {
            // Too little time to wait the minute out: it tries again while half its time is left, then fails
            // before traffic moves, nothing changed.
            assert_eq!(out.status, HookStatus::Failed);
            assert!(out.message.as_deref().unwrap_or_default().contains("injected"), "{:?}", out.message);
            let tries = notes.iter().filter(|n| n.contains("trying again")).count();
            assert!((1..=4).contains(&tries), "after 1, 2, 4, 8 s, then less than half its time is left: {notes:?}");
        }
        assert_eq!(w.elb.route_of(&a.prv_prod), before, "the private production route where it was");
        assert!(w.elb.dark_moments().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn private_side_that_cannot_reach_green_fails_the_gate_before_traffic_moves() {
    let w = World::new();
    let a = &w.arns;
    w.elb.make_unreachable(&a.prv_green);
    w.install_green();
    assert_eq!(w.invoke(Phase::AfterInstall, "e1").await.status, HookStatus::Succeeded);
    let out = w.invoke(Phase::BeforeAllowTraffic, "e2").await;
    assert_eq!(out.status, HookStatus::Failed);
    let msg = out.message.unwrap_or_default();
    assert!(msg.contains("not healthy in private target group prv-green"), "{msg}");
    assert!(msg.contains("production traffic has not moved"), "{msg}");
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_blue.as_str()]);
    assert_eq!(w.reports_for("e2"), vec![HookStatus::Failed]);
    let rec = w.state.record(DEPLOYMENT).expect("record");
    assert_eq!(rec.outcome.as_deref(), Some("failed"));
    assert!(rec.planned_private_route.is_none());
}

#[tokio::test(start_paused = true)]
async fn after_the_flip_the_binding_record_is_written_over_the_version_before_allow_traffic_read() {
    let w = prepared(Phase::AfterAllowTraffic).await;
    let a = &w.arns;
    let before = w.state.binding_record(APP, GROUP).map_or(0, |r| r.version);
    w.calls.clear();
    let aat = w.invoke(Phase::AfterAllowTraffic, "exec-aat").await;
    assert_eq!(aat.status, HookStatus::Succeeded, "{:?}", aat.message);
    let b = w.state.binding_record(APP, GROUP).expect("binding record");
    assert_eq!(b.live_private_target_group.as_deref(), Some(a.prv_green.as_str()));
    assert_eq!(b.last_deployment.as_deref(), Some(DEPLOYMENT));
    assert_eq!(b.version, before + 1);
    let rec = w.state.record(DEPLOYMENT).expect("record");
    assert_eq!(rec.outcome.as_deref(), Some("succeeded"));
    assert_eq!(rec.binding_record.as_ref(), Some(&b), "the record carries the binding's record as written");
    // The deployment record read before the flip is the only read of the table; both records go in one write.
    assert_eq!(w.calls.count("dynamodb:GetItem"), 1, "{:?}", w.calls.log());
    assert_eq!(w.calls.count("dynamodb:TransactWriteItems"), 1, "{:?}", w.calls.log());
    assert_eq!(w.calls.count("dynamodb:PutItem"), 0, "{:?}", w.calls.log());
}

/// A reporter that notes, as each report goes out, the outcome the deployment's record holds at that moment.
struct RecordAtReport<'a> {
    world: &'a World,
    seen: std::sync::Mutex<Vec<Option<String>>>,
}

impl bluegreen_mirror::ports::HookReporter for RecordAtReport<'_> {
    async fn report(
        &self,
        deployment_id: &str,
        execution_id: &str,
        status: HookStatus,
    ) -> bluegreen_mirror::Result<bluegreen_mirror::ports::Reported> {
        let outcome = self.world.state.record(deployment_id).and_then(|r| r.outcome);
        self.seen.lock().unwrap().push(outcome);
        self.world.codedeploy.report(deployment_id, execution_id, status).await
    }
}

#[tokio::test(start_paused = true)]
async fn codedeploy_hears_the_verdict_without_waiting_for_the_records() {
    let w = prepared(Phase::AfterAllowTraffic).await;
    // The records' write is slow: the report goes out beside it, not after it.
    w.calls.stall_every("dynamodb:TransactWriteItems", Duration::from_secs(30));
    let reporter = RecordAtReport { world: &w, seen: std::sync::Mutex::default() };
    let out = w
        .invoke_reporting_to(&reporter, Phase::AfterAllowTraffic, DEPLOYMENT, "exec-aat", Duration::from_secs(120))
        .await;
    assert_eq!(out.status, HookStatus::Succeeded, "{:?}", out.message);
    assert_eq!(w.reports_for("exec-aat"), vec![HookStatus::Succeeded]);
    let seen = reporter.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_ne!(seen[0].as_deref(), Some("succeeded"), "the report waited for the records");
    // The invocation still ends with its records written.
    assert_eq!(w.state.record(DEPLOYMENT).and_then(|r| r.outcome).as_deref(), Some("succeeded"));
    assert_eq!(
        w.state.binding_record(APP, GROUP).and_then(|b| b.live_private_target_group).as_deref(),
        Some(w.arns.prv_green.as_str())
    );
    assert!(out.duration_ms >= 30_000, "the response came before the records: {} ms", out.duration_ms);
}

#[tokio::test(start_paused = true)]
async fn records_that_outlast_the_lambda_deadline_leave_the_verdict_reported_and_say_so() {
    let w = prepared(Phase::AfterAllowTraffic).await;
    w.calls.stall_every("dynamodb:TransactWriteItems", Duration::from_secs(600));
    let out = w.invoke_for(Phase::AfterAllowTraffic, DEPLOYMENT, "exec-aat", Duration::from_secs(60)).await;
    assert_eq!(out.status, HookStatus::Succeeded, "{:?}", out.message);
    assert_eq!(w.reports_for("exec-aat"), vec![HookStatus::Succeeded]);
    assert!(out.duration_ms <= 60_000, "past the Lambda deadline: {} ms", out.duration_ms);
    assert!(
        out.summary.notes.iter().any(|n| n.contains("not finished by the Lambda deadline")),
        "{:?}",
        out.summary.notes
    );
    // The private side is flipped and stays so: the records are notes, never the verdict.
    assert_eq!(w.elb.route_of(&w.arns.prv_prod).live(), vec![w.arns.prv_green.as_str()]);
}

#[tokio::test(start_paused = true)]
async fn a_binding_record_changed_since_before_allow_traffic_is_read_again_and_kept() {
    use bluegreen_mirror::ports::StateStore;
    let w = prepared(Phase::AfterAllowTraffic).await;
    let a = &w.arns;
    // Another writer (the reconciler after a route move) wrote the binding's record after BeforeAllowTraffic read it.
    let mut other = w.state.binding_record(APP, GROUP).unwrap_or_default();
    other.application = APP.into();
    other.deployment_group = GROUP.into();
    other.version += 1;
    other.updated_at_ms = 7;
    w.state.put_binding(&other).await.expect("another writer's record");
    w.calls.clear();
    let aat = w.invoke(Phase::AfterAllowTraffic, "exec-aat").await;
    assert_eq!(aat.status, HookStatus::Succeeded, "{:?}", aat.message);
    let b = w.state.binding_record(APP, GROUP).expect("binding record");
    assert_eq!(b.live_private_target_group.as_deref(), Some(a.prv_green.as_str()));
    assert_eq!(b.version, other.version + 1, "written over the other writer's record, not lost to it");
    assert_eq!(w.state.record(DEPLOYMENT).expect("record").outcome.as_deref(), Some("succeeded"));
    // The write of both is lost to the other writer; the deployment's is written over the record read at the start
    // and the binding's is read again.
    assert_eq!(w.calls.count("dynamodb:TransactWriteItems"), 1, "{:?}", w.calls.log());
    assert_eq!(w.calls.count("dynamodb:GetItem"), 2, "{:?}", w.calls.log());
    assert_eq!(w.calls.count("dynamodb:PutItem"), 2, "{:?}", w.calls.log());
}

#[tokio::test(start_paused = true)]
async fn a_dark_flip_is_undone_and_reported_failed() {
    let w = World::new();
    let a = &w.arns;
    w.through_the_gate().await;
    w.allow_traffic();
    // Between the gate and the flip the private side lost green (e.g. a security group change).
    w.elb.set_health(&a.prv_green, HealthState::Unhealthy);
    w.calls.clear();
    let out = w.invoke(Phase::AfterAllowTraffic, "e3").await;
    assert_eq!(out.status, HookStatus::Failed);
    assert!(out.message.unwrap_or_default().contains("no healthy target"));
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_blue.as_str()]);
    assert!(out.summary.notes.iter().any(|n| n.contains("restored")));
    // Each of the four groups is read once: the public mirror the check compares with was read with the rest.
    assert_eq!(w.calls.count("elb:DescribeTargetHealth"), 4, "{:?}", w.calls.log());
}

#[tokio::test(start_paused = true)]
async fn waiting_for_green_that_never_comes_times_out_with_one_failed_report() {
    let w = World::new();
    let out = w.invoke_for(Phase::AfterInstall, DEPLOYMENT, "t1", Duration::from_secs(30)).await;
    assert_eq!(out.status, HookStatus::Failed);
    let msg = out.message.unwrap_or_default();
    assert!(msg.contains("holds 0 of the 3 replacement tasks"), "{msg}");
    assert_eq!(w.reports_for("t1"), vec![HookStatus::Failed]);
    assert!(w.elb.members(&w.arns.prv_green).is_empty());
}

/// Each bad input: `Failed`, a message naming what to fix, and no write to the private side.
#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_with_a_clear_message_and_nothing_changed() {
    type Setup = Box<dyn Fn(&World)>;
    let cases: Vec<(&str, &str, Setup)> = vec![
        ("unknown deployment", "does not exist", Box::new(|_| {})),
        (
            "no binding",
            "no binding for application",
            Box::new(|w| w.codedeploy.edit(DEPLOYMENT, |f| f.deployment_group = "other".into())),
        ),
        (
            "not ECS",
            "ECS blue/green deployments only",
            Box::new(|w| w.codedeploy.edit(DEPLOYMENT, |f| f.compute_platform = "Server".into())),
        ),
        (
            "in place",
            "BLUE_GREEN deployments only",
            Box::new(|w| w.codedeploy.edit(DEPLOYMENT, |f| f.deployment_type = "IN_PLACE".into())),
        ),
        (
            "unbound public target group",
            "does not name as a public target group",
            Box::new(|w| w.codedeploy.edit(DEPLOYMENT, |f| f.target_group_names[1] = "someone-else".into())),
        ),
        ("private target group missing", "does not exist", Box::new(|w| w.elb.remove_group(&w.arns.prv_green))),
        (
            "private target group of type instance",
            "of type `instance`",
            Box::new(|w| w.elb.group_mut(&w.arns.prv_green, |g| g.facts.target_type = "instance".into())),
        ),
        (
            "port mismatch",
            "both must target the task's port; give prv-green port 8080",
            Box::new(|w| w.elb.group_mut(&w.arns.prv_green, |g| g.facts.port = Some(9090))),
        ),
        (
            "protocol mismatch",
            "groups of the same kind (both ALB or both NLB) must use the same protocol",
            Box::new(|w| w.elb.group_mut(&w.arns.prv_blue, |g| g.facts.protocol = Some("HTTPS".into()))),
        ),
        (
            "private TLS group mirroring plain HTTP",
            "speak TLS to the tasks and the other plain text; a mirror of a HTTP group must use HTTP (ALB) or TCP (NLB)",
            Box::new(|w| w.elb.group_mut(&w.arns.prv_blue, |g| g.facts.protocol = Some("TLS".into()))),
        ),
        (
            "private target group attached to another load balancer",
            "not (only) to the binding's private",
            Box::new(|w| w.elb.group_mut(&w.arns.prv_green, |g| g.facts.load_balancers.push(w.arns.pub_lb.clone()))),
        ),
        ("private listener missing", "private production route", Box::new(|w| w.elb.remove_route(&w.arns.prv_prod))),
        ("private test rule missing", "private test route", Box::new(|w| w.elb.remove_route(&w.arns.prv_test))),
        (
            "state table missing",
            "the state table bluegreen-mirror does not exist",
            Box::new(|w| w.calls.fail_every("dynamodb:", AwsErrorKind::NotFound)),
        ),
        (
            "state table not readable",
            "injected AccessDenied on every dynamodb:GetItem",
            Box::new(|w| w.calls.fail_every("dynamodb:", AwsErrorKind::AccessDenied)),
        ),
        (
            "private route forwards elsewhere",
            "which binding web/web-bg does not name",
            Box::new(|w| w.elb.put_route(&w.arns.prv_prod, Route::all_to(&w.arns.pub_blue, &[], RouteStyle::Weighted))),
        ),
    ];
    for (name, want, setup) in cases {
        for phase in [Phase::AfterInstall, Phase::BeforeAllowTraffic, Phase::AfterAllowTraffic] {
            let w = World::new();
            w.install_green();
            setup(&w);
            let deployment = if name == "unknown deployment" { "d-NOSUCH" } else { DEPLOYMENT };
            let exec = format!("{name}-{phase}");
            let out = w.invoke_for(phase, deployment, &exec, Duration::from_secs(120)).await;
            if name.starts_with("state table") && phase == Phase::AfterAllowTraffic {
                // Production has moved already and the two hooks before checked the table: failing now would
                // only roll back a good flip. The flip goes on without its record.
                assert_eq!(out.status, HookStatus::Succeeded, "{exec}: {:?}", out.message);
                assert!(w.elb.dark_moments().is_empty(), "{exec}");
                continue;
            }
            assert_eq!(out.status, HookStatus::Failed, "{exec}");
            let msg = out.message.unwrap_or_default();
            assert!(msg.contains(want), "{exec}: {msg:?} lacks {want:?}");
            assert!(w.private_writes().is_empty(), "{exec}: wrote {:?}", w.private_writes());
            assert_eq!(w.codedeploy.reports().len(), 1, "{exec}");
            // The failure is published under the deployment group CodeDeploy named, bound or not (the alarm that
            // pages groups by it); only a deployment CodeDeploy does not know has none.
            let group = (out.summary.application.as_deref(), out.summary.deployment_group.as_deref());
            match name {
                "unknown deployment" => assert_eq!(group, (None, None), "{exec}"),
                "no binding" => assert_eq!(group, (Some(APP), Some("other")), "{exec}"),
                _ if !name.starts_with("state table") || phase == Phase::AfterInstall => {
                    assert_eq!(group, (Some(APP), Some(GROUP)), "{exec}")
                }
                _ => {}
            }
        }
    }
}
