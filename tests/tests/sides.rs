//! A binding with two private sides (an internal ALB and an NLB for PrivateLink): every side mirrored and gated,
//! both flipped at AfterAllowTraffic with the writes issued together after one DynamoDB read, a side that cannot
//! be flipped undoing both, the follower moving both, a rollback followed on both, status showing both.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use bluegreen_mirror::domain::{Phase, Route, RouteStyle};
use bluegreen_mirror::harness::{Budget, Tracker};
use bluegreen_mirror::ports::{FollowRequest, HookStatus};
use bluegreen_mirror_tests::{keys, strings, weighted, World, APP, DEPLOYMENT, GROUP};

#[tokio::test(start_paused = true)]
async fn both_sides_are_mirrored_gated_and_flipped_together() {
    let w = World::two_sides();
    let a = &w.arns;
    w.install_green();
    let ai = w.invoke(Phase::AfterInstall, "e1").await;
    assert_eq!(ai.status, HookStatus::Succeeded, "{:?}", ai.message);
    for tg in [&a.prv_green, &a.nlb_green] {
        assert_eq!(w.elb.members(tg), strings(&keys(101..104)), "{tg}");
    }
    // The NLB's test listener holds green (the idle group) until the flip; production stays on blue.
    assert_eq!(w.elb.route_of(&a.nlb_prod), Route::all_to(&a.nlb_blue, &[], RouteStyle::Single));
    assert_eq!(w.elb.route_of(&a.nlb_test), Route::all_to(&a.nlb_green, &[], RouteStyle::Single));

    w.allow_test_traffic();
    let bat = w.invoke(Phase::BeforeAllowTraffic, "e2").await;
    assert_eq!(bat.status, HookStatus::Succeeded, "{:?}", bat.message);
    let rec = w.state.record(DEPLOYMENT).expect("record");
    assert_eq!(rec.planned_private_route, Some(Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted)));
    let nlb = &rec.additional_sides[0];
    assert_eq!(nlb.private_production_route.as_deref(), Some(a.nlb_prod.as_str()));
    assert_eq!(nlb.planned_private_route, Some(Route::all_to(&a.nlb_green, &[], RouteStyle::Single)));
    assert_eq!(nlb.private_route_before, Some(Route::all_to(&a.nlb_blue, &[], RouteStyle::Single)));

    w.allow_traffic();
    w.calls.clear();
    let aat = w.invoke(Phase::AfterAllowTraffic, "e3").await;
    assert_eq!(aat.status, HookStatus::Succeeded, "{:?}", aat.message);
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted));
    assert_eq!(w.elb.route_of(&a.nlb_prod), Route::all_to(&a.nlb_green, &[], RouteStyle::Single));
    // The idle blue group moves to the NLB's test listener, still attached and health-checked.
    assert_eq!(w.elb.route_of(&a.nlb_test), Route::all_to(&a.nlb_blue, &[], RouteStyle::Single));
    // The critical path: one read, then both sides' writes issued together.
    let log = w.calls.log();
    assert_eq!(&log[..3], ["dynamodb:GetItem", "elb:ModifyListener", "elb:ModifyListener"], "{log:?}");
    // After it, each group's targets are read once, for the I4 check and membership alike: the two public groups
    // and the four private ones (the public groups are not read again for side 2, the live ones not twice).
    assert_eq!(w.calls.count("elb:DescribeTargetHealth"), 6, "{log:?}");
    // Every route it reads after the flip (public production, both sides' production and test routes, the public
    // test route) comes in one DescribeListeners.
    assert_eq!(w.calls.count("elb:DescribeListeners"), 1, "{log:?}");
    assert!(w.elb.dark_moments().is_empty(), "{:?}", w.elb.dark_moments());
    for exec in ["e1", "e2", "e3"] {
        assert_eq!(w.reports_for(exec), vec![HookStatus::Succeeded], "{exec}");
    }

    // `status` shows both sides, each in sync.
    let engine = w.hooks();
    let b = w.config.bindings[0].clone();
    let group = engine.group(&b).await.unwrap();
    let sides = engine.status(&b, &group, &Tracker::default()).await.unwrap();
    assert_eq!(sides.len(), 2);
    assert_eq!((sides[0].binding.as_str(), sides[1].binding.as_str()), ("web/web-bg", "web/web-bg side 2"));
    assert!(sides.iter().all(|s| s.in_sync), "{sides:?}");
    assert!(sides[1].private_production.as_deref().unwrap_or_default().contains("nlb-green"), "{sides:?}");
}

