//! Elastic Load Balancing v2 adapter: target groups, targets and the forward action of listeners and rules.

use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, TargetDescription, TargetGroupStickinessConfig, TargetGroupTuple,
};
use aws_sdk_elasticloadbalancingv2::Client;

use super::errors::aws_error;
use crate::config::RouteRef;
use crate::domain::{HealthState, ObservedTarget, Route, Target, TargetKey, WeightedTargetGroup};
use crate::ports::{LoadBalancers, TargetGroupFacts};
use crate::{Error, Result};

const SERVICE: &str = "elasticloadbalancing";

/// [`LoadBalancers`] over the ELBv2 API.
#[derive(Debug, Clone)]
pub struct Elb {
    client: Client,
}

impl Elb {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The actions of a listener's default action or of a rule.
    async fn actions(&self, route: &RouteRef) -> Result<Vec<Action>> {
        match route {
            RouteRef::Listener(arn) => {
                let out = self
                    .client
                    .describe_listeners()
                    .listener_arns(arn)
                    .send()
                    .await
                    .map_err(|e| aws_error(SERVICE, "DescribeListeners", e))?;
                let l = out
                    .listeners()
                    .first()
                    .ok_or_else(|| Error::Misconfigured(format!("listener {arn} does not exist")))?;
                Ok(l.default_actions().to_vec())
            }
            RouteRef::Rule(arn) => {
                let out = self
                    .client
                    .describe_rules()
                    .rule_arns(arn)
                    .send()
                    .await
                    .map_err(|e| aws_error(SERVICE, "DescribeRules", e))?;
                let r = out
                    .rules()
                    .first()
                    .ok_or_else(|| Error::Misconfigured(format!("listener rule {arn} does not exist")))?;
                Ok(r.actions().to_vec())
            }
        }
    }
}

