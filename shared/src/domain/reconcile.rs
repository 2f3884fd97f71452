//! The reconcile plan: from the live state of one binding (both sides' routes and memberships), what to change on
//! the private side so that I1–I3 hold again, in an order that keeps I4: registrations first, then route changes,
//! then deregistrations. A route is not moved onto a private target group that has no healthy target while its
//! public mirror has some (the move waits for the next reconcile instead of going dark).

use std::collections::BTreeMap;
use std::time::Duration;

use super::mirror::{plan_mirror, MirrorPlan};
use super::route::{mirror_route, test_route, Route, RouteStyle};
use super::target::{HealthState, ObservedTarget};

/// The live state of one binding.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub public_production: Option<Route>,
    pub public_test: Option<Route>,
    pub private_production: Option<Route>,
    pub private_test: Option<Route>,
    /// Target group ARN → its targets, for all four groups.
    pub targets: BTreeMap<String, Vec<ObservedTarget>>,
}

/// What to change, in the order to change it.
#[derive(Debug, Clone, Default)]
pub struct ReconcilePlan {
    /// Per private target group, the membership change (registrations are applied before routes move,
    /// deregistrations after).
    pub mirrors: Vec<(String, MirrorPlan)>,
    pub production: Option<Route>,
    pub test: Option<Route>,
    /// Why a route change was held back this time.
    pub held_back: Vec<String>,
}

impl ReconcilePlan {
    pub fn is_empty(&self) -> bool {
        self.mirrors.iter().all(|(_, m)| m.is_empty()) && self.production.is_none() && self.test.is_none()
    }
}

fn has_healthy(targets: Option<&Vec<ObservedTarget>>) -> bool {
    targets.is_some_and(|ts| ts.iter().any(|t| t.health == HealthState::Healthy))
}

/// How old a read of the public side may be when a private write stands on it.
pub const FRESH_FOR: Duration = Duration::from_millis(500);

/// The one staleness rule: whether a read of the public side answered `age` ago (`None`: not known) is too old for
/// a private write to stand on it without the public side being read again (its registrations confirmed, its
/// route compared). Reads wait in the process's bucket, the read lane or a throttle's pause; CodeDeploy moves
/// routes and ECS stops tasks meanwhile. Reads answered within this of the write cost nothing more.
pub fn stale(age: Option<Duration>) -> bool {
    age.is_none_or(|age| age > FRESH_FOR)
}

/// I4's test, the one place it is decided: those of the private `groups` that would leave the private side dark,
/// having no healthy target in `targets` while their public mirror (by `pairs`, `(public, private)`) has one.
pub fn dark_while_public_serves<'g>(
    groups: impl IntoIterator<Item = &'g str>,
    pairs: &[(String, String)],
    targets: &BTreeMap<String, Vec<ObservedTarget>>,
) -> Vec<&'g str> {
    groups
        .into_iter()
        .filter(|tg| {
            !has_healthy(targets.get(*tg))
                && pairs.iter().find(|(_, p)| p == tg).is_some_and(|(public, _)| has_healthy(targets.get(public)))
        })
        .collect()
}

/// Plans the private side for `pairs` (`(public, private)` target group ARNs) from what was observed.
pub fn plan_reconcile(
    pairs: &[(String, String)],
    style: RouteStyle,
    seen: &Observed,
    batch: usize,
) -> Result<ReconcilePlan, String> {
    let mut plan = ReconcilePlan::default();
    let empty = Vec::new();
    for (public, private) in pairs {
        let source = seen.targets.get(public).unwrap_or(&empty);
        let mirror = seen.targets.get(private).unwrap_or(&empty);
        plan.mirrors.push((private.clone(), plan_mirror(source, mirror, batch)));
    }

    if let (Some(public), Some(current)) = (&seen.public_production, &seen.private_production) {
        let desired = mirror_route(public, pairs, style, Some(current))?;
        if !desired.same_action(current) {
            // I4: never move traffic onto a group that is dark while its public mirror is not, unless the current
            // route is dark already (then the move cannot make it worse).
            let current_serves = current.live().iter().any(|tg| has_healthy(seen.targets.get(*tg)));
            let joining = desired.live().into_iter().filter(|tg| !current.live().contains(tg));
            let dark_moves = dark_while_public_serves(joining, pairs, &seen.targets);
            if current_serves && !dark_moves.is_empty() && !desired.same_traffic(current) {
                plan.held_back.push(format!(
                    "production route stays at {current} until {} has a healthy target",
                    dark_moves.join(", ")
                ));
            } else {
                plan.production = Some(desired);
            }
        }
    }
    let production_after = plan.production.as_ref().or(seen.private_production.as_ref());
    if let (Some(current), Some(production)) = (&seen.private_test, production_after) {
        let desired = test_route(pairs, style, production, seen.public_test.as_ref(), current)?;
        if let Some(desired) = desired.filter(|d| !d.same_action(current)) {
            plan.test = Some(desired);
        }
    }
    Ok(plan)
}