#[tokio::test(start_paused = true)]
async fn the_gate_waits_for_every_side_and_fails_before_traffic_moves() {
    let w = World::two_sides();
    let a = &w.arns;
    // The NLB cannot reach the replacement tasks (its security group, say); the internal ALB can.
    w.elb.make_unreachable(&a.nlb_green);
    w.install_green();
    assert_eq!(w.invoke(Phase::AfterInstall, "e1").await.status, HookStatus::Succeeded);
    let bat = w.invoke(Phase::BeforeAllowTraffic, "e2").await;
    assert_eq!(bat.status, HookStatus::Failed);
    let message = bat.message.unwrap_or_default();
    assert!(
        message.contains("behind the private load balancer of web/web-bg side 2")
            && message.contains("nlb-green")
            && message.contains("production traffic has not moved"),
        "{message}"
    );
    assert_eq!(w.reports_for("e2"), vec![HookStatus::Failed]);
    // Neither production route moved.
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_blue.as_str()]);
    assert_eq!(w.elb.route_of(&a.nlb_prod).live(), vec![a.nlb_blue.as_str()]);
}

#[tokio::test(start_paused = true)]
async fn a_side_that_cannot_be_flipped_puts_every_side_back() {
    let w = World::two_sides();
    let a = &w.arns;
    w.through_the_gate().await;
    w.allow_traffic();
    // The NLB's listener is missing from the role: its flip is refused while the ALB's goes through.
    w.elb.refuse_writes(&a.nlb_prod);
    let aat = w.invoke(Phase::AfterAllowTraffic, "e3").await;
    assert_eq!(aat.status, HookStatus::Failed);
    let message = aat.message.unwrap_or_default();
    assert!(message.contains(&a.nlb_prod), "{message}");
    assert_eq!(w.reports_for("e3"), vec![HookStatus::Failed]);
    // The ALB side was flipped, then put back with the NLB side: no side is left flipped alone.
    let alb_writes: Vec<Route> =
        w.elb.route_log().into_iter().filter(|(arn, _)| arn == &a.prv_prod).map(|(_, r)| r).collect();
    assert!(alb_writes.iter().any(|r| r.live() == vec![a.prv_green.as_str()]), "{alb_writes:?}");
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_blue, &[&a.prv_green], RouteStyle::Weighted));
    assert_eq!(w.elb.route_of(&a.nlb_prod), Route::all_to(&a.nlb_blue, &[], RouteStyle::Single));
    let rec = w.state.record(DEPLOYMENT).expect("record");
    assert_eq!(rec.outcome.as_deref(), Some("failed"));
}

#[tokio::test(start_paused = true)]
async fn the_follower_moves_every_side_and_a_rollback_is_followed_on_every_side() {
    let w = World::two_sides();
    let a = &w.arns;
    w.through_the_gate().await;
    let engine = w.hooks();
    let req = FollowRequest {
        deployment_id: DEPLOYMENT.into(),
        application: APP.into(),
        deployment_group: GROUP.into(),
        production_listener: Some(a.pub_prod.clone()),
        config_name: Some("CodeDeployDefault.ECSLinear10PercentEvery1Minutes".into()),
        binding: None,
    };
    let t = Tracker::default();
    let follower = engine.follow(&req, "f-1", Budget::after(Duration::from_secs(600)), &t);
    let shift = async {
        for step in 1..=4u32 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            w.elb.put_route(&a.pub_prod, weighted(&a.pub_blue, &a.pub_green, step * 20));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        // At 80 % green: the ALB side mirrors the weights, the NLB side follows the majority.
        assert_eq!(w.elb.route_of(&a.prv_prod).weight(&a.prv_green), Some(80));
        assert_eq!(w.elb.route_of(&a.nlb_prod), Route::all_to(&a.nlb_green, &[], RouteStyle::Single));
        // An alarm: CodeDeploy puts the public side back on blue and the deployment stops.
        w.elb.put_route(&a.pub_prod, weighted(&a.pub_blue, &a.pub_green, 0));
        w.codedeploy.edit(DEPLOYMENT, |f| f.status = "Stopped".into());
    };
    let (followed, ()) = tokio::join!(follower, shift);
    followed.expect("follower");
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_blue.as_str()]);
    assert_eq!(w.elb.route_of(&a.nlb_prod), Route::all_to(&a.nlb_blue, &[], RouteStyle::Single));
    // Every step of the NLB side: blue until green held the majority, then green, then blue again.
    let nlb: Vec<Vec<String>> = w
        .elb
        .route_log()
        .into_iter()
        .filter(|(arn, _)| arn == &a.nlb_prod)
        .map(|(_, r)| r.live().iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(nlb, vec![vec![a.nlb_green.clone()], vec![a.nlb_blue.clone()]], "{nlb:?}");
    assert!(w.elb.dark_moments().is_empty(), "{:?}", w.elb.dark_moments());
}