/// Reads a forward action into a route; anything else is refused, because rewriting it would drop behaviour
/// (authentication, redirects) the operator configured.
fn route_of(route: &RouteRef, actions: &[Action]) -> Result<Route> {
    let [action] = actions else {
        let kinds: Vec<&str> = actions.iter().map(|a| a.r#type().map_or("?", ActionTypeEnum::as_str)).collect();
        return Err(Error::Misconfigured(format!(
            "{route} has actions [{}]; bluegreen-mirror manages routes whose action is a single forward",
            kinds.join(", ")
        )));
    };
    if action.r#type() != Some(&ActionTypeEnum::Forward) {
        return Err(Error::Misconfigured(format!(
            "{route} does not forward (its action is {}); bluegreen-mirror manages forward actions only",
            action.r#type().map_or("?", ActionTypeEnum::as_str)
        )));
    }
    let weighted: Vec<WeightedTargetGroup> = action
        .forward_config()
        .map(|f| {
            f.target_groups()
                .iter()
                .filter_map(|t| {
                    Some(WeightedTargetGroup {
                        target_group: t.target_group_arn()?.to_string(),
                        weight: u32::try_from(t.weight().unwrap_or(1)).unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let target_groups = if weighted.is_empty() {
        let tg = action
            .target_group_arn()
            .ok_or_else(|| Error::Misconfigured(format!("{route} forwards to no target group")))?;
        vec![WeightedTargetGroup { target_group: tg.to_string(), weight: 1 }]
    } else {
        weighted
    };
    let stickiness_seconds = action
        .forward_config()
        .and_then(ForwardActionConfig::target_group_stickiness_config)
        .filter(|s| s.enabled() == Some(true))
        .and_then(|s| s.duration_seconds())
        .and_then(|d| u32::try_from(d).ok());
    Ok(Route { target_groups, stickiness_seconds })
}

/// Builds the forward action for a route: a weighted forward config on an ALB, a single target group on an NLB.
fn action_of(route: &RouteRef, to: &Route) -> Result<Action> {
    let builder = Action::builder().r#type(ActionTypeEnum::Forward);
    let builder = match (route.style(), to.target_groups.as_slice()) {
        (crate::domain::RouteStyle::Single, [only]) => builder.target_group_arn(&only.target_group),
        (crate::domain::RouteStyle::Single, _) => {
            return Err(Error::Invariant(format!("an NLB listener forwards to one target group, not {to}")));
        }
        (crate::domain::RouteStyle::Weighted, _) => {
            let tuples = to
                .target_groups
                .iter()
                .map(|w| {
                    TargetGroupTuple::builder()
                        .target_group_arn(&w.target_group)
                        .weight(w.weight.min(999) as i32)
                        .build()
                })
                .collect();
            let stickiness = to
                .stickiness_seconds
                .map(|d| TargetGroupStickinessConfig::builder().enabled(true).duration_seconds(d as i32).build());
            builder.forward_config(
                ForwardActionConfig::builder()
                    .set_target_groups(Some(tuples))
                    .set_target_group_stickiness_config(stickiness)
                    .build(),
            )
        }
    };
    Ok(builder.build())
}

fn description(t: &Target) -> TargetDescription {
    TargetDescription::builder()
        .id(t.key.ip.to_string())
        .port(i32::from(t.key.port))
        .set_availability_zone(t.availability_zone.clone())
        .build()
}

impl LoadBalancers for Elb {
    async fn target_groups(&self, arns: &[&str]) -> Result<Vec<TargetGroupFacts>> {
        let out = self
            .client
            .describe_target_groups()
            .set_target_group_arns(Some(arns.iter().map(|a| (*a).to_string()).collect()))
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "DescribeTargetGroups", e))?;
        Ok(out
            .target_groups()
            .iter()
            .map(|g| TargetGroupFacts {
                arn: g.target_group_arn().unwrap_or_default().to_string(),
                name: g.target_group_name().unwrap_or_default().to_string(),
                target_type: g.target_type().map_or("instance", |t| t.as_str()).to_string(),
                protocol: g.protocol().map(|p| p.as_str().to_string()),
                port: g.port().and_then(|p| u16::try_from(p).ok()),
                load_balancers: g.load_balancer_arns().to_vec(),
                health_check_path: g.health_check_path().map(str::to_string),
            })
            .collect())
    }

    async fn targets(&self, target_group: &str) -> Result<Vec<ObservedTarget>> {
        let out = self
            .client
            .describe_target_health()
            .target_group_arn(target_group)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "DescribeTargetHealth", e))?;
        out.target_health_descriptions()
            .iter()
            .filter_map(|d| {
                let t = d.target()?;
                let key = TargetKey::parse(t.id()?, t.port())
                    .map_err(|e| Error::Misconfigured(format!("{target_group}: {e}")));
                let health = d.target_health();
                Some(key.map(|key| ObservedTarget {
                    target: Target { key, availability_zone: t.availability_zone().map(str::to_string) },
                    health:
                        health.and_then(|h| h.state()).map_or(HealthState::Unknown, |s| HealthState::parse(s.as_str())),
                    reason: health.and_then(|h| {
                        let code = h.reason().map(|r| r.as_str().to_string());
                        match (code, h.description()) {
                            (Some(c), Some(d)) => Some(format!("{c}: {d}")),
                            (c, d) => c.or_else(|| d.map(str::to_string)),
                        }
                    }),
                }))
            })
            .collect()
    }

    async fn register(&self, target_group: &str, targets: &[Target]) -> Result<()> {
        let descriptions = targets.iter().map(description).collect();
        self.client
            .register_targets()
            .target_group_arn(target_group)
            .set_targets(Some(descriptions))
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "RegisterTargets", e))?;
        Ok(())
    }

    async fn deregister(&self, target_group: &str, targets: &[TargetKey]) -> Result<()> {
        let descriptions = targets.iter().map(|k| description(&Target { key: *k, availability_zone: None })).collect();
        self.client
            .deregister_targets()
            .target_group_arn(target_group)
            .set_targets(Some(descriptions))
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "DeregisterTargets", e))?;
        Ok(())
    }

    async fn route(&self, route: &RouteRef) -> Result<Route> {
        let actions = self.actions(route).await?;
        route_of(route, &actions)
    }

    async fn set_route(&self, route: &RouteRef, to: &Route) -> Result<()> {
        let action = action_of(route, to)?;
        match route {
            RouteRef::Listener(arn) => {
                self.client
                    .modify_listener()
                    .listener_arn(arn)
                    .default_actions(action)
                    .send()
                    .await
                    .map_err(|e| aws_error(SERVICE, "ModifyListener", e))?;
            }
            RouteRef::Rule(arn) => {
                self.client
                    .modify_rule()
                    .rule_arn(arn)
                    .actions(action)
                    .send()
                    .await
                    .map_err(|e| aws_error(SERVICE, "ModifyRule", e))?;
            }
        }
        Ok(())
    }
}