/// Where a rollback puts a private side's production route, decided from the deployment's record alone: back on
/// `before` (the route it had before the flip) when the flip changed it (`flipped` differs) and one of the groups
/// it sends to has a healthy target in `targets` (I4: a move back never lands on a dark group). `None`: nothing
/// to put back, or nothing healthy to put it back on; then the reconcile that reads both sides decides.
pub fn roll_back(before: &Route, flipped: &Route, targets: &BTreeMap<String, Vec<ObservedTarget>>) -> Option<Route> {
    if before.same_action(flipped) {
        return None;
    }
    before.live().iter().any(|tg| has_healthy(targets.get(*tg))).then(|| before.clone())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::domain::target::{Target, TargetKey};
    use crate::domain::WeightedTargetGroup;

    const PB: &str = "arn:aws:elasticloadbalancing:r:1:targetgroup/pub-blue/1";
    const PG: &str = "arn:aws:elasticloadbalancing:r:1:targetgroup/pub-green/2";
    const VB: &str = "arn:aws:elasticloadbalancing:r:1:targetgroup/prv-blue/3";
    const VG: &str = "arn:aws:elasticloadbalancing:r:1:targetgroup/prv-green/4";

    fn pairs() -> Vec<(String, String)> {
        vec![(PB.into(), VB.into()), (PG.into(), VG.into())]
    }

    fn t(n: u8, health: HealthState) -> ObservedTarget {
        ObservedTarget {
            target: Target { key: TargetKey::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)), 80), availability_zone: None },
            health,
            reason: None,
        }
    }

    fn route(b: u32, g: u32, blue: &str, green: &str) -> Route {
        Route {
            target_groups: vec![
                WeightedTargetGroup { target_group: blue.into(), weight: b },
                WeightedTargetGroup { target_group: green.into(), weight: g },
            ],
            stickiness_seconds: None,
        }
    }

    #[test]
    fn a_write_stands_on_a_public_read_only_while_it_is_fresh() {
        assert!(!stale(Some(Duration::ZERO)));
        assert!(!stale(Some(FRESH_FOR)), "a read answered within the bound is trusted");
        assert!(stale(Some(FRESH_FOR + Duration::from_millis(1))));
        assert!(stale(None), "a read whose age is not known is read again");
    }

    #[test]
    fn rollback_moves_the_private_route_back_before_removing_anything() {
        use HealthState::*;
        let seen = Observed {
            public_production: Some(route(100, 0, PB, PG)),
            private_production: Some(route(0, 100, VB, VG)),
            targets: BTreeMap::from([
                (PB.to_string(), vec![t(1, Healthy)]),
                (PG.to_string(), vec![t(2, Draining)]),
                (VB.to_string(), vec![t(1, Healthy)]),
                (VG.to_string(), vec![t(2, Healthy)]),
            ]),
            ..Default::default()
        };
        let plan = plan_reconcile(&pairs(), RouteStyle::Weighted, &seen, 200).unwrap();
        assert_eq!(plan.production.as_ref().map(|r| r.live()), Some(vec![VB]));
        assert_eq!(plan.mirrors[1].1.deregistered(), 1, "green's mirror drains with the public side");
        assert!(plan.held_back.is_empty());
    }

    #[test]
    fn a_move_onto_a_dark_mirror_is_held_back_while_the_current_route_serves() {
        use HealthState::*;
        let seen = Observed {
            public_production: Some(route(90, 10, PB, PG)),
            private_production: Some(route(100, 0, VB, VG)),
            targets: BTreeMap::from([
                (PB.to_string(), vec![t(1, Healthy)]),
                (PG.to_string(), vec![t(2, Healthy)]),
                (VB.to_string(), vec![t(1, Healthy)]),
                (VG.to_string(), vec![t(2, Initial)]),
            ]),
            ..Default::default()
        };
        let plan = plan_reconcile(&pairs(), RouteStyle::Weighted, &seen, 200).unwrap();
        assert!(plan.production.is_none());
        assert!(plan.held_back[0].contains("prv-green"), "{:?}", plan.held_back);
    }

    #[test]
    fn a_group_is_dark_for_i4_only_while_its_public_mirror_serves() {
        use HealthState::*;
        let targets = |vb: Vec<ObservedTarget>, pb: Vec<ObservedTarget>| {
            BTreeMap::from([(VB.to_string(), vb), (PB.to_string(), pb), (VG.to_string(), vec![t(2, Healthy)])])
        };
        let seen = targets(vec![t(1, Initial)], vec![t(1, Healthy)]);
        assert_eq!(dark_while_public_serves([VB, VG], &pairs(), &seen), vec![VB]);
        // Dark on both sides: the private side is no darker than the public one.
        assert!(
            dark_while_public_serves([VB], &pairs(), &targets(vec![t(1, Initial)], vec![t(1, Unhealthy)])).is_empty()
        );
        assert!(dark_while_public_serves([VB], &pairs(), &targets(vec![t(1, Healthy)], vec![t(1, Healthy)])).is_empty());
        // A group no pair names has no public mirror to compare with.
        assert!(dark_while_public_serves(["other"], &pairs(), &seen).is_empty());
    }

    #[test]
    fn a_rollback_goes_back_to_the_route_before_the_flip_only_onto_a_healthy_group() {
        use HealthState::*;
        let (before, flipped) = (route(100, 0, VB, VG), route(0, 100, VB, VG));
        let with = |vb: Vec<ObservedTarget>| BTreeMap::from([(VB.to_string(), vb)]);
        assert_eq!(roll_back(&before, &flipped, &with(vec![t(1, Healthy), t(2, Initial)])), Some(before.clone()));
        for dark in [vec![], vec![t(1, Initial)], vec![t(1, Unhealthy), t(2, Draining)]] {
            assert_eq!(roll_back(&before, &flipped, &with(dark.clone())), None, "{dark:?}");
        }
        // A flip that changed nothing (the gate failed before it) has nothing to put back: no write is spent.
        assert_eq!(roll_back(&before, &before, &with(vec![t(1, Healthy)])), None);
        // Only the groups the route before sends to are asked: green's health says nothing about blue.
        let green_only = BTreeMap::from([(VG.to_string(), vec![t(2, Healthy)])]);
        assert_eq!(roll_back(&before, &flipped, &green_only), None);
    }

    fn arb_health() -> impl Strategy<Value = HealthState> {
        prop_oneof![
            Just(HealthState::Healthy),
            Just(HealthState::Initial),
            Just(HealthState::Unhealthy),
            Just(HealthState::Draining),
            Just(HealthState::Unused),
        ]
    }

    fn arb_targets() -> impl Strategy<Value = Vec<ObservedTarget>> {
        proptest::collection::vec((0u8..12, arb_health()).prop_map(|(n, h)| t(n, h)), 0..8)
    }

    fn arb_route(blue: &'static str, green: &'static str) -> impl Strategy<Value = Route> {
        (0u32..=100).prop_map(move |g| route(100 - g, g, blue, green))
    }

    proptest! {
        /// From any state, applying the plan (with the private side healthy) yields a state whose next plan is
        /// empty: the private side mirrors the public one (I1–I3).
        #[test]
        fn converges_from_any_state(
            pb in arb_targets(), pg in arb_targets(), vb in arb_targets(), vg in arb_targets(),
            public in arb_route(PB, PG), private in arb_route(VB, VG),
            public_test in arb_route(PB, PG), private_test in arb_route(VB, VG),
        ) {
            let mut seen = Observed {
                public_production: Some(public),
                public_test: Some(public_test),
                private_production: Some(private),
                private_test: Some(private_test),
                targets: BTreeMap::from([(PB.into(), pb), (PG.into(), pg), (VB.into(), vb), (VG.into(), vg)]),
            };
            for _round in 0..2 {
                let plan = plan_reconcile(&pairs(), RouteStyle::Weighted, &seen, 3).unwrap();
                // Apply it as ELB would, with every registered private target passing its health check.
                for (tg, m) in &plan.mirrors {
                    let ts = seen.targets.entry(tg.clone()).or_default();
                    for k in m.deregister.iter().flatten() {
                        ts.iter_mut().filter(|t| t.key() == *k).for_each(|t| t.health = HealthState::Draining);
                    }
                    for r in m.register.iter().flatten() {
                        ts.retain(|t| t.key() != r.key);
                        ts.push(ObservedTarget { target: r.clone(), health: HealthState::Healthy, reason: None });
                    }
                }
                // The private load balancer can reach every task: what is registered passes its health checks.
                for (_, private) in pairs() {
                    for t in seen.targets.entry(private).or_default().iter_mut().filter(|t| !t.is_draining()) {
                        t.health = HealthState::Healthy;
                    }
                }
                if let Some(r) = plan.production { seen.private_production = Some(r); }
                if let Some(r) = plan.test { seen.private_test = Some(r); }
            }
            let last = plan_reconcile(&pairs(), RouteStyle::Weighted, &seen, 3).unwrap();
            prop_assert!(last.is_empty(), "not converged: {:?}", last);
            for (public, private) in pairs() {
                let live = |tg: &str| -> BTreeSet<_> {
                    seen.targets[tg].iter().filter(|t| !t.is_draining()).map(ObservedTarget::key).collect()
                };
                prop_assert_eq!(live(&public), live(&private));
            }
        }
    }
}
