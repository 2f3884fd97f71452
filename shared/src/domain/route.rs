//! Routes (invariants I2/I3): the target groups a listener's default action or a listener rule forwards to,
//! **with their weights**. CodeDeploy keeps the idle target group inside the forward action at weight 0, so a
//! route is the whole weighted list, never just "the first target group".

use std::fmt;

use serde::{Deserialize, Serialize};

use super::arn;

/// One entry of a forward action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedTargetGroup {
    pub target_group: String,
    pub weight: u32,
}

/// Where a listener or rule sends traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub target_groups: Vec<WeightedTargetGroup>,
    /// Target-group stickiness of the forward action, kept as the private listener had it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness_seconds: Option<u32>,
}

/// How a private listener can forward: an ALB forward action takes weighted target groups; an NLB listener
/// forwards to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteStyle {
    Weighted,
    Single,
}

impl RouteStyle {
    /// The style of the load balancer a listener or rule ARN belongs to.
    pub fn of(listener_or_rule_arn: &str) -> Self {
        if arn::load_balancer_kind(listener_or_rule_arn) == Some("net") {
            Self::Single
        } else {
            Self::Weighted
        }
    }
}

impl Route {
    /// A route that sends everything to `live` and keeps `idle` attached at weight 0 (weighted style), or
    /// forwards to `live` alone (single style).
    pub fn all_to(live: &str, idle: &[&str], style: RouteStyle) -> Self {
        let mut target_groups = vec![WeightedTargetGroup { target_group: live.to_string(), weight: 100 }];
        if style == RouteStyle::Weighted {
            target_groups.extend(
                idle.iter()
                    .filter(|tg| **tg != live)
                    .map(|tg| WeightedTargetGroup { target_group: (*tg).to_string(), weight: 0 }),
            );
        } else {
            target_groups[0].weight = 1;
        }
        Self { target_groups, stickiness_seconds: None }
    }

    pub fn weight(&self, target_group: &str) -> Option<u32> {
        self.target_groups.iter().find(|w| w.target_group == target_group).map(|w| w.weight)
    }

    pub fn contains(&self, target_group: &str) -> bool {
        self.weight(target_group).is_some()
    }

    fn total(&self) -> u64 {
        self.target_groups.iter().map(|w| u64::from(w.weight)).sum()
    }

    /// Target groups that receive traffic. A lone target group with weight 0 still receives everything (that is
    /// how ELB treats a single-target forward), so it counts as live.
    pub fn live(&self) -> Vec<&str> {
        if self.total() == 0 && self.target_groups.len() == 1 {
            return vec![self.target_groups[0].target_group.as_str()];
        }
        self.target_groups.iter().filter(|w| w.weight > 0).map(|w| w.target_group.as_str()).collect()
    }

    /// The share of traffic (0.0..=1.0) that goes to `target_group`.
    pub fn share(&self, target_group: &str) -> f64 {
        if self.live().contains(&target_group) && self.live().len() == 1 {
            return 1.0;
        }
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        self.weight(target_group).map_or(0.0, |w| f64::from(w) / total as f64)
    }

    /// Whether both routes send the same share of traffic to the same target groups. Weight-0 entries do not
    /// count: (A=100, B=0) and (A=1) carry the same traffic.
    pub fn same_traffic(&self, other: &Route) -> bool {
        let mut a = self.live();
        let mut b = other.live();
        a.sort_unstable();
        b.sort_unstable();
        if a != b {
            return false;
        }
        let (ta, tb) = (self.total(), other.total());
        if a.len() <= 1 {
            return true;
        }
        a.iter().all(|tg| {
            let wa = u64::from(self.weight(tg).unwrap_or(0));
            let wb = u64::from(other.weight(tg).unwrap_or(0));
            wa * tb == wb * ta
        })
    }