#[tokio::test(start_paused = true)]
async fn check_refuses_a_bad_side_naming_it() {
    let w = World::two_sides();
    let a = &w.arns;
    let engine = w.hooks();
    let b = w.config.bindings[0].clone();
    let group = engine.group(&b).await.unwrap();
    assert!(engine.check(&b, &group, &Tracker::default()).await.is_ok());
    // A side whose NLB group is of another port is refused, naming that side's group.
    w.elb.group_mut(&a.nlb_green, |g| g.facts.port = Some(9090));
    let err = engine.check(&b, &group, &Tracker::default()).await.unwrap_err().to_string();
    assert!(err.contains("binding web/web-bg side 2") && err.contains("nlb-green uses TCP:9090"), "{err}");
    w.elb.group_mut(&a.nlb_green, |g| g.facts.port = Some(8080));
    // A side's route that forwards elsewhere is refused too.
    w.elb.put_route(&a.nlb_test, Route::all_to(&a.prv_green, &[], RouteStyle::Single));
    let err = engine.check(&b, &group, &Tracker::default()).await.unwrap_err().to_string();
    assert!(err.contains("private test route") && err.contains("web/web-bg side 2"), "{err}");
}

/// How many times each of `arns` was read with `op` since the log was cleared.
fn reads(w: &World, op: &str, arns: &[&String]) -> Vec<usize> {
    arns.iter().map(|a| w.calls.reads_of(op, a)).collect()
}

#[tokio::test(start_paused = true)]
async fn every_side_of_a_pass_shares_one_read_of_each_public_group_and_route() {
    const DTH: &str = "elb:DescribeTargetHealth";
    let w = World::two_sides();
    let a = &w.arns;
    w.install_green();
    w.calls.clear();
    assert_eq!(w.invoke(Phase::AfterInstall, "e1").await.status, HookStatus::Succeeded);
    // Blue's pair mirrored on both sides from one read of the public blue group, and both production routes
    // checked against one read of the public listener.
    assert_eq!(reads(&w, DTH, &[&a.pub_blue, &a.prv_blue, &a.nlb_blue]), [1, 1, 1]);
    assert_eq!(w.calls.reads_of("elb:DescribeListeners", &a.pub_prod), 1, "{:?}", w.calls.log());
    // The preflight of both sides: their six groups in one DescribeTargetGroups, their four private listeners
    // in one DescribeListeners (the other one is the public listener's read above).
    assert_eq!(w.calls.count("elb:DescribeTargetGroups"), 1, "{:?}", w.calls.log());
    assert_eq!(w.calls.count("elb:DescribeListeners"), 2, "{:?}", w.calls.log());

    w.allow_test_traffic();
    w.calls.clear();
    assert_eq!(w.invoke(Phase::BeforeAllowTraffic, "e2").await.status, HookStatus::Succeeded);
    assert_eq!(reads(&w, DTH, &[&a.pub_blue, &a.prv_blue, &a.nlb_blue]), [1, 1, 1]);
    // Public green: the wait for the replacement tasks, then the gate's one poll for both sides.
    assert_eq!(reads(&w, DTH, &[&a.pub_green, &a.prv_green, &a.nlb_green]), [2, 1, 1]);

    // The reconciler's passes: a full reconcile, a membership read, `status`.
    let engine = w.hooks();
    let b = w.config.bindings[0].clone();
    let group = engine.group(&b).await.unwrap();
    let t = Tracker::default();
    let passes = [("reconcile", 0), ("membership", 1), ("status", 2)];
    for (pass, which) in passes {
        w.calls.clear();
        match which {
            0 => assert!(!engine.reconcile(&b, &group, &t).await.unwrap().changed(), "{pass}"),
            1 => assert!(!engine.reconcile_membership(&b, &t).await.unwrap().changed(), "{pass}"),
            _ => assert!(engine.status(&b, &group, &t).await.unwrap().iter().all(|s| s.in_sync), "{pass}"),
        }
        let groups = [&a.pub_blue, &a.pub_green, &a.prv_blue, &a.prv_green, &a.nlb_blue, &a.nlb_green];
        assert_eq!(reads(&w, DTH, &groups), [1; 6], "{pass}: {:?}", w.calls.log());
        let publics = [&a.pub_prod, &a.pub_test];
        let routes = reads(&w, "elb:DescribeListeners", &publics);
        assert_eq!(routes, if which == 1 { [0, 0] } else { [1, 1] }, "{pass}: {:?}", w.calls.log());
        // Both sides' preflight in one read of their groups.
        let described = w.calls.count("elb:DescribeTargetGroups");
        assert_eq!(described, if which == 1 { 0 } else { 1 }, "{pass}: {:?}", w.calls.log());
    }
}

