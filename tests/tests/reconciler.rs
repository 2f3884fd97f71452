//! The reconciler against in-memory fakes: rollback after the flip (no hook runs), scaling and replaced tasks
//! between deployments, a reconcile racing a hook, and the follower mirroring canary/linear steps, handing over
//! before its deadline, and stopping when the deployment is over.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use bluegreen_mirror::domain::{HealthState, Phase, Route, RouteStyle, WeightedTargetGroup};
use bluegreen_mirror::harness::{Budget, Tracker};
use bluegreen_mirror::ports::{FollowRequest, HookStatus};
use bluegreen_mirror::usecase::Trigger;
use bluegreen_mirror::AwsErrorKind;
use bluegreen_mirror_tests::{ended, ip, keys, strings, weighted, World, APP, DEPLOYMENT, GROUP};

async fn reconcile(w: &World, trigger: Trigger) -> Vec<bluegreen_mirror::usecase::Reconciled> {
    let engine = w.hooks();
    let mut out = Vec::new();
    for (_, found) in engine.bindings_for(&trigger).await.expect("bindings") {
        let (b, group) = found.expect("group");
        out.push(engine.reconcile(&b, &group, &Tracker::default()).await.expect("reconcile"));
    }
    out
}

async fn deployed(w: &World) {
    w.through_the_gate().await;
    w.allow_traffic();
    assert_eq!(w.invoke(Phase::AfterAllowTraffic, "e3").await.status, HookStatus::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_after_the_flip_is_followed_back_before_green_goes() {
    let w = World::new();
    let a = &w.arns;
    deployed(&w).await;
    // CodeDeploy reroutes the public side back to blue; the replacement tasks are still registered.
    w.elb.put_route(&a.pub_prod, Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted));
    let trigger = Trigger::Deployment {
        application: APP.into(),
        deployment_group: GROUP.into(),
        deployment_id: DEPLOYMENT.into(),
        state: "FAILURE".into(),
        at: None,
    };
    let out = reconcile(&w, trigger.clone()).await;
    assert_eq!(out.len(), 1);
    assert!(out[0].production.is_some());
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_blue, &[&a.prv_green], RouteStyle::Weighted));
    let binding = w.state.binding_record(APP, GROUP).expect("binding record");
    assert_eq!(binding.live_private_target_group.as_deref(), Some(a.prv_blue.as_str()), "the record follows the route");
    // Then ECS removes the replacement task set: the private mirror drains with it.
    w.elb.remove_targets(&a.pub_green, &keys(101..104));
    reconcile(&w, trigger).await;
    assert!(w.elb.members(&a.prv_green).is_empty());
    assert!(w.elb.dark_moments().is_empty(), "{:?}", w.elb.dark_moments());
}

#[tokio::test(start_paused = true)]
async fn scaling_and_replaced_tasks_are_mirrored_by_one_reconcile() {
    let w = World::new();
    let a = &w.arns;
    let task = Trigger::Task { cluster: "prod".into(), service: "web".into() };
    // Scale out by two.
    w.elb.add_targets(&a.pub_blue, &[ip(4), ip(5)], HealthState::Healthy);
    let out = reconcile(&w, task.clone()).await;
    assert_eq!(out[0].registered, 2);
    assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..6)));
    // One task replaced: ECS deregisters the old one and registers the new one.
    w.elb.remove_targets(&a.pub_blue, &[ip(2)]);
    w.elb.add_targets(&a.pub_blue, &[ip(9)], HealthState::Initial);
    let out = reconcile(&w, task).await;
    assert_eq!((out[0].registered, out[0].deregistered), (1, 1));
    assert_eq!(w.elb.members(&a.prv_blue), w.elb.members(&a.pub_blue));
    // Nothing to do: a second reconcile changes nothing.
    let again = reconcile(&w, Trigger::Schedule { at: 0 }).await;
    assert!(!again[0].changed());
}

#[tokio::test(start_paused = true)]
async fn a_task_that_stops_between_a_reconciles_reads_is_not_registered_back() {
    let engine_run = |w: &World, trigger: Trigger| {
        let engine = w.hooks();
        async move {
            let t = Tracker::default();
            let (_, found) = engine.bindings_for(&trigger).await.expect("bindings").into_iter().next().expect("bound");
            let (b, group) = found.expect("group");
            let done = match trigger {
                Trigger::Task { .. } => engine.reconcile_membership(&b, &t).await,
                _ => engine.reconcile(&b, &group, &t).await,
            };
            (done.expect("reconcile"), t.snapshot().notes)
        }
    };
    for trigger in [Trigger::Schedule { at: 0 }, Trigger::Task { cluster: "prod".into(), service: "web".into() }] {
        let w = World::new();
        let a = &w.arns;
        // The private group's read answers two seconds after the public one's (paced, or retried after a
        // throttle); in between, task 3 stops and leaves both sides.
        w.elb.delay_reads_of(&a.prv_blue, Duration::from_secs(2));
        w.elb.remove_after_next_read(&[&a.pub_blue, &a.prv_blue], &[ip(3)]);
        w.calls.clear();
        let (done, notes) = engine_run(&w, trigger.clone()).await;
        assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..3)), "{trigger:?}: {notes:?}");
        assert_eq!(w.elb.members(&a.prv_blue), w.elb.members(&a.pub_blue));
        assert_eq!(done.registered, 0, "{trigger:?}");
        assert_eq!(w.calls.count("elb:RegisterTargets"), 0, "{trigger:?}");
        assert!(
            notes.iter().any(|n| n == "prv-blue: not registering 10.0.0.3:8080, gone from pub-blue since it was read"),
            "{trigger:?}: {notes:?}"
        );
        // The confirmation costs one read, of the public group the registration came from.
        assert_eq!(w.calls.reads_of("elb:DescribeTargetHealth", &a.pub_blue), 2, "{trigger:?}");

        // Reads answered together need no confirmation: a scale-out is registered on the reads it came with.
        w.elb.delay_reads_of(&a.prv_blue, Duration::ZERO);
        w.elb.add_targets(&a.pub_blue, &[ip(7)], HealthState::Healthy);
        w.calls.clear();
        let (done, _) = engine_run(&w, trigger.clone()).await;
        assert_eq!(done.registered, 1, "{trigger:?}");
        assert_eq!(w.elb.members(&a.prv_blue), w.elb.members(&a.pub_blue));
        assert_eq!(w.calls.reads_of("elb:DescribeTargetHealth", &a.pub_blue), 1, "{trigger:?}");
    }
}

