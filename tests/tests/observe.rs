//! Shadow mode against in-memory fakes: a binding that observes reads, plans, gates and records as one that
//! enforces, writes nothing to the private side, never fails a deployment, and records what it would have done;
//! switched to enforce, it mirrors as usual.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use bluegreen_mirror::config::Mode;
use bluegreen_mirror::domain::{HealthState, Phase, Route, RouteStyle};
use bluegreen_mirror::ports::HookStatus;
use bluegreen_mirror::usecase::Trigger;
use bluegreen_mirror_tests::{ended, keys, strings, World, APP, DEPLOYMENT, GROUP};

/// The world of [`World::new`], its binding observing.
fn observed() -> World {
    let mut w = World::new();
    w.config.bindings[0].mode = Some(Mode::Observe);
    w
}

/// The private side as ELB has it: each private group's members and each private route.
fn private_side(w: &World) -> (Vec<String>, Vec<String>, Route, Route) {
    let a = &w.arns;
    (w.elb.members(&a.prv_blue), w.elb.members(&a.prv_green), w.elb.route_of(&a.prv_prod), w.elb.route_of(&a.prv_test))
}

#[tokio::test(start_paused = true)]
async fn an_observed_deployment_writes_nothing_and_records_what_it_would_have_done_in_order() {
    let w = observed();
    let before = private_side(&w);
    let outcomes = w.deploy().await;
    for o in &outcomes {
        assert_eq!(o.status, HookStatus::Succeeded, "{:?}: {:?} {:?}", o.phase, o.message, o.summary.notes);
        assert!(o.summary.observed && o.summary.would_be_failure.is_none(), "{:?}", o.summary);
    }
    assert_eq!(w.private_writes(), Vec::<String>::new(), "no ELB write on an observed binding");
    assert_eq!(private_side(&w), before, "the private side is untouched");

    let rec = w.state.record(DEPLOYMENT).expect("the deployment is recorded");
    assert!(rec.observed);
    let actions: Vec<(&str, &str)> = rec.would_be.iter().map(|x| (x.by.as_str(), x.action.as_str())).collect();
    let green: Vec<String> = strings(&keys(101..104));
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert_eq!(actions[0], ("AfterInstall", format!("register {} into prv-green", green.join(", ")).as_str()));
    let to_green = Route::all_to(&w.arns.prv_green, &[&w.arns.prv_blue], RouteStyle::Weighted);
    assert_eq!(actions[1], ("AfterInstall", format!("set rule {} to {to_green}", w.arns.prv_test).as_str()));
    assert_eq!(actions[2], ("AfterAllowTraffic", format!("set listener {} to {to_green}", w.arns.prv_prod).as_str()));
    assert!(rec.would_be.windows(2).all(|p| p[0].at_ms <= p[1].at_ms), "in the order found");
    // The gate judged the would-be members by the public side's health: it passed, as it would have.
    assert_eq!(rec.targets_mirrored, 3);
    // The binding's record still names the group that is live privately, not the one that would have been.
    let live = w.state.binding_record(APP, GROUP).and_then(|r| r.live_private_target_group);
    assert_ne!(live.as_deref(), Some(w.arns.prv_green.as_str()));
}

#[tokio::test(start_paused = true)]
async fn an_observed_deployment_succeeds_with_an_unusable_private_side_and_says_why_it_would_have_failed() {
    let mut w = World::new();
    w.config.mode = Mode::Observe;
    w.elb.remove_route(&w.arns.prv_prod.clone());
    let before = (w.elb.members(&w.arns.prv_blue), w.elb.members(&w.arns.prv_green));
    let outcomes = w.deploy().await;
    for o in &outcomes {
        assert_eq!(o.status, HookStatus::Succeeded, "{:?}: {:?}", o.phase, o.message);
        let failure = o.summary.would_be_failure.as_deref().unwrap_or_default();
        assert!(failure.contains(&w.arns.prv_prod), "{:?} would have failed naming the listener: {failure}", o.phase);
    }
    assert_eq!(w.reports_for("exec-ai"), vec![HookStatus::Succeeded]);
    assert_eq!(w.private_writes(), Vec::<String>::new());
    assert_eq!((w.elb.members(&w.arns.prv_blue), w.elb.members(&w.arns.prv_green)), before);
}