#[tokio::test(start_paused = true)]
async fn the_gate_polls_the_public_group_once_for_every_side_still_waiting() {
    const DTH: &str = "elb:DescribeTargetHealth";
    let w = World::two_sides();
    let a = &w.arns;
    // Both private load balancers take a while to pass their health checks.
    w.elb.make_unreachable(&a.prv_green);
    w.elb.make_unreachable(&a.nlb_green);
    w.install_green();
    assert_eq!(w.invoke(Phase::AfterInstall, "e1").await.status, HookStatus::Succeeded);
    w.allow_test_traffic();
    w.calls.clear();
    let heal = async {
        // The internal ALB's checks pass after 20 s, the NLB's after 40 s.
        tokio::time::sleep(Duration::from_secs(20)).await;
        w.elb.set_health(&a.prv_green, bluegreen_mirror::domain::HealthState::Healthy);
        tokio::time::sleep(Duration::from_secs(20)).await;
        w.elb.set_health(&a.nlb_green, bluegreen_mirror::domain::HealthState::Healthy);
    };
    let (bat, ()) = tokio::join!(w.invoke(Phase::BeforeAllowTraffic, "e2"), heal);
    assert_eq!(bat.status, HookStatus::Succeeded, "{:?}", bat.message);
    let [public, alb, nlb] = reads(&w, DTH, &[&a.pub_green, &a.prv_green, &a.nlb_green])[..] else { unreachable!() };
    // Both sides were polled while waiting, the NLB's for longer; the ALB's was not polled once it was ready.
    assert!(nlb > alb && alb > 1, "alb {alb}, nlb {nlb}");
    // One read of the public group per poll (the NLB's side is in every poll), plus the wait for the tasks.
    assert_eq!(public, nlb + 1, "public {public}, alb {alb}, nlb {nlb}");
    assert_eq!(w.reports_for("e2"), vec![HookStatus::Succeeded]);
}

#[tokio::test(start_paused = true)]
async fn a_missing_route_of_one_side_is_named_though_the_sides_are_read_together() {
    let w = World::two_sides();
    let a = &w.arns;
    w.elb.remove_route(&a.nlb_test);
    w.install_green();
    let ai = w.invoke(Phase::AfterInstall, "e1").await;
    assert_eq!(ai.status, HookStatus::Failed);
    let message = ai.message.unwrap_or_default();
    assert!(message.contains("private test route") && message.contains(&a.nlb_test), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert_eq!(w.reports_for("e1"), vec![HookStatus::Failed]);
    // Nothing was changed on either side.
    assert!(w.elb.members(&a.prv_green).is_empty() && w.elb.members(&a.nlb_green).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_side_refused_by_the_preflight_read_together_fails_alone_in_a_reconcile() {
    let w = World::two_sides();
    let a = &w.arns;
    // A task scales out on the public side; the NLB side's green group has meanwhile been set to another port.
    w.elb.add_targets(&a.pub_blue, &keys(201..202), bluegreen_mirror::domain::HealthState::Healthy);
    w.elb.group_mut(&a.nlb_green, |g| g.facts.port = Some(9090));
    let engine = w.hooks();
    let b = w.config.bindings[0].clone();
    let group = engine.group(&b).await.unwrap();
    w.calls.clear();
    let err = engine.reconcile(&b, &group, &Tracker::default()).await.unwrap_err().to_string();
    assert!(err.contains("binding web/web-bg side 2") && err.contains("nlb-green"), "{err}");
    // The internal ALB's side was mirrored all the same; the NLB's was left as it was.
    let new = strings(&keys(201..202));
    assert_eq!(w.elb.members(&a.prv_blue), w.elb.members(&a.pub_blue));
    assert!(w.elb.members(&a.prv_blue).contains(&new[0]));
    assert!(!w.elb.members(&a.nlb_blue).contains(&new[0]));
    assert_eq!(w.calls.count("elb:DescribeTargetGroups"), 1, "{:?}", w.calls.log());
}