/// The binding an ECS task event of service `web` concerns.
async fn bound_to_web(w: &World) -> bluegreen_mirror::config::Binding {
    let task = Trigger::Task { cluster: "prod".into(), service: "web".into() };
    let engine = w.hooks();
    let (_, found) = engine.bindings_for(&task).await.expect("bindings").into_iter().next().expect("bound");
    found.expect("group").0.into_owned()
}

#[tokio::test(start_paused = true)]
async fn the_task_events_of_one_moment_read_the_groups_once_and_miss_nothing() {
    let w = World::new();
    let a = &w.arns;
    let engine = w.hooks();
    let b = bound_to_web(&w).await;
    // A scale-out by three: ECS sends one event per task, all within the moment.
    w.elb.add_targets(&a.pub_blue, &[ip(4), ip(5), ip(6)], HealthState::Healthy);
    w.calls.clear();
    let t = Tracker::default();
    let events = tokio::join!(
        engine.reconcile_membership_after_events(&b, "r-1", &t),
        engine.reconcile_membership_after_events(&b, "r-2", &t),
        engine.reconcile_membership_after_events(&b, "r-3", &t)
    );
    let done: Vec<_> = [events.0, events.1, events.2].into_iter().map(|r| r.expect("reconcile")).collect();
    assert_eq!(done.iter().filter(|d| d.is_some()).count(), 1, "one read for the three events");
    assert_eq!(done.iter().flatten().map(|d| d.registered).sum::<usize>(), 3);
    assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..7)), "every task of the three is mirrored");
    assert_eq!(w.calls.count("elb:DescribeTargetHealth"), 4, "four groups read once, not three times");
    assert_eq!(w.calls.count("dynamodb:UpdateItem"), 3, "each event costs one conditional write instead");
}

#[tokio::test(start_paused = true)]
async fn a_retry_of_an_event_that_died_after_claiming_the_read_makes_the_read() {
    use bluegreen_mirror::ports::{Claim, Coordination};
    let w = World::new();
    let a = &w.arns;
    let engine = w.hooks();
    let b = bound_to_web(&w).await;
    w.elb.add_targets(&a.pub_blue, &[ip(4), ip(5)], HealthState::Healthy);
    // The first attempt of request r-1 claimed the read and died before making it; the claim is still pending.
    let now = bluegreen_mirror::clock::now_ms();
    let what = format!("membership#{}", b.label());
    assert_eq!(w.state.claim_read(&what, "r-1", now, now + 60_000).await.expect("claim"), Claim::Taken);
    // Another event of that moment leaves the read to the pending claim...
    let t = Tracker::default();
    let other = engine.reconcile_membership_after_events(&b, "r-2", &t).await.expect("reconcile");
    assert!(other.is_none(), "{:?}", t.snapshot().notes);
    assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..4)), "nothing read yet");
    // ...and Lambda's retry of r-1 (same request id) takes its own claim back and reads for both, at once: the
    // moment's events have had the retry's wait to come.
    let started = tokio::time::Instant::now();
    let retried = engine.reconcile_membership_after_events(&b, "r-1", &t).await.expect("reconcile");
    assert_eq!(retried.map(|r| r.registered), Some(2));
    assert!(started.elapsed() < bluegreen_mirror::usecase::EVENTS_SETTLE, "{:?}", started.elapsed());
    assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..6)), "both new tasks mirrored by the retry");
}

#[tokio::test(start_paused = true)]
async fn task_events_read_each_deployment_group_once_in_five_minutes() {
    let w = World::new();
    let engine = w.hooks();
    let task = Trigger::Task { cluster: "prod".into(), service: "web".into() };
    let group_reads = || w.calls.count("codedeploy:GetDeploymentGroup");
    w.calls.clear();
    for _ in 0..3 {
        let found = engine.bindings_for(&task).await.expect("bindings");
        assert_eq!(found.len(), 1, "the event's service is bound once");
    }
    assert_eq!(group_reads(), 1, "a deployment that replaces ten tasks must not read every bound group per event");
    // Another service's event is routed from the same cache.
    assert!(engine
        .bindings_for(&Trigger::Task { cluster: "prod".into(), service: "api".into() })
        .await
        .expect("bindings")
        .is_empty());
    assert_eq!(group_reads(), 1);
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(engine.bindings_for(&task).await.expect("bindings").len(), 1);
    assert_eq!(group_reads(), 2, "after five minutes the group is read afresh");
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(start_paused = true)]
async fn a_fresh_rollback_puts_the_private_route_back_after_its_record_and_one_health_read() {
    for state in ["FAILURE", "STOP"] {
        let w = World::new();
        let a = &w.arns;
        deployed(&w).await;
        w.elb.put_route(&a.pub_prod, Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted));
        // ELB refuses every paced read: the put-back reads nothing that waits its turn or is held.
        w.calls.clear();
        w.calls.lane_busy_on("elb:Describe");
        let (_, done, summary) = w.run_trigger(&ended(state, Some(now_s()))).await;
        let log = w.calls.log();
        assert_eq!(
            log[..3],
            ["dynamodb:GetItem", "elb:DescribeTargetHealth", "elb:ModifyListener"],
            "{state}: the record, the never-dark read, the write: {log:?}"
        );
        assert_eq!(w.calls.reads().first(), Some(&("elb:DescribeTargetHealth".to_string(), a.prv_blue.clone())));
        assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_blue, &[&a.prv_green], RouteStyle::Weighted));
        assert!(done.iter().any(|r| r.production.is_some()), "{done:?}");
        let binding = w.state.binding_record(APP, GROUP).expect("binding record");
        assert_eq!(binding.live_private_target_group.as_deref(), Some(a.prv_blue.as_str()));
        assert!(w.elb.dark_moments().is_empty(), "{:?}", w.elb.dark_moments());
        assert!(summary.notes.iter().any(|n| n.contains("put back")), "{:?}", summary.notes);
    }
}