#[tokio::test(start_paused = true)]
async fn a_binding_switched_to_enforce_mirrors_as_usual() {
    let mut w = observed();
    let a = w.arns.clone();
    w.install_green();
    assert_eq!(w.invoke(Phase::AfterInstall, "exec-ai").await.status, HookStatus::Succeeded);
    assert_eq!(w.private_writes(), Vec::<String>::new());
    // The operator switches the binding to enforce; CodeDeploy's next hooks mirror.
    w.config.bindings[0].mode = Some(Mode::Enforce);
    w.allow_test_traffic();
    let bat = w.invoke(Phase::BeforeAllowTraffic, "exec-bat").await;
    assert_eq!(bat.status, HookStatus::Succeeded, "{:?}", bat.message);
    assert!(!bat.summary.observed);
    assert_eq!(w.elb.members(&a.prv_green), strings(&keys(101..104)));
    w.allow_traffic();
    let aat = w.invoke(Phase::AfterAllowTraffic, "exec-aat").await;
    assert_eq!(aat.status, HookStatus::Succeeded, "{:?}", aat.message);
    assert_eq!(w.elb.route_of(&a.prv_prod), Route::all_to(&a.prv_green, &[&a.prv_blue], RouteStyle::Weighted));
}

#[tokio::test(start_paused = true)]
async fn an_observed_gate_passes_on_the_public_sides_health_where_the_private_side_cannot_reach_the_tasks() {
    // What an enforcing gate fails on (the unhealthy-green case) the observing one cannot see: it registers
    // nothing, so the private load balancer never checks the tasks. It says so by judging the public side's
    // health, and the deployment goes on.
    let w = observed();
    w.elb.make_unreachable(&w.arns.prv_green.clone());
    let outcomes = w.deploy().await;
    for o in &outcomes {
        assert_eq!(o.status, HookStatus::Succeeded, "{:?}: {:?}", o.phase, o.message);
        assert_eq!(o.summary.would_be_failure, None, "{:?}", o.phase);
    }
    assert_eq!(w.private_writes(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn the_reconciler_reports_an_observed_bindings_drift_and_writes_nothing() {
    let w = observed();
    let a = w.arns.clone();
    // Between deployments ECS adds a task on the public side only.
    w.elb.add_targets(&a.pub_blue, &keys(4..5), HealthState::Healthy);
    let (out, _, s) = w.run_trigger(&Trigger::Schedule { at: 0 }).await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(w.private_writes(), Vec::<String>::new());
    assert_eq!(w.elb.members(&a.prv_blue), strings(&keys(1..4)));
    let actions: Vec<&str> = s.would_be.iter().map(|x| x.action.as_str()).collect();
    assert_eq!(actions, vec![format!("register {} into prv-blue", strings(&keys(4..5))[0]).as_str()], "{s:?}");
    assert!(s.would_be.iter().all(|x| x.by == "reconciler"));
}

#[tokio::test(start_paused = true)]
async fn a_warm_process_finds_an_observed_bindings_drift_again_as_a_cold_one_would() {
    let w = observed();
    // CodeDeploy moved the public side; the observed private side stayed where it was.
    w.install_green();
    w.allow_traffic();
    let engine = w.hooks();
    let mut found = Vec::new();
    for _ in 0..2 {
        let (out, _, s) = w.run_trigger_on(&engine, &Trigger::Schedule { at: 0 }).await;
        assert!(out.is_ok(), "{out:?}");
        let routes: Vec<String> =
            s.would_be.into_iter().filter(|x| x.route.as_deref() == Some("production")).map(|x| x.action).collect();
        found.push(routes);
    }
    assert_eq!(found[0].len(), 1, "{found:?}");
    assert_eq!(
        found[1], found[0],
        "the second sweep of the same process starts from ELB, not from the first's would-be"
    );
    assert_eq!(w.private_writes(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn an_observed_rollback_is_recorded_as_the_move_back_it_would_have_made() {
    let w = observed();
    let a = w.arns.clone();
    let before = private_side(&w);
    for o in w.deploy().await {
        assert_eq!(o.status, HookStatus::Succeeded, "{:?}", o.message);
    }
    // An alarm: CodeDeploy reroutes the public side back to blue, and says so.
    w.elb.put_route(&a.pub_prod, Route::all_to(&a.pub_blue, &[&a.pub_green], RouteStyle::Weighted));
    // A fresh rollback (EventBridge's time is now), followed from the record's flip at once.
    let failure = ended("FAILURE", Some(bluegreen_mirror::clock::now_s()));
    let (out, _, _) = w.run_trigger(&failure).await;
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(w.private_writes(), Vec::<String>::new());
    assert_eq!(private_side(&w), before);
    let rec = w.state.record(DEPLOYMENT).unwrap();
    let moves: Vec<(&str, Option<&Route>)> = rec
        .would_be
        .iter()
        .filter(|x| x.route.as_deref() == Some("production"))
        .map(|x| (x.by.as_str(), x.to.as_ref()))
        .collect();
    let to_blue = Route::all_to(&a.prv_blue, &[&a.prv_green], RouteStyle::Weighted);
    let last = moves.last().copied();
    assert!(moves.len() >= 2, "the flip, then the move back: {moves:?}");
    assert!(
        last.is_some_and(|(by, to)| by == "reconciler" && to.is_some_and(|to| to.same_action(&to_blue))),
        "{moves:?}"
    );
}
