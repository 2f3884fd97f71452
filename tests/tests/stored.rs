//! Bindings stored in the state table: a deployment served from them with the flip's critical path unchanged,
//! a bad stored binding failing only its own binding with what to fix, and the two forms never mixed.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use bluegreen_mirror::domain::{Phase, Route, RouteStyle, StoredBinding, WeightedTargetGroup};
use bluegreen_mirror::harness::{Budget, Tracker};
use bluegreen_mirror::ports::HookStatus;
use bluegreen_mirror::usecase::Trigger;
use bluegreen_mirror_tests::{World, APP, DEPLOYMENT, GROUP};

#[tokio::test(start_paused = true)]
async fn a_stored_binding_serves_a_whole_deployment_and_costs_the_flip_no_read() {
    let w = World::stored();
    let a = &w.arns;
    assert!(w.config.bindings.is_empty(), "nothing in the environment");
    w.install_green();
    let ai = w.invoke(Phase::AfterInstall, "exec-ai").await;
    assert_eq!(ai.status, HookStatus::Succeeded, "{:?}", ai.message);
    w.allow_test_traffic();
    let bat = w.invoke(Phase::BeforeAllowTraffic, "exec-bat").await;
    assert_eq!(bat.status, HookStatus::Succeeded, "{:?}", bat.message);
    let carried = w.state.record(DEPLOYMENT).and_then(|r| r.binding).expect("the binding travels with the record");
    assert_eq!(carried["deployment_group"], GROUP);
    let follow = w.followers.started().pop().expect("a follower started");
    assert_eq!(follow.binding.as_ref().map(|b| b.deployment_group.as_str()), Some(GROUP), "and with the follower");
    w.allow_traffic();
    w.calls.clear();
    let aat = w.invoke(Phase::AfterAllowTraffic, "exec-aat").await;
    assert_eq!(aat.status, HookStatus::Succeeded, "{:?}", aat.message);
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted));
    let log = w.calls.log();
    let flip = log.iter().position(|c| c == "elb:ModifyListener").expect("a ModifyListener");
    assert_eq!(&log[..=flip], ["dynamodb:GetItem", "elb:ModifyListener"], "one read, then the flip");
    assert!(w.elb.dark_moments().is_empty(), "{:?}", w.elb.dark_moments());
}

#[tokio::test(start_paused = true)]
async fn a_bad_stored_binding_fails_its_deployment_with_the_fix_and_changes_nothing() {
    let w = World::stored();
    let a = &w.arns;
    let mut bad = w.state.stored_binding_of(APP, GROUP).expect("stored");
    bad.binding["pairs"] = serde_json::json!([]);
    bad.binding["colour"] = serde_json::json!("blue");
    w.state.store_raw(&StoredBinding::key(APP, GROUP), Ok(bad));
    w.install_green();
    let before = w.elb.route_of(&a.prv_prod);
    let ai = w.invoke(Phase::AfterInstall, "exec-ai").await;
    assert_eq!(ai.status, HookStatus::Failed);
    let message = ai.message.unwrap_or_default();
    assert!(message.contains("the stored binding web/web-bg is not valid"), "{message}");
    assert!(message.contains("bluegreen-mirror bindings apply"), "{message}");
    assert!(w.elb.members(&a.prv_green).is_empty(), "nothing registered");
    assert_eq!(w.elb.route_of(&a.prv_prod), before);
}

