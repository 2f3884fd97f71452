//! The mirror plan (invariant I1): a full diff between the public target group (the source of truth) and its
//! private mirror, keyed by `ip:port`, with draining targets ignored on both sides, split into batches so that
//! the number of API calls grows with batches, not with targets.

use std::collections::{BTreeMap, BTreeSet};

use super::target::{ObservedTarget, Target, TargetKey};

/// Targets per `RegisterTargets`/`DeregisterTargets` call. ELB accepts more, but large requests are the ones
/// that get throttled and retried whole; this is the chunk size aws-load-balancer-controller settled on.
pub const DEFAULT_BATCH: usize = 200;

/// What to change on the mirror so that it holds exactly the source's targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorPlan {
    /// Targets to register, in batches.
    pub register: Vec<Vec<Target>>,
    /// Targets to deregister, in batches.
    pub deregister: Vec<Vec<TargetKey>>,
    /// The membership the mirror will have once the plan is applied.
    pub desired: BTreeSet<TargetKey>,
}

impl MirrorPlan {
    pub fn is_empty(&self) -> bool {
        self.register.is_empty() && self.deregister.is_empty()
    }

    pub fn registered(&self) -> usize {
        self.register.iter().map(Vec::len).sum()
    }

    pub fn deregistered(&self) -> usize {
        self.deregister.iter().map(Vec::len).sum()
    }

    /// The number of ELB calls applying the plan takes.
    pub fn calls(&self) -> usize {
        self.register.len() + self.deregister.len()
    }

    /// The plan with only the registrations a later read of the source (`fresh`) still holds (draining aside),
    /// rebatched, and the targets dropped. The source was read before the mirror: a target that left the source
    /// in between, and was deregistered from the mirror meanwhile by another reconcile, would otherwise be
    /// registered back. Deregistrations are kept: they follow the older read, and a target the fresh read has
    /// again is registered by the next reconcile.
    pub fn confirmed(self, fresh: &[ObservedTarget], batch: usize) -> (MirrorPlan, Vec<TargetKey>) {
        let still: BTreeSet<TargetKey> = fresh.iter().filter(|t| !t.is_draining()).map(ObservedTarget::key).collect();
        let (kept, dropped): (Vec<Target>, Vec<Target>) =
            self.register.into_iter().flatten().partition(|t| still.contains(&t.key));
        let dropped: Vec<TargetKey> = dropped.into_iter().map(|t| t.key).collect();
        let plan = MirrorPlan {
            register: kept.chunks(batch.max(1)).map(<[Target]>::to_vec).collect(),
            deregister: self.deregister,
            desired: self.desired.into_iter().filter(|k| !dropped.contains(k)).collect(),
        };
        (plan, dropped)
    }
}

