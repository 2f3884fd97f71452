//! A binding: the configuration for one CodeDeploy deployment group, as a value. Its pairs (each public target
//! group and its private mirror), its private routes (a listener's default action or a rule), its further private
//! sides, and what makes one valid. Where bindings come from (the environment, the state table) is the config's.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{arn, RouteStyle};

/// How long the gate waits for the private side's health when a binding does not say.
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u64 = 300;

/// What the functions do with a binding's private side. `Enforce` mirrors it; `Observe` (shadow mode) reads, plans,
/// gates and records exactly as `Enforce` does but writes nothing to ELB and never fails a deployment: it records
/// what it would have done, so that a team can watch real deployments before the functions touch production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Observe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Observe => "observe",
        }
    }

    /// Parses `enforce` or `observe` (the installation's setting).
    pub fn parse(s: &str) -> Option<Mode> {
        match s.trim() {
            "enforce" => Some(Mode::Enforce),
            "observe" => Some(Mode::Observe),
            _ => None,
        }
    }
}

/// One public target group and its private mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    pub public_target_group: String,
    pub private_target_group: String,
}

/// A private route: a listener's default action, or one listener rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RouteRef {
    Listener(String),
    Rule(String),
}

impl RouteRef {
    pub fn arn(&self) -> &str {
        match self {
            RouteRef::Listener(a) | RouteRef::Rule(a) => a,
        }
    }

    pub fn load_balancer(&self) -> Option<String> {
        arn::load_balancer_of(self.arn())
    }

    pub fn style(&self) -> RouteStyle {
        RouteStyle::of(self.arn())
    }
}

impl std::fmt::Display for RouteRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteRef::Listener(a) => write!(f, "listener {a}"),
            RouteRef::Rule(a) => write!(f, "rule {a}"),
        }
    }
}

fn default_health_timeout() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_SECS
}

/// One more private side of a binding: another load balancer that mirrors the same public target groups with
/// target groups of its own (an internal ALB for the VPC and an NLB for PrivateLink, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateSide {
    pub pairs: Vec<Pair>,
    pub private_production_route: RouteRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_test_route: Option<RouteRef>,
}

/// The configuration for one CodeDeploy deployment group. Its own `pairs` and routes are its first private side;
/// `additional_private_sides` lists the others, each gated, flipped, followed and undone with the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub application: String,
    pub deployment_group: String,
    pub pairs: Vec<Pair>,
    pub private_production_route: RouteRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_test_route: Option<RouteRef>,
    #[serde(default = "default_health_timeout")]
    pub health_timeout_seconds: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_private_sides: Vec<PrivateSide>,
    /// This binding's mode; `None` takes the installation's (`BLUEGREEN_MIRROR_MODE`, `enforce` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Which private side this is, in a view from [`Binding::sides`] (0: the binding's own fields).
    #[serde(skip)]
    pub side: usize,
}

impl Binding {
    /// Every private side as a binding of one side: the use cases act on one side at a time and on all of them
    /// together. A binding of one side yields itself.
    pub fn sides(&self) -> Vec<Binding> {
        let mut first = self.clone();
        let more = std::mem::take(&mut first.additional_private_sides);
        let mut out = vec![first.clone()];
        for (i, side) in more.into_iter().enumerate() {
            out.push(Binding {
                pairs: side.pairs,
                private_production_route: side.private_production_route,
                private_test_route: side.private_test_route,
                side: i + 1,
                ..first.clone()
            });
        }
        out
    }

    /// The number of private sides.
    pub fn side_count(&self) -> usize {
        1 + self.additional_private_sides.len()
    }

    /// The private target groups of every side.
    pub fn all_private_target_groups(&self) -> Vec<&str> {
        let mut out = self.private_target_groups();
        for side in &self.additional_private_sides {
            out.extend(side.pairs.iter().map(|p| p.private_target_group.as_str()));
        }
        out
    }

    /// The private routes (production, then test) of every side.
    pub fn all_private_routes(&self) -> Vec<&RouteRef> {
        let mut out = vec![&self.private_production_route];
        out.extend(self.private_test_route.as_ref());
        for side in &self.additional_private_sides {
            out.push(&side.private_production_route);
            out.extend(side.private_test_route.as_ref());
        }
        out
    }

    /// `(public, private)` target group ARN pairs.
    pub fn pair_arns(&self) -> Vec<(String, String)> {
        self.pairs.iter().map(|p| (p.public_target_group.clone(), p.private_target_group.clone())).collect()
    }

    pub fn private_of(&self, public: &str) -> Option<&str> {
        self.pairs.iter().find(|p| p.public_target_group == public).map(|p| p.private_target_group.as_str())
    }