#[tokio::test(start_paused = true)]
async fn a_rollback_is_put_back_from_the_record_only_when_fresh_flipped_and_healthy() {
    // A stale event (a later deployment may have flipped since): the reconcile reads both sides first.
    let w = World::new();
    let a = &w.arns;
    deployed(&w).await;
    w.elb.put_route(&a.pub_prod, Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted));
    w.calls.clear();
    let (_, _, summary) = w.run_trigger(&ended("FAILURE", Some(now_s() - 3600))).await;
    let log = w.calls.log();
    let write = log.iter().position(|c| c == "elb:ModifyListener").expect("the reconcile moves it");
    assert!(log[..write].iter().any(|c| c == "elb:DescribeListeners"), "read the public route first: {log:?}");
    assert!(summary.notes.iter().any(|n| n.contains("not fresh")), "{:?}", summary.notes);
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_blue, &[&a.prv_green], RouteStyle::Weighted));

    // No flip on record (the gate failed): nothing to put back, no read or write spent on it; the production
    // route is not written.
    let w = World::new();
    w.through_the_gate().await;
    w.calls.clear();
    w.run_trigger(&ended("FAILURE", Some(now_s()))).await.0.expect("reconciled");
    let log = w.calls.log();
    assert_eq!(log[..2], ["dynamodb:GetItem", "codedeploy:GetDeploymentGroup"], "{log:?}");
    assert!(log.iter().all(|c| c != "elb:ModifyListener"), "{log:?}");

    // Blue's private mirror has no healthy target: the route stays until the reconcile, which sees both sides.
    let w = World::new();
    let a = &w.arns;
    deployed(&w).await;
    w.elb.put_route(&a.pub_prod, Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted));
    w.elb.set_health(&a.prv_blue, HealthState::Unhealthy);
    w.calls.clear();
    let (_, _, summary) = w.run_trigger(&ended("FAILURE", Some(now_s()))).await;
    assert!(summary.notes.iter().any(|n| n.contains("no healthy target to go back to")), "{:?}", summary.notes);
    assert_eq!(w.calls.log()[..2], ["dynamodb:GetItem", "elb:DescribeTargetHealth"]);
    assert_ne!(w.calls.log().get(2).map(String::as_str), Some("elb:ModifyListener"), "{:?}", w.calls.log());
}

#[tokio::test(start_paused = true)]
async fn events_for_other_groups_or_services_are_ignored() {
    let w = World::new();
    let other_group = Trigger::Deployment {
        application: APP.into(),
        deployment_group: "someone-else".into(),
        deployment_id: "d-X".into(),
        state: "SUCCESS".into(),
        at: None,
    };
    assert!(reconcile(&w, other_group).await.is_empty());
    assert!(reconcile(&w, Trigger::Task { cluster: "prod".into(), service: "api".into() }).await.is_empty());
    assert!(w.private_writes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_racing_the_flip_leaves_the_private_side_mirroring_the_public_one() {
    let w = World::new();
    let a = &w.arns;
    w.through_the_gate().await;
    w.allow_traffic();
    let (hook, _) = tokio::join!(w.invoke(Phase::AfterAllowTraffic, "e3"), reconcile(&w, Trigger::Schedule { at: 0 }));
    assert_eq!(hook.status, HookStatus::Succeeded);
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_green.as_str()]);
    assert_eq!(w.elb.members(&a.prv_green), strings(&keys(101..104)));
    assert!(w.elb.dark_moments().is_empty());
}

fn follow_request() -> FollowRequest {
    let w = World::new();
    FollowRequest {
        deployment_id: DEPLOYMENT.into(),
        application: APP.into(),
        deployment_group: GROUP.into(),
        production_listener: Some(w.arns.pub_prod.clone()),
        config_name: Some("CodeDeployDefault.ECSLinear10PercentEvery1Minutes".into()),
        binding: None,
    }
}

/// CodeDeploy shifting production traffic to green 10 % a second, then AfterAllowTraffic (which must succeed).
async fn shift_linearly(w: &World) {
    let a = &w.arns;
    for step in 1..=10u32 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        w.elb.put_route(&a.pub_prod, weighted(&a.pub_blue, &a.pub_green, step * 10));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.invoke(Phase::AfterAllowTraffic, "e3").await.status, HookStatus::Succeeded);
}

/// The longest time the private production route's shares differed from the mirror of the public one.
fn max_weight_lag(w: &World) -> Duration {
    let a = &w.arns;
    let mirror = |r: &Route| Route {
        target_groups: r
            .target_groups
            .iter()
            .map(|t| WeightedTargetGroup {
                target_group: if t.target_group == a.pub_blue { a.prv_blue.clone() } else { a.prv_green.clone() },
                weight: t.weight,
            })
            .collect(),
        stickiness_seconds: None,
    };
    let mut public = Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted);
    let mut private = Route::all_to(&a.prv_blue, &[&a.prv_green], RouteStyle::Weighted);
    let (mut since, mut worst) = (None, Duration::ZERO);
    for (arn, route, at) in w.elb.timed_route_log() {
        if arn == a.pub_prod {
            public = route;
        } else if arn == a.prv_prod {
            private = route;
        } else {
            continue;
        }
        match (private.same_traffic(&mirror(&public)), since) {
            (false, None) => since = Some(at),
            (true, Some(s)) => {
                worst = worst.max(at - s);
                since = None;
            }
            _ => {}
        }
    }
    worst
}