    /// Whether the routes are the same action, weight-0 attachments included (what ModifyListener would change).
    pub fn same_action(&self, other: &Route) -> bool {
        let mut a = self.target_groups.clone();
        let mut b = other.target_groups.clone();
        a.sort_by(|x, y| x.target_group.cmp(&y.target_group));
        b.sort_by(|x, y| x.target_group.cmp(&y.target_group));
        a == b && self.stickiness_seconds == other.stickiness_seconds
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .target_groups
            .iter()
            .map(|w| format!("{}={}", arn::target_group_name(&w.target_group).unwrap_or(&w.target_group), w.weight))
            .collect();
        write!(f, "[{}]", parts.join(","))
    }
}

/// Computes the private route that mirrors `public` through the binding's `(public, private)` pairs.
///
/// Weighted style: same weights on the mirrors, and every private target group of the binding kept in the
/// action (weight 0 where the public side has none), so that the idle one stays health-checked.
/// Single style (NLB): the mirror of the public target group with the largest weight; on a tie, whatever the
/// private side forwards to now, so that a 50/50 step does not flap.
pub fn mirror_route(
    public: &Route,
    pairs: &[(String, String)],
    style: RouteStyle,
    current_private: Option<&Route>,
) -> Result<Route, String> {
    let mirror_of = |tg: &str| -> Result<&str, String> {
        pairs.iter().find(|(p, _)| p == tg).map(|(_, m)| m.as_str()).ok_or_else(|| {
            format!(
                "the public route forwards to target group {} which no pair of the binding names",
                arn::target_group_name(tg).unwrap_or(tg)
            )
        })
    };
    if public.target_groups.is_empty() {
        return Err("the public route forwards to no target group".to_string());
    }
    let stickiness_seconds = current_private.and_then(|r| r.stickiness_seconds);
    match style {
        RouteStyle::Weighted => {
            let mut target_groups = Vec::with_capacity(pairs.len());
            for w in &public.target_groups {
                target_groups.push(WeightedTargetGroup {
                    target_group: mirror_of(&w.target_group)?.to_string(),
                    weight: w.weight,
                });
            }
            for (_, private) in pairs {
                if !target_groups.iter().any(|w| &w.target_group == private) {
                    target_groups.push(WeightedTargetGroup { target_group: private.clone(), weight: 0 });
                }
            }
            Ok(Route { target_groups, stickiness_seconds })
        }
        RouteStyle::Single => {
            let top = public.target_groups.iter().map(|w| w.weight).max().unwrap_or(0);
            let leaders: Vec<&str> = public
                .target_groups
                .iter()
                .filter(|w| w.weight == top)
                .map(|w| mirror_of(&w.target_group))
                .collect::<Result<_, _>>()?;
            let current = current_private.and_then(|r| r.live().first().map(|s| s.to_string()));
            let chosen = match current {
                Some(c) if leaders.contains(&c.as_str()) => c,
                _ => leaders.first().map(|s| s.to_string()).unwrap_or_default(),
            };
            Ok(Route {
                target_groups: vec![WeightedTargetGroup { target_group: chosen, weight: 1 }],
                stickiness_seconds,
            })
        }
    }
}