/// Plans the change that makes `mirror` hold exactly the non-draining targets of `source`.
///
/// Stale targets in the mirror (from an earlier deployment, a replaced task) are deregistered: the diff is
/// full, not additive. A target draining in the mirror but wanted by the source is registered again, which
/// is how ELB takes a draining target back.
pub fn plan_mirror(source: &[ObservedTarget], mirror: &[ObservedTarget], batch: usize) -> MirrorPlan {
    let batch = batch.max(1);
    let wanted: BTreeMap<TargetKey, &Target> =
        source.iter().filter(|t| !t.is_draining()).map(|t| (t.key(), &t.target)).collect();
    let present: BTreeSet<TargetKey> = mirror.iter().filter(|t| !t.is_draining()).map(ObservedTarget::key).collect();

    let register: Vec<Target> =
        wanted.iter().filter(|(k, _)| !present.contains(k)).map(|(_, t)| (*t).clone()).collect();
    let deregister: Vec<TargetKey> = present.iter().filter(|k| !wanted.contains_key(k)).copied().collect();

    MirrorPlan {
        register: register.chunks(batch).map(<[Target]>::to_vec).collect(),
        deregister: deregister.chunks(batch).map(<[TargetKey]>::to_vec).collect(),
        desired: wanted.keys().copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::domain::target::HealthState;

    fn obs(last: u8, port: u16, health: HealthState) -> ObservedTarget {
        ObservedTarget {
            target: Target {
                key: TargetKey::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port),
                availability_zone: None,
            },
            health,
            reason: None,
        }
    }

    fn keys(v: &[Vec<TargetKey>]) -> Vec<String> {
        v.iter().flatten().map(ToString::to_string).collect()
    }

    fn reg(v: &[Vec<Target>]) -> Vec<String> {
        v.iter().flatten().map(|t| t.key.to_string()).collect()
    }

    #[test]
    fn a_registration_the_source_no_longer_holds_is_dropped_and_the_rest_rebatched() {
        use HealthState::*;
        // Read first: 1, 2, 3 in the source; the mirror, read later, has lost 3 (its task stopped) and 4.
        let plan =
            plan_mirror(&[obs(1, 80, Healthy), obs(2, 80, Healthy), obs(3, 80, Healthy)], &[obs(4, 80, Healthy)], 1);
        assert_eq!(reg(&plan.register), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        // Read again after the mirror: 3 is gone, 2 is draining.
        let (confirmed, dropped) = plan.confirmed(&[obs(1, 80, Healthy), obs(2, 80, Draining), obs(5, 80, Healthy)], 1);
        assert_eq!(reg(&confirmed.register), ["10.0.0.1:80"]);
        assert_eq!(confirmed.register.len(), 1, "one batch of one");
        assert_eq!(keys(&confirmed.deregister), ["10.0.0.4:80"], "deregistrations kept");
        assert_eq!(dropped.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.0.0.2:80", "10.0.0.3:80"]);
        assert_eq!(confirmed.desired.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.0.0.1:80"]);
        // Nothing to drop leaves the plan as it was.
        let plan = plan_mirror(&[obs(1, 80, Healthy)], &[], 200);
        assert_eq!(plan.clone().confirmed(&[obs(1, 80, Healthy)], 200).0, plan);
    }

    #[test]
    fn table() {
        use HealthState::*;
        struct Case {
            name: &'static str,
            source: Vec<ObservedTarget>,
            mirror: Vec<ObservedTarget>,
            register: Vec<&'static str>,
            deregister: Vec<&'static str>,
        }
        let cases = vec![
            Case { name: "empty both", source: vec![], mirror: vec![], register: vec![], deregister: vec![] },
            Case {
                name: "fresh mirror",
                source: vec![obs(1, 80, Healthy), obs(2, 80, Initial)],
                mirror: vec![],
                register: vec!["10.0.0.1:80", "10.0.0.2:80"],
                deregister: vec![],
            },
            Case {
                name: "stale targets from an earlier deployment go",
                source: vec![obs(3, 80, Healthy)],
                mirror: vec![obs(1, 80, Healthy), obs(3, 80, Healthy)],
                register: vec![],
                deregister: vec!["10.0.0.1:80"],
            },
            Case {
                name: "draining in source is not copied",
                source: vec![obs(1, 80, Draining), obs(2, 80, Healthy)],
                mirror: vec![obs(1, 80, Healthy)],
                register: vec!["10.0.0.2:80"],
                deregister: vec!["10.0.0.1:80"],
            },
            Case {
                name: "draining in mirror but wanted again is re-registered",
                source: vec![obs(1, 80, Healthy)],
                mirror: vec![obs(1, 80, Draining)],
                register: vec!["10.0.0.1:80"],
                deregister: vec![],
            },
            Case {
                name: "same ip on another port is another target",
                source: vec![obs(1, 8080, Healthy)],
                mirror: vec![obs(1, 80, Healthy)],
                register: vec!["10.0.0.1:8080"],
                deregister: vec!["10.0.0.1:80"],
            },
            Case {
                name: "unhealthy targets are still members",
                source: vec![obs(1, 80, Unhealthy)],
                mirror: vec![obs(1, 80, Unused)],
                register: vec![],
                deregister: vec![],
            },
        ];
        for c in cases {
            let p = plan_mirror(&c.source, &c.mirror, DEFAULT_BATCH);
            assert_eq!(reg(&p.register), c.register, "{}: register", c.name);
            assert_eq!(keys(&p.deregister), c.deregister, "{}: deregister", c.name);
        }
    }

    #[test]
    fn batches_bound_the_calls() {
        let source: Vec<_> = (0..=255u8)
            .flat_map(|a| (0..4u16).map(move |p| obs(a, 1000 + p, HealthState::Healthy)))
            .take(1000)
            .collect();
        let p = plan_mirror(&source, &[], DEFAULT_BATCH);
        assert_eq!(p.registered(), 1000);
        assert_eq!(p.register.len(), 5);
        assert!(p.register.iter().all(|b| b.len() <= DEFAULT_BATCH));
        assert_eq!(p.calls(), 5);
        // A 10% change of 1,000 targets: 100 out, 100 in, one call each way.
        let mut changed = source.clone();
        changed.truncate(900);
        changed.extend((0..100u16).map(|p| obs(250, 2000 + p, HealthState::Initial)));
        let p = plan_mirror(&changed, &source, DEFAULT_BATCH);
        assert_eq!((p.registered(), p.deregistered(), p.calls()), (100, 100, 2));
    }

    fn arb_target() -> impl Strategy<Value = ObservedTarget> {
        (0u8..40, prop_oneof![Just(80u16), Just(8080u16)], 0usize..6).prop_map(|(ip, port, h)| {
            let health = [
                HealthState::Initial,
                HealthState::Healthy,
                HealthState::Unhealthy,
                HealthState::Unused,
                HealthState::Draining,
                HealthState::Unavailable,
            ][h];
            obs(ip, port, health)
        })
    }

    proptest! {
        /// Applying the plan makes the mirror's live membership equal the source's, never removes a target the
        /// source still has, and a second plan over the result is empty.
        #[test]
        fn applying_a_plan_converges(
            source in proptest::collection::vec(arb_target(), 0..60),
            mirror in proptest::collection::vec(arb_target(), 0..60),
            batch in 1usize..50,
        ) {
            let plan = plan_mirror(&source, &mirror, batch);
            let wanted: BTreeSet<TargetKey> =
                source.iter().filter(|t| !t.is_draining()).map(ObservedTarget::key).collect();
            for k in plan.deregister.iter().flatten() {
                prop_assert!(!wanted.contains(k), "deregisters {k}, which the source still has");
            }
            prop_assert!(plan.register.iter().all(|b| !b.is_empty() && b.len() <= batch));
            prop_assert!(plan.deregister.iter().all(|b| !b.is_empty() && b.len() <= batch));

            // Apply it the way ELB would: registration makes a target `initial`, deregistration `draining`.
            let mut after: BTreeMap<TargetKey, ObservedTarget> = BTreeMap::new();
            for t in &mirror {
                // ELB holds one entry per key; a live entry wins over a draining one.
                let keep = after.get(&t.key()).is_some_and(|o| !o.is_draining());
                if !keep {
                    after.insert(t.key(), t.clone());
                }
            }
            for t in plan.register.iter().flatten() {
                after.insert(t.key, ObservedTarget { target: t.clone(), health: HealthState::Initial, reason: None });
            }
            for k in plan.deregister.iter().flatten() {
                if let Some(t) = after.get_mut(k) {
                    t.health = HealthState::Draining;
                }
            }
            let after: Vec<ObservedTarget> = after.into_values().collect();
            let live: BTreeSet<TargetKey> =
                after.iter().filter(|t| !t.is_draining()).map(ObservedTarget::key).collect();
            prop_assert_eq!(&live, &wanted);
            prop_assert_eq!(&plan.desired, &wanted);
            prop_assert!(plan_mirror(&source, &after, batch).is_empty());
        }
    }
}