#[tokio::test(start_paused = true)]
async fn the_follower_mirrors_every_linear_step_within_a_tick() {
    let w = World::new();
    let a = &w.arns;
    w.install_green();
    w.invoke(Phase::AfterInstall, "e1").await;
    let bat = w.invoke(Phase::BeforeAllowTraffic, "e2").await;
    assert_eq!(bat.status, HookStatus::Succeeded);
    assert_eq!(w.followers.started(), vec![follow_request()], "BeforeAllowTraffic starts the follower");

    let engine = w.hooks();
    let (req, t1) = (follow_request(), Tracker::default());
    let follower = engine.follow(&req, "req-1", Budget::after(Duration::from_secs(600)), &t1);
    let (followed, ()) = tokio::join!(follower, shift_linearly(&w));
    followed.expect("follower");
    let lag = max_weight_lag(&w);
    assert!(lag <= Duration::from_millis(500), "max weight lag {lag:?}");
    // Every intermediate step showed up on the private side.
    let private_steps: Vec<u32> = w
        .elb
        .route_log()
        .into_iter()
        .filter(|(arn, _)| arn == &a.prv_prod)
        .filter_map(|(_, r)| r.weight(&a.prv_green))
        .collect();
    for step in 1..=10u32 {
        assert!(private_steps.contains(&(step * 10)), "step {step}0% missing from {private_steps:?}");
    }
    assert!(w.elb.dark_moments().is_empty());
    // The follower released its lease when the deployment was over.
    assert_eq!(w.state.lease(APP, GROUP).map(|l| l.owner), Some(String::new()));
}

/// An all-at-once deployment through its gate, its follower running beside `codedeploy` (what CodeDeploy does
/// next) until the deployment is over.
async fn follow_all_at_once(w: &World, codedeploy: impl std::future::Future<Output = ()>) {
    w.through_the_gate().await;
    let engine = w.hooks();
    let req = FollowRequest { config_name: Some("CodeDeployDefault.ECSAllAtOnce".into()), ..follow_request() };
    let t = Tracker::default();
    let follower = engine.follow(&req, "req-1", Budget::after(Duration::from_secs(600)), &t);
    let (followed, ()) = tokio::join!(follower, async {
        // The reroute comes 2 s after the gate.
        tokio::time::sleep(Duration::from_secs(2)).await;
        w.allow_traffic();
        codedeploy.await
    });
    followed.expect("follower");
}

#[tokio::test(start_paused = true)]
async fn an_all_at_once_reroute_is_mirrored_when_read_not_when_after_allow_traffic_comes() {
    let mut w = World::new();
    w.config.follower_function = Some("reconciler".into());
    let a = &w.arns;
    // CodeDeploy invokes AfterAllowTraffic 30 s after the reroute.
    follow_all_at_once(&w, async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(w.invoke(Phase::AfterAllowTraffic, "e3").await.status, HookStatus::Succeeded);
    })
    .await;
    // The private route moved within a fast read of the public one, 30 s before the hook could have moved it.
    let lag = max_weight_lag(&w);
    assert!(lag <= Duration::from_millis(400), "private flip {lag:?} after the public reroute");
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_green.as_str()]);
    assert!(w.elb.dark_moments().is_empty());
    // The follower's flip is the only write: AfterAllowTraffic, knowing a follower was started, read the route
    // first and found it in place.
    let writes: Vec<Vec<String>> = w
        .elb
        .route_log()
        .into_iter()
        .filter(|(arn, _)| arn == &a.prv_prod)
        .map(|(_, r)| r.live().into_iter().map(str::to_string).collect())
        .collect();
    assert_eq!(writes, vec![vec![a.prv_green.clone()]]);
    // The follower stopped once AfterAllowTraffic had recorded the deployment's flip, and released its lease.
    assert_eq!(w.state.lease(APP, GROUP).map(|l| l.owner), Some(String::new()));
}

