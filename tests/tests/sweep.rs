//! The scheduled sweep over a large idle fleet, on the test runtime's clock: which bindings it checks, how often,
//! and what it reads of ELB to do so. `sweep_of_a_thousand_idle_bindings` prints its figures as one JSON line
//! (`sweep figures: {...}`), which `scripts/bench` reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use bluegreen_mirror::domain::pacing::{CHECK_EVERY, READS_PER_LOOK};
use bluegreen_mirror::harness::{Budget, Tracker};
use bluegreen_mirror::usecase::Trigger;
use bluegreen_mirror_tests::World;

/// Fires the schedule once a minute for `minutes`, each run with the reconciler's minute, and returns the bindings
/// each run checked and the `Describe*` calls made in all.
async fn sweep_for(w: &World, minutes: u64) -> (Vec<Vec<String>>, usize) {
    let engine = w.hooks();
    let mut runs = Vec::new();
    for minute in 0..minutes {
        let (t, mut done) = (Tracker::default(), Vec::new());
        let out = engine
            .run_trigger(
                &Trigger::Schedule { at: minute * 60 },
                "r-1",
                Budget::after(Duration::from_secs(60)),
                &t,
                &mut done,
            )
            .await;
        assert!(out.is_ok(), "{out:?}");
        assert!(done.iter().all(|d| !d.changed()), "an idle fleet in sync: nothing to change");
        runs.push(done.into_iter().map(|d| d.binding).collect());
    }
    let describes = w.calls.log().iter().filter(|c| c.starts_with("elb:Describe")).count();
    (runs, describes)
}

#[tokio::test(start_paused = true)]
async fn sweep_of_a_thousand_idle_bindings() {
    let n = 1000;
    let w = World::fleet(n);
    let minutes = CHECK_EVERY.as_secs() / 60;
    let (runs, describes) = sweep_for(&w, minutes).await;
    let checked: BTreeSet<&String> = runs.iter().flatten().collect();
    assert_eq!(checked.len(), n, "every binding checked within {minutes} minutes");
    let per_s = describes as f64 / (minutes * 60) as f64;
    assert!(per_s <= 5.0, "{per_s} Describe calls a second");
    // Sized at READS_PER_LOOK; a run's last read ahead covers fewer than ten bindings for the same calls.
    let per_binding = describes as f64 / runs.iter().map(Vec::len).sum::<usize>() as f64;
    assert!(per_binding <= READS_PER_LOOK + 0.05, "{per_binding}");
    println!(
        "sweep figures: {}",
        serde_json::json!({
            "bindings": n, "schedule_s": 60, "per_run": runs[0].len(), "rotation_minutes": minutes,
            "describe_calls": describes, "describe_per_s": (per_s * 1000.0).round() / 1000.0,
            "describe_per_check": (per_binding * 1000.0).round() / 1000.0,
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_smaller_fleet_is_checked_as_often_for_less() {
    // A hundred: seven a minute (two in the rotation's last), so the same 15-minute rotation at a tenth of the reads.
    let w = World::fleet(100);
    let (runs, describes) = sweep_for(&w, 15).await;
    let sizes: Vec<usize> = runs.iter().map(Vec::len).collect();
    assert!(sizes[..14].iter().all(|n| *n == 7) && sizes[14] == 2, "{sizes:?}");
    assert_eq!(runs.iter().flatten().collect::<BTreeSet<_>>().len(), 100);
    assert!((describes as f64 / 900.0) < 0.6, "{describes}");
}
