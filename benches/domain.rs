//! Criterion benchmarks of the pure domain: the mirror plan and the reconcile plan over 10,000 targets, and the
//! route plan. Run with `cargo bench -p bluegreen-mirror`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bluegreen_mirror::domain::{
    mirror_route, plan_mirror, plan_reconcile, HealthState, Observed, ObservedTarget, Route, RouteStyle, Target,
    TargetKey, WeightedTargetGroup, DEFAULT_BATCH,
};
use criterion::{criterion_group, criterion_main, Criterion};

const TG: &str = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup";

fn targets(n: u32, offset: u32) -> Vec<ObservedTarget> {
    (offset..offset + n)
        .map(|i| {
            let [_, b, c, d] = i.to_be_bytes();
            ObservedTarget {
                target: Target {
                    key: TargetKey::new(IpAddr::V4(Ipv4Addr::new(10, b, c, d)), 8080),
                    availability_zone: None,
                },
                health: HealthState::Healthy,
                reason: None,
            }
        })
        .collect()
}

fn mirror(c: &mut Criterion) {
    let source = targets(10_000, 0);
    let changed: Vec<ObservedTarget> = targets(9_000, 0).into_iter().chain(targets(1_000, 50_000)).collect();
    c.bench_function("plan_mirror 10k into empty", |b| b.iter(|| plan_mirror(black_box(&source), &[], DEFAULT_BATCH)));
    c.bench_function("plan_mirror 10k, 10% changed", |b| {
        b.iter(|| plan_mirror(black_box(&changed), black_box(&source), DEFAULT_BATCH))
    });
    c.bench_function("plan_mirror 10k, in sync", |b| {
        b.iter(|| plan_mirror(black_box(&source), black_box(&source), DEFAULT_BATCH))
    });
}

fn routes(c: &mut Criterion) {
    let pairs = vec![
        (format!("{TG}/pub-blue/1"), format!("{TG}/prv-blue/3")),
        (format!("{TG}/pub-green/2"), format!("{TG}/prv-green/4")),
    ];
    let weighted = |b: &str, g: &str, w: u32| Route {
        target_groups: vec![
            WeightedTargetGroup { target_group: b.to_string(), weight: 100 - w },
            WeightedTargetGroup { target_group: g.to_string(), weight: w },
        ],
        stickiness_seconds: None,
    };
    let public = weighted(&pairs[0].0, &pairs[1].0, 30);
    let private = weighted(&pairs[0].1, &pairs[1].1, 0);
    c.bench_function("mirror_route weighted", |b| {
        b.iter(|| mirror_route(black_box(&public), &pairs, RouteStyle::Weighted, Some(&private)))
    });
    let seen = Observed {
        public_production: Some(public.clone()),
        public_test: Some(public.clone()),
        private_production: Some(private.clone()),
        private_test: Some(private.clone()),
        targets: BTreeMap::from([
            (pairs[0].0.clone(), targets(10_000, 0)),
            (pairs[1].0.clone(), targets(10_000, 20_000)),
            (pairs[0].1.clone(), targets(9_000, 0)),
            (pairs[1].1.clone(), targets(10_000, 20_000)),
        ]),
    };
    c.bench_function("plan_reconcile 4x10k targets", |b| {
        b.iter(|| plan_reconcile(&pairs, RouteStyle::Weighted, black_box(&seen), DEFAULT_BATCH))
    });
}

criterion_group!(benches, mirror, routes);
criterion_main!(benches);