#[tokio::test(start_paused = true)]
async fn a_rollback_before_after_allow_traffic_comes_is_mirrored_at_once() {
    let w = World::new();
    let a = &w.arns;
    // An alarm 5 s after the reroute, before CodeDeploy invoked AfterAllowTraffic: back to blue.
    follow_all_at_once(&w, async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        w.elb.put_route(&a.pub_prod, Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted));
        w.codedeploy.edit(DEPLOYMENT, |d| d.status = "Failed".into());
    })
    .await;
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_blue.as_str()]);
    let lag = max_weight_lag(&w);
    assert!(lag <= Duration::from_secs(1), "the private side lagged the rollback by {lag:?}");
    assert!(w.elb.dark_moments().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_follower_that_sees_the_public_route_move_back_mirrors_it_at_once() {
    let w = World::new();
    let a = &w.arns;
    w.through_the_gate().await;
    let engine = w.hooks();
    let (req, t) = (follow_request(), Tracker::default());
    let follower = engine.follow(&req, "req-1", Budget::after(Duration::from_secs(600)), &t);
    let rollback = async {
        for step in 1..=3u32 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            w.elb.put_route(&a.pub_prod, weighted(&a.pub_blue, &a.pub_green, step * 10));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The first step (green joins): the private route and the groups' health for the never-dark check, at once;
        // the steps after it are paced.
        let mut first = w.calls.at_once();
        first.sort();
        assert_eq!(
            first,
            ["elb:DescribeListeners"].into_iter().chain(["elb:DescribeTargetHealth"; 4]).collect::<Vec<_>>()
        );
        w.calls.clear_at_once();
        // An alarm: CodeDeploy puts the public side back on blue and fails the deployment.
        w.elb.put_route(&a.pub_prod, Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted));
        w.codedeploy.edit(DEPLOYMENT, |d| d.status = "Failed".into());
    };
    let (followed, ()) = tokio::join!(follower, rollback);
    followed.expect("follower");
    assert_eq!(w.elb.route_of(&a.prv_prod).live(), vec![a.prv_blue.as_str()]);
    assert!(max_weight_lag(&w) <= Duration::from_millis(500), "{:?}", max_weight_lag(&w));
    assert_eq!(w.calls.at_once(), ["elb:DescribeListeners"], "the move back reads the private route at once");
    assert!(w.elb.dark_moments().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_follower_hands_over_before_its_deadline_and_exactly_one_follows() {
    let w = World::new();
    let a = &w.arns;
    w.through_the_gate().await;
    let engine = w.hooks();
    // The first follower has 8 s; it asks for a successor about 2 s before the end.
    let (req, t1) = (follow_request(), Tracker::default());
    let first = engine.follow(&req, "req-1", Budget::after(Duration::from_secs(8)), &t1);
    let second = async {
        // The successor Lambda starts once asked (the fake records the request).
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if w.followers.started().len() >= 2 {
                break;
            }
        }
        // A twin started by mistake while the lease is live is turned away.
        let t = Tracker::default();
        engine.follow(&req, "req-2", Budget::after(Duration::from_secs(60)), &t).await.expect("second");
        t
    };
    let codedeploy = async {
        for step in 1..=10u32 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            w.elb.put_route(&a.pub_prod, weighted(&a.pub_blue, &a.pub_green, step * 10));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        w.invoke(Phase::AfterAllowTraffic, "e3").await;
    };
    let (first, second, ()) = tokio::join!(first, second, codedeploy);
    first.expect("first follower");
    let notes = second.snapshot().notes.join("\n");
    assert!(notes.contains("following deployment"), "the successor took the lease: {notes}");
    assert!(notes.contains("1 follower(s) at once"), "the predecessor left the census when it handed over: {notes}");
    assert!(w.state.census_now().heartbeats.is_empty(), "{:?}", w.state.census_now());
    assert!(max_weight_lag(&w) <= Duration::from_millis(500), "lag {:?}", max_weight_lag(&w));
    assert_eq!(w.elb.route_of(&a.prv_prod).weight(&a.prv_green), Some(100));

    let twin = Tracker::default();
    let live = engine.follow(&req, "req-3", Budget::after(Duration::from_secs(5)), &twin);
    let lease_holder = async {
        // Simulate a live holder: heartbeat just now, not handing over.
        let mut l = w.state.lease(APP, GROUP).expect("lease");
        l.owner = "req-live".into();
        l.heartbeat_ms = now_ms();
        l.version += 1;
        let _ = bluegreen_mirror::ports::StateStore::put_follower(&w.state, &l).await;
    };
    lease_holder.await;
    live.await.expect("twin");
    assert!(twin.snapshot().notes.iter().any(|n| n.contains("already followed")), "{:?}", twin.snapshot().notes);
}

/// Plays a deployment on AWS's clock (a minute is 60 s) with the follower running: CodeDeploy moves green's
/// share to each of `steps` after each wait. Returns the follower's ELB `Describe*` calls per second.
async fn follow_on_real_time(config: &str, steps: &[(u64, u32)]) -> f64 {
    let w = World::new();
    let a = &w.arns;
    w.codedeploy.edit(DEPLOYMENT, |d| d.config_name = Some(config.into()));
    w.through_the_gate().await;
    let mut engine = w.hooks();
    engine.config.minute = Duration::from_secs(60);
    w.calls.clear();
    let req = FollowRequest { config_name: Some(config.into()), ..follow_request() };
    let t1 = Tracker::default();
    let follower = engine.follow(&req, "req-1", Budget::after(Duration::from_secs(900)), &t1);
    let started = tokio::time::Instant::now();
    let codedeploy = async {
        for (wait_s, share) in steps {
            tokio::time::sleep(Duration::from_secs(*wait_s)).await;
            w.elb.put_route(&a.pub_prod, weighted(&a.pub_blue, &a.pub_green, *share));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The follower's reads so far: the hook's come after.
        let describes = w.calls.log().iter().filter(|c| c.starts_with("elb:Describe")).count();
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(w.invoke(Phase::AfterAllowTraffic, "e3").await.status, HookStatus::Succeeded);
        (describes, elapsed)
    };
    let (followed, (describes, elapsed)) = tokio::join!(follower, codedeploy);
    followed.expect("follower");
    let lag = max_weight_lag(&w);
    assert!(lag <= Duration::from_millis(500), "{config}: max weight lag {lag:?}");
    assert_eq!(w.elb.route_of(&a.prv_prod).weight(&a.prv_green), Some(100));
    let per_s = describes as f64 / elapsed;
    eprintln!("follower over {config}: {describes} ELB Describe calls in {elapsed:.0} s ({per_s:.2}/s)");
    per_s
}

#[tokio::test(start_paused = true)]
async fn the_follower_reads_fast_only_around_the_moves_of_a_real_canary() {
    let per_s = follow_on_real_time("CodeDeployDefault.ECSCanary10Percent5Minutes", &[(2, 10), (300, 100)]).await;
    assert!(per_s < 0.5, "{per_s:.2} ELB Describe calls a second: the follower must stay well under one");
}

#[tokio::test(start_paused = true)]
async fn the_follower_reads_fast_only_around_the_moves_of_a_real_linear_shift() {
    let steps: Vec<(u64, u32)> = (1..=10).map(|k| (if k == 1 { 2 } else { 60 }, k * 10)).collect();
    let per_s = follow_on_real_time("CodeDeployDefault.ECSLinear10PercentEvery1Minutes", &steps).await;
    assert!(per_s < 0.5, "{per_s:.2} ELB Describe calls a second: the follower must stay well under one");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn a_follower_reads_at_its_share_of_the_installations_budget_and_leaves_it_when_done() {
    let w = World::new();
    let a = &w.arns;
    w.through_the_gate().await;
    // Nineteen other deployments are being followed, and one follower ended long ago without leaving.
    let now = now_ms();
    for k in 1..=19 {
        w.state.count_in(&format!("other-{k}"), now);
    }
    w.state.count_in("gone", now - 10 * 60_000);
    let engine = w.hooks();
    let (req, t) = (follow_request(), Tracker::default());
    let follower = engine.follow(&req, "req-1", Budget::after(Duration::from_secs(600)), &t);
    let (followed, ()) = tokio::join!(follower, shift_linearly(&w));
    followed.expect("follower");
    // With the default budget of 5 reads a second, the twenty followers share 10 a second; a read after the
    // follower's invocation is at the process's own pace again.
    bluegreen_mirror::ports::LoadBalancers::targets(&w.elb, &a.pub_blue).await.expect("read");
    // (The shift's own reads, made beside the follower's, are not the follower's invocation's.)
    let paces = w.elb.paces();
    let mut asked: Vec<f64> = paces.iter().flatten().copied().collect();
    asked.dedup();
    assert_eq!(asked, vec![0.5], "{paces:?} {:?}", t.snapshot().notes);
    assert_eq!(paces.last(), Some(&None), "{paces:?}");
    let census = w.state.census_now();
    assert!(!census.heartbeats.contains_key("req-1"), "the follower left the census: {census:?}");
    assert!(!census.heartbeats.contains_key("gone"), "and dropped the long-gone entry: {census:?}");
    assert_eq!(census.heartbeats.len(), 19);
    assert_eq!(w.elb.route_of(&a.prv_prod).weight(&a.prv_green), Some(100));
}

#[tokio::test(start_paused = true)]
async fn a_throttled_follower_reads_less_often_and_catches_up_when_the_throttling_stops() {
    let w = World::new();
    let a = &w.arns;
    w.through_the_gate().await;
    let engine = w.hooks();
    let (req, t) = (follow_request(), Tracker::default());
    w.calls.clear();
    w.calls.fail_every("elb:DescribeListeners", AwsErrorKind::Throttled);
    let follower = engine.follow(&req, "req-1", Budget::after(Duration::from_secs(600)), &t);
    let codedeploy = async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let throttled = w.calls.count("elb:DescribeListeners");
        w.calls.no_faults();
        w.elb.put_route(&a.pub_prod, weighted(&a.pub_blue, &a.pub_green, 10));
        tokio::time::sleep(Duration::from_secs(15)).await;
        let mirrored = w.elb.route_of(&a.prv_prod).weight(&a.prv_green);
        w.allow_traffic();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(w.invoke(Phase::AfterAllowTraffic, "e3").await.status, HookStatus::Succeeded);
        (throttled, mirrored)
    };
    let (followed, (throttled, mirrored)) = tokio::join!(follower, codedeploy);
    followed.expect("the follower outlives the throttling");
    // Reading at the unsure pace throughout would have been 80 reads in the minute; backing off, about a dozen.
    assert!(throttled <= 12, "{throttled} reads while throttled");
    assert_eq!(mirrored, Some(10), "the step after the throttling is mirrored");
}

#[tokio::test(start_paused = true)]
async fn a_follower_whose_reads_waited_does_not_write_over_a_newer_flip() {
    let w = World::new();
    let a = &w.arns;
    w.through_the_gate().await;
    // CodeDeploy's first step, then every ELB read waits two seconds (a process's bucket under load).
    w.elb.put_route(&a.pub_prod, weighted(&a.pub_blue, &a.pub_green, 10));
    w.calls.stall_every("elb:Describe", Duration::from_secs(2));
    let engine = w.hooks();
    let (req, t) = (follow_request(), Tracker::default());
    let follower = engine.follow(&req, "req-1", Budget::after(Duration::from_secs(30)), &t);
    let codedeploy = async {
        // While the follower's reads of the first step wait, the shift completes and AfterAllowTraffic flips.
        tokio::time::sleep(Duration::from_secs(3)).await;
        w.allow_traffic();
        w.invoke(Phase::AfterAllowTraffic, "e3").await
    };
    let (followed, aat) = tokio::join!(follower, codedeploy);
    followed.expect("follower");
    assert_eq!(aat.status, HookStatus::Succeeded, "{:?}", aat.message);
    let private: Vec<Option<u32>> = w
        .elb
        .route_log()
        .into_iter()
        .filter(|(arn, _)| arn == &a.prv_prod)
        .map(|(_, r)| r.weight(&a.prv_green))
        .collect();
    assert_eq!(private.last(), Some(&Some(100)), "{private:?}");
    let flipped = private.iter().position(|w| *w == Some(100)).expect("the flip");
    assert!(private[flipped..].iter().all(|w| *w == Some(100)), "nothing written over the flip: {private:?}");
    assert!(w.elb.dark_moments().is_empty(), "{:?}", w.elb.dark_moments());
}

#[tokio::test(start_paused = true)]
async fn a_sweep_whose_turn_in_the_lane_comes_too_late_steps_aside_instead_of_failing() {
    let w = World::new();
    let a = &w.arns;
    // A task the private side has not seen yet, for the sweep to find.
    w.elb.add_targets(&a.pub_blue, &[ip(7)], HealthState::Healthy);
    let sweep = || w.run_trigger(&Trigger::Schedule { at: 0 });

    w.calls.lane_busy_on("elb:Describe");
    let (out, done, summary) = sweep().await;
    assert!(out.is_ok(), "not a failure for Lambda to run again: {out:?}");
    assert!(done.is_empty());
    let notes = summary.notes;
    assert!(
        notes.iter().any(|n| n.starts_with("sweep stepped aside at web/web-bg, its check left to the next sweep")),
        "{notes:?}"
    );
    assert!(summary.stepped_aside, "counted in the metric");
    assert!(w.private_writes().is_empty());
    assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..4)));
    assert_eq!(w.state.due_now(), BTreeSet::from(["web/web-bg".to_string()]), "due for the next sweep");

    // A throttled read is another matter: the sweep fails, and Lambda runs it again.
    w.calls.no_faults();
    w.calls.fail_every("elb:Describe", AwsErrorKind::Throttled);
    assert!(sweep().await.0.is_err());

    // With its turn in time, the same sweep mirrors the task.
    w.calls.no_faults();
    let (out, done, summary) = sweep().await;
    assert!(out.is_ok(), "{out:?}");
    assert!(!summary.stepped_aside);
    assert_eq!(done[0].registered, 1);
    assert_eq!(w.elb.members(&a.prv_blue), w.elb.members(&a.pub_blue));
}