#[tokio::test(start_paused = true)]
async fn a_binding_whose_check_stepped_aside_is_the_next_sweeps_first_whatever_its_slice() {
    let mut w = World::stored();
    for group in ["api-bg", "zz-bg"] {
        let mut other = w.state.stored_binding_of(APP, GROUP).expect("stored");
        other.deployment_group = group.into();
        w.state.store_raw(&StoredBinding::key(APP, group), Ok(other));
    }
    // One binding a sweep, once a minute: three sweeps for the rotation to come round.
    w.config.elb_reads_per_s = 0.1;
    let engine = w.hooks();
    let sweep = |at| {
        let engine = &engine;
        async move {
            let found = engine.bindings_for(&Trigger::Schedule { at }).await.expect("the list is readable");
            found.into_iter().map(|(label, _)| label).collect::<Vec<_>>()
        }
    };
    assert_eq!(sweep(0).await, ["web/api-bg"]);
    assert_eq!(sweep(60).await, ["web/web-bg"]);

    let t = Tracker::default();
    engine.defer(&["web/web-bg".to_string()], &t).await;
    assert_eq!(sweep(120).await, ["web/web-bg", "web/zz-bg"], "the due one first, the slice whole after it");
    assert!(w.state.due_now().is_empty(), "taken by that sweep");
    assert_eq!(sweep(180).await, ["web/api-bg"]);
    // Due once however often marked; a binding since removed is dropped; one due in its own slice is checked once.
    engine.defer(&["web/zz-bg".into(), "web/gone-bg".into(), "web/api-bg".into()], &t).await;
    engine.defer(&["web/zz-bg".to_string()], &t).await;
    assert_eq!(sweep(0).await, ["web/api-bg", "web/zz-bg"]);
    assert!(t.snapshot().notes.is_empty(), "{:?}", t.snapshot().notes);

    // A due item that cannot be taken leaves the sweep its slice; one that cannot be marked says so.
    w.calls.fail_every("dynamodb:UpdateItem", bluegreen_mirror::AwsErrorKind::Throttled);
    engine.defer(&["web/web-bg".to_string()], &t).await;
    let notes = t.snapshot().notes;
    assert!(notes.iter().any(|n| n.starts_with("web/web-bg not marked due")), "{notes:?}");
    assert_eq!(sweep(0).await, ["web/api-bg"]);
}