    /// The public target group whose name is `name` (CodeDeploy speaks in names).
    pub fn public_named(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|p| arn::target_group_name(&p.public_target_group) == Some(name))
            .map(|p| p.public_target_group.as_str())
    }

    pub fn private_target_groups(&self) -> Vec<&str> {
        self.pairs.iter().map(|p| p.private_target_group.as_str()).collect()
    }

    pub fn public_target_groups(&self) -> Vec<&str> {
        self.pairs.iter().map(|p| p.public_target_group.as_str()).collect()
    }

    /// The private load balancer, from the production route's ARN.
    pub fn private_load_balancer(&self) -> Option<String> {
        self.private_production_route.load_balancer()
    }

    pub fn style(&self) -> RouteStyle {
        self.private_production_route.style()
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.application, self.deployment_group)
    }

    /// The label with the side, when the binding has more than one (`web/web-bg side 2`, counted from 1).
    pub fn side_label(&self) -> String {
        match self.side {
            0 => self.label(),
            i => format!("{} side {}", self.label(), i + 1),
        }
    }

    /// What is wrong with this binding, in words (empty: nothing).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.application.trim().is_empty() || self.deployment_group.trim().is_empty() {
            out.push(format!("binding {:?}: application and deployment_group must not be empty", self.label()));
        }
        if !(1..=3600).contains(&self.health_timeout_seconds) {
            out.push(format!("binding {}: health_timeout_seconds must be between 1 and 3600", self.label()));
        }
        let sides = self.sides();
        let mut seen = HashSet::new();
        let publics: HashSet<&str> = self.public_target_groups().into_iter().collect();
        for side in &sides {
            out.extend(side.side_problems(&mut seen));
            if side.side > 0 && side.public_target_groups().into_iter().collect::<HashSet<_>>() != publics {
                out.push(format!(
                    "binding {}: each side's pairs must name the same two public target groups as the binding's own \
                     pairs",
                    side.side_label()
                ));
            }
        }
        let mut routes = HashSet::new();
        for side in &sides {
            if !routes.insert(side.private_production_route.arn()) {
                out.push(format!(
                    "binding {}: private_production_route {} is another side's too; each side has its own",
                    side.side_label(),
                    side.private_production_route
                ));
            }
        }
        out
    }

    /// The problems of one side: its pairs, its routes. `seen` collects target groups across sides.
    fn side_problems<'a>(&'a self, seen: &mut HashSet<&'a str>) -> Vec<String> {
        let me = self.side_label();
        let mut out = Vec::new();
        if self.pairs.len() != 2 {
            out.push(format!(
                "binding {me}: `pairs` must hold exactly two public→private target group pairs (blue and green), found {}",
                self.pairs.len()
            ));
        }
        let mut own = HashSet::new();
        for (tg, private) in self
            .pairs
            .iter()
            .flat_map(|p| [(p.public_target_group.as_str(), false), (p.private_target_group.as_str(), true)])
        {
            if !arn::is_target_group(tg) {
                out.push(format!("binding {me}: {tg:?} is not a target group ARN"));
            }
            // The public groups repeat on every side; a private group belongs to one side.
            let fresh = if private || self.side == 0 { seen.insert(tg) } else { true };
            if !own.insert(tg) || !fresh || (private && self.public_target_groups().contains(&tg)) {
                out.push(format!(
                    "binding {me}: target group {tg} appears twice; each side's two private target groups must be \
                     distinct from each other, from every other side's and from the public ones"
                ));
            }
        }
        let mut routes = vec![("private_production_route", &self.private_production_route)];
        if let Some(t) = &self.private_test_route {
            routes.push(("private_test_route", t));
        }
        for (field, r) in &routes {
            let ok = match r {
                RouteRef::Listener(a) => arn::is_listener(a),
                RouteRef::Rule(a) => arn::is_rule(a),
            };
            if !ok {
                out.push(format!("binding {me}: {field} {r} is not a valid ARN of that kind"));
            }
        }
        if let Some(test) = &self.private_test_route {
            if test == &self.private_production_route {
                out.push(format!("binding {me}: private_test_route must differ from private_production_route"));
            }
            if test.load_balancer() != self.private_production_route.load_balancer() {
                out.push(format!(
                    "binding {me}: private_test_route and private_production_route are on different load balancers"
                ));
            }
        } else if self.style() == RouteStyle::Single {
            out.push(format!(
                "binding {me}: the private load balancer is an NLB, whose listener forwards to one target group; \
                 declare private_test_route so that the idle target group stays attached and health-checked"
            ));
        }
        out
    }
}