#[tokio::test(start_paused = true)]
async fn a_full_reconcile_with_nothing_to_change_reads_no_more_than_it_is_sized_for() {
    // The preflight: the groups, the private routes (ALB: a listener and a rule, a call each; NLB: both listeners,
    // one call); the public listeners in one call; four groups.
    for (w, expected) in [(World::new(), 8), (World::nlb(), 7)] {
        let engine = w.hooks();
        let (_, found) = engine.bindings_for(&Trigger::Schedule { at: 0 }).await.unwrap().remove(0);
        let (b, group) = found.unwrap();
        w.calls.clear();
        let done = engine.reconcile(&b, &group, &Tracker::default()).await.unwrap();
        assert!(!done.changed(), "{done:?}");
        let reads = w.calls.log().into_iter().filter(|c| c.starts_with("elb:Describe")).collect::<Vec<_>>();
        assert_eq!(reads.len(), expected, "{reads:?}");
        assert!(reads.len() <= bluegreen_mirror::domain::pacing::READS_PER_RECONCILE);
    }
}

#[tokio::test(start_paused = true)]
async fn a_sweep_reads_its_bindings_routes_and_groups_together_and_each_bindings_health() {
    // One binding: its groups, its routes (the public listeners with the private listener, the private rule) in
    // one read each, then four groups' health.
    for (w, expected) in [(World::new(), 7), (World::nlb(), 6)] {
        w.calls.clear();
        let (out, done, _) = w.run_trigger(&Trigger::Schedule { at: 0 }).await;
        assert!(out.is_ok(), "{out:?}");
        assert!(done.len() == 1 && !done[0].changed(), "{done:?}");
        let reads = w.calls.log().into_iter().filter(|c| c.starts_with("elb:Describe")).collect::<Vec<_>>();
        assert_eq!(reads.len(), expected, "{reads:?}");
    }

    // Thirty in sync, on the fleet's shape: per binding its four groups' health and a tenth of a call of each kind.
    // (A schedule every 15 minutes, so that one run takes them all.)
    let mut w = World::fleet(30);
    w.config.schedule = Duration::from_secs(900);
    let (out, done, _) = w.run_trigger(&Trigger::Schedule { at: 0 }).await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(done.len(), 30);
    assert!(done.iter().all(|d| !d.changed() && d.rounds == 1), "{done:?}");
    let log = w.calls.log();
    let count = |op: &str| log.iter().filter(|c| *c == op).count();
    assert_eq!(count("elb:DescribeTargetHealth"), 120);
    assert_eq!(count("elb:DescribeTargetGroups"), 6);
    assert_eq!((count("elb:DescribeListeners"), count("elb:DescribeRules")), (3, 3));
    let per_binding = log.iter().filter(|c| c.starts_with("elb:Describe")).count() as f64 / 30.0;
    assert!(per_binding <= bluegreen_mirror::domain::pacing::READS_PER_LOOK, "{per_binding}");
    assert!(w.private_writes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_sweep_reconciles_from_its_own_reads_what_its_look_finds_drifted_and_a_missing_group_fails_alone() {
    let mut w = World::fleet(25);
    w.config.schedule = Duration::from_secs(900);
    let arn = bluegreen_mirror_tests::fleet_arn;
    // Binding 3: a task its private side has not seen; binding 12: its private rule points at the idle group;
    // binding 21: a private target group deleted.
    w.elb.add_targets(&arn(3, "pub-blue"), &[ip(7)], HealthState::Healthy);
    w.elb.put_route(
        &arn(12, "prv-prod"),
        Route::all_to(&arn(12, "prv-green"), &[&arn(12, "prv-blue")], RouteStyle::Weighted),
    );
    w.elb.remove_group(&arn(21, "prv-green"));
    w.calls.clear();
    let (out, done, _) = w.run_trigger(&Trigger::Schedule { at: 0 }).await;
    let err = out.unwrap_err().to_string();
    assert!(err.contains("web/svc21-bg") && err.contains("prv-green-21"), "{err}");
    assert_eq!(done.len(), 24, "every other binding checked");
    let of = |k: usize| done.iter().find(|d| d.binding == format!("web/svc{k}-bg")).unwrap();
    assert_eq!((of(3).registered, of(3).rounds), (1, 2), "reconciled on a round of its own reads");
    assert!(of(12).production.is_some());
    assert_eq!(w.elb.route_of(&arn(12, "prv-prod")).live(), vec![arn(12, "prv-blue").as_str()]);
    assert_eq!(w.elb.members(&arn(3, "prv-blue")), w.elb.members(&arn(3, "pub-blue")));
    assert!(done
        .iter()
        .filter(|d| ![3, 12].iter().any(|k| d.binding == format!("web/svc{k}-bg")))
        .all(|d| !d.changed()));
    // The reads ahead of the chunk with the missing group found it missing: its ten bindings read their own.
    let routes_read = w.calls.reads_of("elb:DescribeRules", &arn(25 - 1, "prv-prod"));
    assert_eq!(routes_read, 2, "read ahead, then in its own preflight");
    assert!(w.elb.dark_moments().is_empty());
}

/// The end of the deployment `DEPLOYMENT`, succeeded.
fn success() -> Trigger {
    Trigger::Deployment {
        application: APP.into(),
        deployment_group: GROUP.into(),
        deployment_id: DEPLOYMENT.into(),
        state: "SUCCESS".into(),
        at: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_check_that_had_its_turn_in_the_lane_finishes_though_the_lane_fills_before_its_next_reads() {
    let success = success();
    // The end of a deployment whose flip is on record waits its turn in the lane like the sweep.
    let w = World::new();
    let a = &w.arns;
    deployed(&w).await;
    w.elb.remove_targets(&a.pub_blue, &keys(1..4));

    // The preflight's reads have their turn; by the time the observation reads the groups, deployments have filled
    // the lane. Stepping aside there would leave the reads already spent worth nothing, and the check undone.
    w.calls.lane_busy_on("elb:DescribeTargetHealth");
    let (out, done, summary) = w.run_trigger(&success.clone()).await;
    assert!(out.is_ok(), "{out:?}");
    assert!(!summary.stepped_aside, "{:?}", summary.notes);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].deregistered, 3);
    assert!(w.elb.members(&a.prv_blue).is_empty());
    assert!(w.state.due_now().is_empty());

    // A lane already full at the check's first reads: the check steps aside before reading anything.
    let w = World::new();
    let a = &w.arns;
    w.elb.add_targets(&a.pub_blue, &[ip(8)], HealthState::Healthy);
    w.calls.lane_busy_on("elb:Describe");
    let (out, done, summary) = w.run_trigger(&Trigger::Schedule { at: 0 }).await;
    assert!(out.is_ok(), "{out:?}");
    assert!(summary.stepped_aside);
    assert!(done.is_empty());
    assert!(w.calls.log().iter().all(|c| !c.starts_with("elb:Register")), "{:?}", w.calls.log());
    assert_eq!(w.state.due_now(), BTreeSet::from(["web/web-bg".to_string()]));
}

#[tokio::test(start_paused = true)]
async fn a_recorded_deployments_end_waits_its_turn_and_leaves_its_check_to_the_sweep_when_the_lane_is_busy() {
    let success = success();

    // The hooks flipped and recorded; then CodeDeploy stops the original tasks and the deployment succeeds, while
    // twenty others use the lane.
    let w = World::new();
    let a = &w.arns;
    deployed(&w).await;
    assert!(w.state.record(DEPLOYMENT).is_some_and(|r| r.phases.contains_key("AfterAllowTraffic")));
    w.elb.remove_targets(&a.pub_blue, &keys(1..4));
    let writes = w.private_writes().len();
    w.calls.lane_busy_on("elb:Describe");
    let (out, done, summary) = w.run_trigger(&success.clone()).await;
    assert!(out.is_ok(), "not a failure for Lambda to run again: {out:?}");
    assert!(done.is_empty());
    assert!(summary.stepped_aside, "counted in the metric");
    let notes = summary.notes;
    let stepped = format!("the end of {DEPLOYMENT} stepped aside at web/web-bg, its check left to the next sweep");
    assert!(notes.iter().any(|n| n.starts_with(&stepped)), "{notes:?}");
    assert_eq!(w.private_writes().len(), writes);
    assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..4)));
    assert_eq!(w.state.due_now(), BTreeSet::from(["web/web-bg".to_string()]), "due for the next sweep");
    // Once the lane has room, the next sweep does the check: the stopped tasks leave the private side too, and
    // nothing is due any more.
    w.calls.no_faults();
    let (out, done, _) = w.run_trigger(&Trigger::Schedule { at: 0 }).await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(done[0].deregistered, 3);
    assert!(w.elb.members(&a.prv_blue).is_empty());
    assert!(w.state.due_now().is_empty());
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted));

    // No hook ran for this deployment (they are missing from its appspec): its end is what mirrors the green tasks
    // and flips the private side, and it is counted at once however busy the lane.
    let w = World::new();
    let a = &w.arns;
    w.install_green();
    w.allow_traffic();
    w.calls.lane_busy_on("elb:Describe");
    let (out, done, summary) = w.run_trigger(&success.clone()).await;
    assert!(out.is_ok(), "{out:?} {:?}", summary.notes);
    assert!(!summary.stepped_aside);
    assert_eq!(done[0].registered, 3, "read and mirrored, not stepped aside: {:?}", summary.notes);
    assert_eq!(w.elb.members(&a.prv_green), w.elb.members(&a.pub_green));
    // The flip waits for the green tasks to be healthy on the private side, as seen by the next reconcile.
    let (out, done, _) = w.run_trigger(&success).await;
    assert!(out.is_ok(), "{out:?}");
    assert!(done[0].production.is_some(), "{done:?}");
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted));
    assert!(w.elb.dark_moments().is_empty(), "{:?}", w.elb.dark_moments());

    // The end of a deployment in a group with no binding does not read its record: one read, the look for a
    // stored binding of that group.
    let unbound = Trigger::Deployment {
        application: APP.into(),
        deployment_group: "unbound-bg".into(),
        deployment_id: "d-OTHER".into(),
        state: "SUCCESS".into(),
        at: None,
    };
    let before = w.calls.log().len();
    let (out, done, _) = w.run_trigger(&unbound).await;
    assert!(out.is_ok() && done.is_empty(), "{out:?}");
    let calls = w.calls.log()[before..].to_vec();
    assert_eq!(calls, ["dynamodb:GetItem"]);
}