/// The private test route (I3), given the private production route it goes with. Weighted (ALB): the mirror of the
/// public test route, when there is one. Single (NLB): the private group production does not use, so that both
/// stay attached and health-checked. `None` when there is nothing to decide from.
pub fn test_route(
    pairs: &[(String, String)],
    style: RouteStyle,
    production: &Route,
    public_test: Option<&Route>,
    current: &Route,
) -> Result<Option<Route>, String> {
    match style {
        RouteStyle::Single => {
            let live = production.live();
            Ok(pairs
                .iter()
                .map(|(_, p)| p)
                .find(|p| !live.contains(&p.as_str()))
                .map(|idle| Route::all_to(idle, &[], style)))
        }
        RouteStyle::Weighted => public_test.map(|public| mirror_route(public, pairs, style, Some(current))).transpose(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB_A: &str = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/pub-blue/aaaa";
    const PUB_B: &str = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/pub-green/bbbb";
    const PRV_A: &str = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/prv-blue/cccc";
    const PRV_B: &str = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/prv-green/dddd";

    fn pairs() -> Vec<(String, String)> {
        vec![(PUB_A.into(), PRV_A.into()), (PUB_B.into(), PRV_B.into())]
    }

    fn r(entries: &[(&str, u32)]) -> Route {
        Route {
            target_groups: entries
                .iter()
                .map(|(t, w)| WeightedTargetGroup { target_group: (*t).into(), weight: *w })
                .collect(),
            stickiness_seconds: None,
        }
    }

    #[test]
    fn weighted_mirror_copies_weights_and_keeps_idle_attached() {
        let cases: Vec<(Route, Route)> = vec![
            (r(&[(PUB_A, 100), (PUB_B, 0)]), r(&[(PRV_A, 100), (PRV_B, 0)])),
            (r(&[(PUB_A, 90), (PUB_B, 10)]), r(&[(PRV_A, 90), (PRV_B, 10)])),
            (r(&[(PUB_B, 1)]), r(&[(PRV_B, 1), (PRV_A, 0)])),
            (r(&[(PUB_B, 100), (PUB_A, 0)]), r(&[(PRV_B, 100), (PRV_A, 0)])),
        ];
        for (public, want) in cases {
            let got = mirror_route(&public, &pairs(), RouteStyle::Weighted, None);
            assert_eq!(got.as_ref().ok(), Some(&want), "mirror of {public}");
        }
    }

    #[test]
    fn unknown_public_target_group_is_refused() {
        let stranger = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/other/eeee";
        let err = mirror_route(&r(&[(stranger, 1)]), &pairs(), RouteStyle::Weighted, None).err();
        assert!(err.is_some_and(|e| e.contains("other")));
        assert!(mirror_route(&r(&[]), &pairs(), RouteStyle::Weighted, None).is_err());
    }

    #[test]
    fn single_style_follows_the_majority_and_holds_on_a_tie() {
        let got = mirror_route(&r(&[(PUB_A, 40), (PUB_B, 60)]), &pairs(), RouteStyle::Single, None);
        assert_eq!(
            got.ok().map(|r| r.live().iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            Some(vec![PRV_B.to_string()])
        );
        let current = r(&[(PRV_A, 1)]);
        let got = mirror_route(&r(&[(PUB_A, 50), (PUB_B, 50)]), &pairs(), RouteStyle::Single, Some(&current));
        assert_eq!(
            got.ok().map(|r| r.live().iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            Some(vec![PRV_A.to_string()])
        );
    }

    #[test]
    fn traffic_comparison_ignores_scale_and_idle_entries() {
        assert!(r(&[(PRV_A, 100), (PRV_B, 0)]).same_traffic(&r(&[(PRV_A, 1)])));
        assert!(r(&[(PRV_A, 90), (PRV_B, 10)]).same_traffic(&r(&[(PRV_B, 1), (PRV_A, 9)])));
        assert!(!r(&[(PRV_A, 90), (PRV_B, 10)]).same_traffic(&r(&[(PRV_A, 80), (PRV_B, 20)])));
        assert!(!r(&[(PRV_A, 100)]).same_traffic(&r(&[(PRV_B, 100)])));
        assert!(!r(&[(PRV_A, 100), (PRV_B, 0)]).same_action(&r(&[(PRV_A, 100)])));
        assert!(r(&[(PRV_A, 100), (PRV_B, 0)]).same_action(&r(&[(PRV_B, 0), (PRV_A, 100)])));
        assert_eq!(r(&[(PRV_A, 0)]).live(), vec![PRV_A]);
        assert!((r(&[(PRV_A, 90), (PRV_B, 10)]).share(PRV_B) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn all_to_builds_both_styles() {
        let w = Route::all_to(PRV_B, &[PRV_A, PRV_B], RouteStyle::Weighted);
        assert_eq!(w, r(&[(PRV_B, 100), (PRV_A, 0)]));
        let s = Route::all_to(PRV_B, &[PRV_A], RouteStyle::Single);
        assert_eq!(s, r(&[(PRV_B, 1)]));
        assert_eq!(w.to_string(), "[prv-green=100,prv-blue=0]");
    }
}