#[tokio::test(start_paused = true)]
async fn the_schedule_checks_the_good_stored_bindings_and_reports_the_bad_ones_alone() {
    let w = World::stored();
    let mut broken = w.state.stored_binding_of(APP, GROUP).expect("stored");
    broken.deployment_group = "api-bg".into();
    // Stored under api-bg but naming web-bg: refused, as a copy-paste slip would be.
    w.state.store_raw(&StoredBinding::key(APP, "api-bg"), Ok(broken));
    w.state.store_raw(&StoredBinding::key(APP, "zz-bg"), Err("state item config#web#zz-bg has no `doc`".into()));
    let engine = w.hooks();
    let found = engine.bindings_for(&Trigger::Schedule { at: 0 }).await.expect("the list is readable");
    let good: Vec<&str> = found.iter().filter(|(_, f)| f.is_ok()).map(|(l, _)| l.as_str()).collect();
    assert_eq!(good, ["web/web-bg"]);
    let bad: Vec<String> = found.iter().filter_map(|(l, f)| f.as_ref().err().map(|e| format!("{l}: {e}"))).collect();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad.iter().any(|m| m.contains("web/api-bg") && m.contains("it is stored under web/api-bg but names")),
        "{bad:?}"
    );
    // An ECS task event concerns one service: the broken ones are the schedule's to report.
    let task = engine.bindings_for(&Trigger::Task { cluster: "prod".into(), service: "web".into() }).await.unwrap();
    assert_eq!(task.len(), 1);
    assert!(task[0].1.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_binding_stored_beside_the_environment_form_is_refused_with_what_to_do() {
    let w = World::new();
    let mut other = w.config.bindings[0].clone();
    other.deployment_group = "other".into();
    w.state.store_binding(&other);
    w.codedeploy.edit(DEPLOYMENT, |f| f.deployment_group = "other".into());
    w.install_green();
    let ai = w.invoke(Phase::AfterInstall, "exec-ai").await;
    assert_eq!(ai.status, HookStatus::Failed);
    let message = ai.message.unwrap_or_default();
    assert!(message.contains("is stored in the table") && message.contains("use one form, not both"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn check_requires_the_managed_tag_on_every_private_resource_of_a_stored_binding() {
    let w = World::stored();
    let a = &w.arns;
    let engine = w.hooks();
    let b = engine.binding_of(APP, GROUP).await.unwrap().expect("stored").into_owned();
    let group = engine.group(&b).await.unwrap();
    let t = bluegreen_mirror::harness::Tracker::default();
    let err = engine.check(&b, &group, &t).await.expect_err("untagged resources are refused").to_string();
    for arn in [&a.prv_blue, &a.prv_green, &a.prv_prod, &a.prv_test] {
        assert!(err.contains(arn.as_str()), "{arn} not named in: {err}");
    }
    assert!(err.contains("aws elbv2 add-tags") && err.contains("bluegreen-mirror:managed"), "{err}");
    for arn in [&a.prv_blue, &a.prv_green, &a.prv_prod] {
        w.elb.tag(arn, "bluegreen-mirror:managed", "true");
    }
    let err = engine.check(&b, &group, &t).await.expect_err("one left").to_string();
    assert!(err.contains(a.prv_test.as_str()) && !err.contains(a.prv_blue.as_str()), "{err}");
    w.elb.tag(&a.prv_test, "bluegreen-mirror:managed", "true");
    engine.check(&b, &group, &t).await.expect("all tagged");
    // The environment form's installation names every ARN in its role instead: no tag required.
    let env = World::new();
    let engine = env.hooks();
    let b = env.config.bindings[0].clone();
    let group = engine.group(&b).await.unwrap();
    engine.check(&b, &group, &t).await.expect("no tag needed");
}

#[tokio::test(start_paused = true)]
async fn task_events_read_the_stored_list_once_a_minute() {
    let w = World::stored();
    let engine = w.hooks();
    let task = Trigger::Task { cluster: "prod".into(), service: "web".into() };
    let scans = || w.calls.count("dynamodb:Scan");
    w.calls.clear();
    for _ in 0..5 {
        assert_eq!(engine.bindings_for(&task).await.unwrap().len(), 1);
    }
    assert_eq!(scans(), 1, "a deployment's task events must not scan the table each");
    tokio::time::advance(bluegreen_mirror::usecase::BINDING_CACHE_TTL).await;
    assert_eq!(engine.bindings_for(&task).await.unwrap().len(), 1);
    assert_eq!(scans(), 2, "then the list is read afresh");
}

#[tokio::test(start_paused = true)]
async fn a_follower_started_with_its_binding_reads_the_public_route_before_the_table() {
    let w = World::stored();
    w.install_green();
    assert_eq!(w.invoke(Phase::AfterInstall, "exec-ai").await.status, HookStatus::Succeeded);
    w.allow_test_traffic();
    assert_eq!(w.invoke(Phase::BeforeAllowTraffic, "exec-bat").await.status, HookStatus::Succeeded);
    let req = w.followers.started().pop().expect("a follower started");
    let a = &w.arns;
    // CodeDeploy's first canary step.
    w.elb.put_route(
        &a.pub_prod,
        Route {
            target_groups: vec![
                WeightedTargetGroup { target_group: a.pub_blue.clone(), weight: 90 },
                WeightedTargetGroup { target_group: a.pub_green.clone(), weight: 10 },
            ],
            stickiness_seconds: None,
        },
    );
    w.calls.clear();
    let engine = w.hooks();
    let t = Tracker::default();
    engine.follow(&req, "req-1", Budget::after(Duration::from_secs(3)), &t).await.expect("follows");
    let log = w.calls.log();
    let first_elb = log.iter().position(|c| c.starts_with("elb:")).expect("an ELB read");
    // The lease is read alongside the public route; the stored binding is not read at all.
    assert_eq!(
        log[..first_elb].iter().filter(|c| *c == "dynamodb:GetItem").count(),
        1,
        "the lease's read only, no stored binding read before the first public read: {log:?}"
    );
    assert_eq!(w.elb.route_of(&a.prv_prod).weight(&a.prv_green), Some(10), "and the step is mirrored");
}
