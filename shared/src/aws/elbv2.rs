//! Elastic Load Balancing v2 adapter: target groups, targets and the forward action of listeners and rules.

use aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::DescribeTargetHealthOutput;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, ForwardActionConfig, TargetDescription, TargetGroupStickinessConfig, TargetGroupTuple,
};
use aws_sdk_elasticloadbalancingv2::Client;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::errors::aws_error;
use crate::config::RouteRef;
use crate::domain::{
    HealthCheck, HealthState, ObservedTarget, Route, Target, TargetKey, TokenBucket, WeightedTargetGroup, ARNS_PER_CALL,
};
use crate::ports::{LoadBalancers, TargetGroupFacts};
use crate::{Error, Result};

mod budget;

pub use budget::ReadBurst;
use budget::{SharedReads, READ};

const SERVICE: &str = "elasticloadbalancing";

/// [`LoadBalancers`] over the ELBv2 API.
#[derive(Debug, Clone)]
pub struct Elb {
    client: Client,
    /// The same client for `Describe*` calls, with the SDK's retries cut to [`READ`]'s: throttled reads
    /// are paused and tried again by [`Elb::read`], not retried at once.
    reader: Client,
    /// The process's read bucket, when its reads outside the read lane are paced.
    reads: Option<Arc<Mutex<TokenBucket>>>,
    /// Until when the process reads nothing, after ELB throttled one of its reads.
    held: Arc<Mutex<Option<Instant>>>,
    /// The installation's read lane, when this process's reads can wait in it.
    lane: Option<Arc<SharedReads>>,
    /// Where the time waited in the lane is counted, for the invocation's metrics.
    spend: Option<super::ElbCounter>,
    origin: Instant,
    /// Reads go at once ([`LoadBalancers::at_once`]): one call, retried by the SDK alone.
    at_once: bool,
    /// The process's read rate, when an invocation asks for none of its own ([`crate::reads::pace_at`]).
    read_rate: f64,
}

impl Elb {
    pub fn new(client: Client) -> Self {
        let conf = client.config();
        let retry = conf.retry_config().cloned().unwrap_or_else(RetryConfig::standard);
        let reader =
            Client::from_conf(conf.to_builder().retry_config(retry.with_max_attempts(READ.sdk_attempts)).build());
        Self {
            client,
            reader,
            reads: None,
            held: Arc::default(),
            lane: None,
            spend: None,
            origin: Instant::now(),
            at_once: false,
            read_rate: 0.0,
        }
    }

    /// One DeregisterTargets call. `Ok(false)`: ELB refused the batch for a target it no longer has, when that is
    /// `tolerated`; otherwise the refusal is the error.
    async fn deregister_once(&self, target_group: &str, targets: &[TargetKey], tolerated: bool) -> Result<bool> {
        let descriptions = targets.iter().map(|k| description(&Target { key: *k, availability_zone: None })).collect();
        match self
            .client
            .deregister_targets()
            .target_group_arn(target_group)
            .set_targets(Some(descriptions))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if tolerated && e.as_service_error().is_some_and(|se| se.is_invalid_target_exception()) => Ok(false),
            Err(e) => Err(aws_error(SERVICE, "DeregisterTargets", target_group, e)),
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

async fn describe_target_health(client: &Client, target_group: &str) -> Result<DescribeTargetHealthOutput> {
    client
        .describe_target_health()
        .target_group_arn(target_group)
        .send()
        .await
        .map_err(|e| aws_error(SERVICE, "DescribeTargetHealth", "*", e))
}

fn observed_targets(target_group: &str, out: DescribeTargetHealthOutput) -> Result<Vec<ObservedTarget>> {
    out.target_health_descriptions()
        .iter()
        .filter_map(|d| {
            let t = d.target()?;
            let key =
                TargetKey::parse(t.id()?, t.port()).map_err(|e| Error::Misconfigured(format!("{target_group}: {e}")));
            let health = d.target_health();
            Some(key.map(|key| ObservedTarget {
                target: Target { key, availability_zone: t.availability_zone().map(str::to_string) },
                health: health.and_then(|h| h.state()).map_or(HealthState::Unknown, |s| HealthState::parse(s.as_str())),
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

impl Elb {
    /// One `Describe*` action over `arns`, [`ARNS_PER_CALL`] to a call, one call after the other (a sweep's read
    /// of many bindings is not a burst), each call a read at this process's pace; what every call found, in order.
    async fn in_chunks<T, F, Fut>(&self, arns: &[String], call: F) -> Result<Vec<T>>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let mut out = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(ARNS_PER_CALL) {
            out.extend(self.read(|| call(chunk.to_vec())).await?);
        }
        Ok(out)
    }
}

impl LoadBalancers for Elb {
    fn at_once(&self) -> Self {
        self.budget_at_once()
    }

    async fn target_groups(&self, arns: &[&str]) -> Result<Vec<TargetGroupFacts>> {
        let arns: Vec<String> = arns.iter().map(|a| (*a).to_string()).collect();
        self.in_chunks(&arns, |chunk| async move {
            let out = self
                .reader
                .describe_target_groups()
                .set_target_group_arns(Some(chunk))
                .send()
                .await
                .map_err(|e| aws_error(SERVICE, "DescribeTargetGroups", "*", e))?;
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
                    health_check: HealthCheck {
                        protocol: g.health_check_protocol().map(|p| p.as_str().to_string()),
                        port: g.health_check_port().map(str::to_string),
                        path: g.health_check_path().map(str::to_string),
                    },
                })
                .collect())
        })
        .await
    }

    async fn targets(&self, target_group: &str) -> Result<Vec<ObservedTarget>> {
        observed_targets(target_group, self.read(|| describe_target_health(&self.reader, target_group)).await?)
    }

    async fn register(&self, target_group: &str, targets: &[Target]) -> Result<()> {
        self.write(|| async {
            let descriptions = targets.iter().map(description).collect();
            self.client
                .register_targets()
                .target_group_arn(target_group)
                .set_targets(Some(descriptions))
                .send()
                .await
                .map_err(|e| aws_error(SERVICE, "RegisterTargets", target_group, e))?;
            Ok(())
        })
        .await
    }

    async fn deregister(&self, target_group: &str, targets: &[TargetKey]) -> Result<()> {
        if self.write(|| self.deregister_once(target_group, targets, true)).await? {
            return Ok(());
        }
        // Another writer (a concurrent reconcile, a retried hook) deregistered some of these first, and ELB refuses
        // the whole batch for one target it no longer has. What the caller wants, those targets gone, may already
        // hold: deregister what is still registered, once. The read between is paced as any read, not retried as
        // part of the write.
        let still: Vec<TargetKey> = self
            .targets(target_group)
            .await?
            .into_iter()
            .filter(|t| t.health != HealthState::Draining && targets.contains(&t.target.key))
            .map(|t| t.target.key)
            .collect();
        if !still.is_empty() {
            self.write(|| self.deregister_once(target_group, &still, false)).await?;
        }
        Ok(())
    }

    async fn route(&self, route: &RouteRef) -> Result<Route> {
        let mut one = self.routes(std::slice::from_ref(route)).await?;
        one.pop().ok_or_else(|| Error::Misconfigured(format!("{route} does not exist")))
    }

    async fn routes(&self, routes: &[RouteRef]) -> Result<Vec<Route>> {
        let mut listeners: Vec<String> = Vec::new();
        let mut rules: Vec<String> = Vec::new();
        for r in routes {
            let (list, arn) = match r {
                RouteRef::Listener(a) => (&mut listeners, a),
                RouteRef::Rule(a) => (&mut rules, a),
            };
            if !list.contains(arn) {
                list.push(arn.clone());
            }
        }
        let listeners_read = self.in_chunks(&listeners, |chunk| async move {
            let out = self
                .reader
                .describe_listeners()
                .set_listener_arns(Some(chunk))
                .send()
                .await
                .map_err(|e| aws_error(SERVICE, "DescribeListeners", "*", e))?;
            Ok(out
                .listeners()
                .iter()
                .map(|l| (l.listener_arn().unwrap_or_default().to_string(), l.default_actions().to_vec()))
                .collect())
        });
        let rules_read = self.in_chunks(&rules, |chunk| async move {
            let out = self
                .reader
                .describe_rules()
                .set_rule_arns(Some(chunk))
                .send()
                .await
                .map_err(|e| aws_error(SERVICE, "DescribeRules", "*", e))?;
            Ok(out
                .rules()
                .iter()
                .map(|r| (r.rule_arn().unwrap_or_default().to_string(), r.actions().to_vec()))
                .collect())
        });
        let (found_listeners, found_rules) = tokio::join!(listeners_read, rules_read);
        let found: std::collections::HashMap<String, Vec<Action>> =
            found_listeners?.into_iter().chain(found_rules?).collect();
        routes
            .iter()
            .map(|r| {
                let actions = found.get(r.arn()).ok_or_else(|| Error::Misconfigured(format!("{r} does not exist")))?;
                route_of(r, actions)
            })
            .collect()
    }

    async fn set_route(&self, route: &RouteRef, to: &Route) -> Result<()> {
        let action = action_of(route, to)?;
        self.write(|| async {
            match route {
                RouteRef::Listener(arn) => {
                    self.client
                        .modify_listener()
                        .listener_arn(arn)
                        .default_actions(action.clone())
                        .send()
                        .await
                        .map_err(|e| aws_error(SERVICE, "ModifyListener", arn, e))?;
                }
                RouteRef::Rule(arn) => {
                    self.client
                        .modify_rule()
                        .rule_arn(arn)
                        .actions(action.clone())
                        .send()
                        .await
                        .map_err(|e| aws_error(SERVICE, "ModifyRule", arn, e))?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn deregistration_delays(&self, arns: &[&str]) -> Result<BTreeMap<String, Duration>> {
        let mut out = BTreeMap::new();
        for arn in arns {
            let resp = self
                .read(|| async {
                    self.reader
                        .describe_target_group_attributes()
                        .target_group_arn(*arn)
                        .send()
                        .await
                        .map_err(|e| aws_error(SERVICE, "DescribeTargetGroupAttributes", arn, e))
                })
                .await?;
            let seconds = resp
                .attributes()
                .iter()
                .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
                .and_then(|a| a.value()?.parse().ok())
                // ELB's default, for a group that does not say.
                .unwrap_or(300);
            out.insert((*arn).to_string(), Duration::from_secs(seconds));
        }
        Ok(out)
    }

    async fn tags(&self, arns: &[&str]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let mut out = BTreeMap::new();
        // DescribeTags takes at most 20 resources a call.
        for chunk in arns.chunks(20) {
            let resources: Vec<String> = chunk.iter().map(|a| (*a).to_string()).collect();
            let resp = self
                .read(|| async {
                    self.reader
                        .describe_tags()
                        .set_resource_arns(Some(resources.clone()))
                        .send()
                        .await
                        .map_err(|e| aws_error(SERVICE, "DescribeTags", &chunk.join(", "), e))
                })
                .await?;
            for d in resp.tag_descriptions() {
                let tags =
                    d.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string()))).collect();
                out.insert(d.resource_arn().unwrap_or_default().to_string(), tags);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::LaneMode;
    use crate::reads::{self, ReadPolicy};
    use aws_sdk_elasticloadbalancingv2::error::ErrorMetadata;
    use aws_sdk_elasticloadbalancingv2::operation::deregister_targets::{
        DeregisterTargetsError, DeregisterTargetsOutput,
    };
    use aws_sdk_elasticloadbalancingv2::operation::describe_listeners::DescribeListenersOutput;
    use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::{
        DescribeTargetHealthError, DescribeTargetHealthOutput,
    };
    use aws_sdk_elasticloadbalancingv2::operation::modify_listener::ModifyListenerOutput;
    use aws_sdk_elasticloadbalancingv2::operation::modify_rule::ModifyRuleOutput;
    use aws_sdk_elasticloadbalancingv2::operation::register_targets::{RegisterTargetsError, RegisterTargetsOutput};
    use aws_sdk_elasticloadbalancingv2::types::error::{InvalidTargetException, TargetGroupNotFoundException};
    use aws_sdk_elasticloadbalancingv2::types::{
        Listener, TargetHealth, TargetHealthDescription, TargetHealthReasonEnum, TargetHealthStateEnum,
    };
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    use super::budget::WRITE;
    use super::*;
    use crate::clock::now_ms;
    use crate::domain::LANE_GRANT_TTL;
    use crate::AwsErrorKind;

    const ALB_LISTENER: &str = "arn:aws:elasticloadbalancing:eu-west-1:1:listener/app/private/9/80";
    const NLB_LISTENER: &str = "arn:aws:elasticloadbalancing:eu-west-1:1:listener/net/private/9/80";
    const RULE: &str = "arn:aws:elasticloadbalancing:eu-west-1:1:listener-rule/app/private/9/80/7";
    const TG_A: &str = "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/a/1";
    const TG_B: &str = "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/b/2";

    fn target(ip: &str) -> Target {
        Target { key: TargetKey::parse(ip, Some(8080)).unwrap(), availability_zone: None }
    }

    #[tokio::test]
    async fn register_sends_the_batch_as_given() {
        let rule = mock!(Client::register_targets)
            .match_requests(|r| {
                r.target_group_arn() == Some(TG_A)
                    && r.targets().len() == 2
                    && r.targets()[0].id() == Some("10.0.0.1")
                    && r.targets()[0].port() == Some(8080)
                    && r.targets()[1].availability_zone() == Some("all")
            })
            .then_output(|| RegisterTargetsOutput::builder().build());
        let elb = Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, [&rule]));
        let mut outside = target("192.168.0.9");
        outside.availability_zone = Some("all".into());
        elb.register(TG_A, &[target("10.0.0.1"), outside]).await.unwrap();
        assert_eq!(rule.num_calls(), 1);
    }

    #[tokio::test]
    async fn deregistering_targets_another_writer_removed_first_is_not_an_error() {
        let refused = mock!(Client::deregister_targets).match_requests(|r| r.targets().len() == 3).then_error(|| {
            DeregisterTargetsError::InvalidTargetException(
                InvalidTargetException::builder()
                    .message("The specified target does not exist")
                    .meta(ErrorMetadata::builder().code("InvalidTarget").build())
                    .build(),
            )
        });
        let health = mock!(Client::describe_target_health).then_output(|| {
            let d = |id: &str, state| {
                TargetHealthDescription::builder()
                    .target(TargetDescription::builder().id(id).port(8080).build())
                    .target_health(TargetHealth::builder().state(state).build())
                    .build()
            };
            DescribeTargetHealthOutput::builder()
                .target_health_descriptions(d("10.0.0.1", TargetHealthStateEnum::Healthy))
                .target_health_descriptions(d("10.0.0.2", TargetHealthStateEnum::Draining))
                .target_health_descriptions(d("10.0.0.9", TargetHealthStateEnum::Healthy))
                .build()
        });
        let rest = mock!(Client::deregister_targets)
            .match_requests(|r| r.targets().len() == 1 && r.targets()[0].id() == Some("10.0.0.1"))
            .then_output(|| DeregisterTargetsOutput::builder().build());
        let elb =
            Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::MatchAny, [&refused, &health, &rest]));
        let gone = [target("10.0.0.1").key, target("10.0.0.2").key, target("10.0.0.3").key];
        elb.deregister(TG_A, &gone).await.unwrap();
        // Only the one still registered (not draining, and asked for) is deregistered again.
        assert_eq!((refused.num_calls(), health.num_calls(), rest.num_calls()), (1, 1, 1));
    }

    #[tokio::test]
    async fn target_health_is_read_with_states_and_reasons() {
        let rule = mock!(Client::describe_target_health).then_output(|| {
            let d = |id: &str, state, reason: Option<TargetHealthReasonEnum>| {
                TargetHealthDescription::builder()
                    .target(TargetDescription::builder().id(id).port(8080).build())
                    .target_health(
                        TargetHealth::builder()
                            .state(state)
                            .set_reason(reason)
                            .description("Health checks failed")
                            .build(),
                    )
                    .build()
            };
            DescribeTargetHealthOutput::builder()
                .target_health_descriptions(d("10.0.0.1", TargetHealthStateEnum::Healthy, None))
                .target_health_descriptions(d(
                    "10.0.0.2",
                    TargetHealthStateEnum::Unhealthy,
                    Some(TargetHealthReasonEnum::Timeout),
                ))
                .target_health_descriptions(d("10.0.0.3", TargetHealthStateEnum::Draining, None))
                .build()
        });
        let elb = Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, [&rule]));
        let got = elb.targets(TG_A).await.unwrap();
        let states: Vec<(String, HealthState)> = got.iter().map(|t| (t.key().to_string(), t.health)).collect();
        assert_eq!(
            states,
            vec![
                ("10.0.0.1:8080".into(), HealthState::Healthy),
                ("10.0.0.2:8080".into(), HealthState::Unhealthy),
                ("10.0.0.3:8080".into(), HealthState::Draining),
            ]
        );
        assert_eq!(got[1].reason.as_deref(), Some("Target.Timeout: Health checks failed"));
    }

    #[tokio::test]
    async fn instance_targets_are_refused() {
        let rule = mock!(Client::describe_target_health).then_output(|| {
            DescribeTargetHealthOutput::builder()
                .target_health_descriptions(
                    TargetHealthDescription::builder()
                        .target(TargetDescription::builder().id("i-0abc").port(80).build())
                        .build(),
                )
                .build()
        });
        let elb = Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, [&rule]));
        let err = elb.targets(TG_A).await.unwrap_err().to_string();
        assert!(err.contains("not an IP address"), "{err}");
    }

    #[tokio::test]
    async fn many_arns_are_read_twenty_to_a_call_one_call_after_the_other() {
        use aws_sdk_elasticloadbalancingv2::operation::describe_rules::DescribeRulesOutput;
        use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::DescribeTargetGroupsOutput;
        use aws_sdk_elasticloadbalancingv2::types::{Rule, TargetGroup, TargetTypeEnum};
        let forward = || Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(TG_A).build();
        let groups = mock!(Client::describe_target_groups)
            .match_requests(|r| r.target_group_arns().len() <= ARNS_PER_CALL)
            .then_compute_output(|r| {
                let each = r.target_group_arns().iter().map(|a| {
                    TargetGroup::builder().target_group_arn(a).target_type(TargetTypeEnum::Ip).port(8080).build()
                });
                DescribeTargetGroupsOutput::builder().set_target_groups(Some(each.collect())).build()
            });
        let listeners = mock!(Client::describe_listeners)
            .match_requests(|r| r.listener_arns().len() <= ARNS_PER_CALL)
            .then_compute_output(move |r| {
                let each = r
                    .listener_arns()
                    .iter()
                    .map(|a| Listener::builder().listener_arn(a).default_actions(forward()).build());
                DescribeListenersOutput::builder().set_listeners(Some(each.collect())).build()
            });
        let rules = mock!(Client::describe_rules)
            .match_requests(|r| r.rule_arns().len() <= ARNS_PER_CALL)
            .then_compute_output(move |r| {
                let each = r.rule_arns().iter().map(|a| Rule::builder().rule_arn(a).actions(forward()).build());
                DescribeRulesOutput::builder().set_rules(Some(each.collect())).build()
            });
        let elb =
            Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::MatchAny, [&groups, &listeners, &rules]));
        let arns: Vec<String> = (0..45).map(|i| format!("{TG_A}{i}")).collect();
        let got = elb.target_groups(&arns.iter().map(String::as_str).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(got.iter().map(|g| g.arn.clone()).collect::<Vec<_>>(), arns);
        assert_eq!(groups.num_calls(), 3);
        let routes: Vec<RouteRef> = (0..25)
            .map(|i| RouteRef::Listener(format!("{ALB_LISTENER}{i}")))
            .chain((0..3).map(|i| RouteRef::Rule(format!("{RULE}{i}"))))
            .collect();
        let read = elb.routes(&routes).await.unwrap();
        assert_eq!(read.len(), 28);
        assert!(read.iter().all(|r| r.weight(TG_A) == Some(100) || r.live() == vec![TG_A]), "{read:?}");
        assert_eq!((listeners.num_calls(), rules.num_calls()), (2, 1));
    }

    fn listener_with(action: Action) -> DescribeListenersOutput {
        DescribeListenersOutput::builder()
            .listeners(Listener::builder().listener_arn(ALB_LISTENER).default_actions(action).build())
            .build()
    }

    #[tokio::test]
    async fn routes_are_read_with_weights_stickiness_or_a_single_group() {
        let weighted = mock!(Client::describe_listeners).then_output(|| {
            listener_with(
                Action::builder()
                    .r#type(ActionTypeEnum::Forward)
                    .forward_config(
                        ForwardActionConfig::builder()
                            .target_groups(TargetGroupTuple::builder().target_group_arn(TG_A).weight(90).build())
                            .target_groups(TargetGroupTuple::builder().target_group_arn(TG_B).weight(10).build())
                            .target_group_stickiness_config(
                                TargetGroupStickinessConfig::builder().enabled(true).duration_seconds(300).build(),
                            )
                            .build(),
                    )
                    .build(),
            )
        });
        let single = mock!(Client::describe_listeners).then_output(|| {
            listener_with(Action::builder().r#type(ActionTypeEnum::Forward).target_group_arn(TG_B).build())
        });
        let fixed = mock!(Client::describe_listeners)
            .then_output(|| listener_with(Action::builder().r#type(ActionTypeEnum::FixedResponse).build()));
        let elb =
            Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::Sequential, [&weighted, &single, &fixed]));
        let l = RouteRef::Listener(ALB_LISTENER.into());
        let r = elb.route(&l).await.unwrap();
        assert_eq!((r.weight(TG_A), r.weight(TG_B), r.stickiness_seconds), (Some(90), Some(10), Some(300)));
        let r = elb.route(&l).await.unwrap();
        assert_eq!(r.live(), vec![TG_B]);
        let err = elb.route(&l).await.unwrap_err();
        assert!(matches!(err, Error::Misconfigured(ref m) if m.contains("does not forward")), "{err}");
    }

    #[tokio::test]
    async fn set_route_writes_a_weighted_forward_on_an_alb_and_a_single_group_on_an_nlb() {
        let alb = mock!(Client::modify_listener)
            .match_requests(|r| {
                let a = &r.default_actions()[0];
                let Some(f) = a.forward_config() else { return false };
                r.listener_arn() == Some(ALB_LISTENER)
                    && a.r#type() == Some(&ActionTypeEnum::Forward)
                    && f.target_groups().len() == 2
                    && f.target_groups()[0].weight() == Some(100)
                    && f.target_groups()[1].weight() == Some(0)
                    && f.target_group_stickiness_config().and_then(|s| s.duration_seconds()) == Some(60)
            })
            .then_output(|| ModifyListenerOutput::builder().build());
        let nlb = mock!(Client::modify_listener)
            .match_requests(|r| {
                let a = &r.default_actions()[0];
                r.listener_arn() == Some(NLB_LISTENER)
                    && a.target_group_arn() == Some(TG_B)
                    && a.forward_config().is_none()
            })
            .then_output(|| ModifyListenerOutput::builder().build());
        let rule = mock!(Client::modify_rule)
            .match_requests(|r| r.rule_arn() == Some(RULE) && r.actions()[0].forward_config().is_some())
            .then_output(|| ModifyRuleOutput::builder().build());
        let elb = Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::MatchAny, [&alb, &nlb, &rule]));
        let mut to = Route::all_to(TG_A, &[TG_B], crate::domain::RouteStyle::Weighted);
        to.stickiness_seconds = Some(60);
        elb.set_route(&RouteRef::Listener(ALB_LISTENER.into()), &to).await.unwrap();
        let single = Route::all_to(TG_B, &[], crate::domain::RouteStyle::Single);
        elb.set_route(&RouteRef::Listener(NLB_LISTENER.into()), &single).await.unwrap();
        elb.set_route(&RouteRef::Rule(RULE.into()), &to).await.unwrap();
        assert_eq!((alb.num_calls(), nlb.num_calls(), rule.num_calls()), (1, 1, 1));
        // Two groups can never be written to an NLB listener.
        let err = elb.set_route(&RouteRef::Listener(NLB_LISTENER.into()), &to).await.unwrap_err();
        assert!(matches!(err, Error::Invariant(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_classified() {
        let missing = mock!(Client::describe_target_health).then_error(|| {
            DescribeTargetHealthError::TargetGroupNotFoundException(
                TargetGroupNotFoundException::builder()
                    .message("One or more target groups not found")
                    .meta(ErrorMetadata::builder().code("TargetGroupNotFound").build())
                    .build(),
            )
        });
        let denied = mock!(Client::describe_target_health).then_error(|| {
            DescribeTargetHealthError::generic(ErrorMetadata::builder().code("AccessDenied").message("no").build())
        });
        let register_denied = mock!(Client::register_targets).then_error(|| {
            RegisterTargetsError::generic(ErrorMetadata::builder().code("AccessDenied").message("no").build())
        });
        let elb = Elb::new(mock_client!(
            aws_sdk_elasticloadbalancingv2,
            RuleMode::Sequential,
            [&missing, &denied, &register_denied, &throttled()]
        ));
        let e = elb.targets(TG_A).await.unwrap_err();
        assert_eq!(e.aws_kind(), Some(AwsErrorKind::NotFound));
        let e = elb.targets(TG_A).await.unwrap_err();
        assert_eq!(e.aws_kind(), Some(AwsErrorKind::AccessDenied));
        assert!(e.to_string().contains("grant elasticloadbalancing:DescribeTargetHealth on *"), "{e}");
        let e = elb.register(TG_A, &[target("10.0.0.1")]).await.unwrap_err();
        let chain = crate::harness::error_chain(&e);
        assert!(chain.contains(&format!("grant elasticloadbalancing:RegisterTargets on {TG_A} to")), "{chain}");
        assert!(!chain.contains("Error {"), "the SDK's Debug form stays out of the message: {chain}");
        let e = elb.targets(TG_A).await.unwrap_err();
        assert_eq!(e.aws_kind(), Some(AwsErrorKind::Throttled));
        assert!(e.is_transient());
        assert!(std::error::Error::source(&e).is_some(), "the SDK error is kept as the source");
    }

    /// A mock client with the production SDK retry, so that the paused clock's figures are the ones the
    /// functions see: the mocks' default is the SDK's 1 s backoff.
    fn production_retry(client: Client) -> Client {
        Client::from_conf(client.config().to_builder().retry_config(super::super::retry_config()).build())
    }

    /// Throttling, every time it is asked, as many times as it is asked.
    fn throttled() -> aws_smithy_mocks::Rule {
        mock!(Client::describe_target_health)
            .sequence()
            .error(|| {
                DescribeTargetHealthError::generic(
                    ErrorMetadata::builder().code("Throttling").message("Rate exceeded").build(),
                )
            })
            .repeatedly()
            .build()
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_read_pauses_the_process_and_is_tried_again_a_few_times_then_fails() {
        let throttled = throttled();
        let elb = Elb::new(production_retry(mock_client!(
            aws_sdk_elasticloadbalancingv2,
            RuleMode::Sequential,
            [&throttled]
        )))
        .with_paced_reads(2.0, ReadBurst::Reconcile);
        let started = tokio::time::Instant::now();
        let e = elb.targets(TG_A).await.unwrap_err();
        assert_eq!(e.aws_kind(), Some(AwsErrorKind::Throttled));
        // The SDK's quick retry, then four pauses of 1, 2, 4 and 8 s (each jittered to half or more).
        let calls = throttled.num_calls();
        assert_eq!(calls, (READ.throttle_pauses as usize + 1) * READ.sdk_attempts as usize);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(7_500) && waited <= Duration::from_secs(17), "{waited:?}");
        // The process's next read waits out the last pause too instead of going straight to a throttled account.
        let next = tokio::time::Instant::now();
        let _ = elb.targets(TG_A).await;
        assert!(next.elapsed() >= Duration::from_millis(300), "{:?}", next.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_throttled_through_the_sdks_retry_pauses_and_is_tried_again_then_fails() {
        use aws_sdk_elasticloadbalancingv2::operation::modify_rule::ModifyRuleError;
        let throttled =
            || ModifyRuleError::generic(ErrorMetadata::builder().code("Throttling").message("Rate exceeded").build());
        let attempts = crate::aws::MAX_ATTEMPTS as usize;
        let to = Route::all_to(TG_A, &[TG_B], crate::domain::RouteStyle::Weighted);
        // Throttled for one attempt more than the SDK's retry makes: the write pauses once and goes through.
        let passes = mock!(Client::modify_rule)
            .sequence()
            .error(throttled)
            .times(attempts + 1)
            .output(|| ModifyRuleOutput::builder().build())
            .build();
        let elb =
            Elb::new(production_retry(mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::Sequential, [&passes])));
        let started = tokio::time::Instant::now();
        elb.set_route(&RouteRef::Rule(RULE.into()), &to).await.unwrap();
        assert_eq!(passes.num_calls(), attempts + 2);
        assert!(started.elapsed() >= Duration::from_millis(500), "paused: {:?}", started.elapsed());
        // Throttled throughout: each pause (1, then 2 s, jittered) is followed by the SDK's retry, then it fails.
        let never = mock!(Client::modify_rule).sequence().error(throttled).repeatedly().build();
        let elb =
            Elb::new(production_retry(mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::Sequential, [&never])));
        let started = tokio::time::Instant::now();
        let e = elb.set_route(&RouteRef::Rule(RULE.into()), &to).await.unwrap_err();
        assert_eq!(e.aws_kind(), Some(AwsErrorKind::Throttled));
        assert_eq!(never.num_calls(), (WRITE.throttle_pauses as usize + 1) * attempts);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1_500) && waited <= Duration::from_secs(20), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_failing_with_5xx_is_tried_again_at_once_as_often_as_a_write() {
        let rule = mock!(Client::describe_target_health)
            .sequence()
            .http_status(503, None)
            .times(5)
            .output(|| DescribeTargetHealthOutput::builder().build())
            .build();
        let elb =
            Elb::new(production_retry(mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::Sequential, [&rule])))
                .with_paced_reads(2.0, ReadBurst::Reconcile);
        let started = tokio::time::Instant::now();
        assert!(elb.targets(TG_A).await.unwrap().is_empty());
        assert_eq!(rule.num_calls(), 6);
        // Three rounds of two attempts: the SDK's backoff (at most 100 ms once per round) and ours (100, 200 ms)
        // add up to 600 ms at most on the paused clock; a throttling pause alone would be 500 ms more.
        assert!(started.elapsed() <= Duration::from_millis(600), "no throttling pause: {:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_at_once_is_not_paced_queued_or_held_and_retries_throttling_as_a_write_does() {
        let throttled = || {
            DescribeTargetHealthError::generic(
                ErrorMetadata::builder().code("Throttling").message("Rate exceeded").build(),
            )
        };
        let rule = mock!(Client::describe_target_health)
            .sequence()
            .error(throttled)
            .times(3)
            .output(|| DescribeTargetHealthOutput::builder().build())
            .build();
        let (busy, _, laned) = in_a_busy_lane();
        let elb = Elb {
            client: production_retry(mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::Sequential, [&rule])),
            ..laned
        }
        .with_paced_reads(2.0, ReadBurst::Hook);
        // The process's reads are held for 8 s, as after a throttled read, and the lane is 8 s ahead.
        *elb.held.lock().unwrap() = Some(tokio::time::Instant::now() + Duration::from_secs(8));
        let started = tokio::time::Instant::now();
        assert!(elb.at_once().targets(TG_A).await.unwrap().is_empty());
        assert_eq!(rule.num_calls(), 4, "three throttled attempts retried within the SDK's retry");
        assert_eq!(busy.num_calls(), 0, "no turn asked of the lane");
        // The SDK's backoff alone (100, 200, 400 ms at most); the hold would have been 8 s.
        assert!(started.elapsed() <= Duration::from_millis(700), "{:?}", started.elapsed());
    }

    /// An adapter whose lane other processes keep reserved 8 s ahead of now at every reservation: past its burst
    /// (5 s at 2 a second), a turn 3 s away. Every target health read answers empty. With the lane's reservations
    /// and the reads, to count them.
    fn in_a_busy_lane() -> (aws_smithy_mocks::Rule, aws_smithy_mocks::Rule, Elb) {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
        use aws_sdk_dynamodb::types::AttributeValue;
        let busy = mock!(aws_sdk_dynamodb::Client::update_item)
            .sequence()
            .output(move || {
                let tat = AttributeValue::N((now_ms() + 8_000).to_string());
                UpdateItemOutput::builder().attributes("tat_ms", tat).build()
            })
            .repeatedly()
            .build();
        let health = mock!(Client::describe_target_health)
            .sequence()
            .output(|| DescribeTargetHealthOutput::builder().build())
            .repeatedly()
            .build();
        let lane = crate::aws::DynamoState::new(mock_client!(aws_sdk_dynamodb, [&busy]), "state".into())
            .read_lane(crate::domain::Lane::new(2.0, 10.0));
        let elb = Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, [&health])).with_lane(lane);
        (busy, health, elb)
    }

    #[tokio::test(start_paused = true)]
    async fn reads_issued_together_take_one_turn_in_the_lane_and_wait_for_it_unless_only_counted() {
        let (busy, health, elb) = in_a_busy_lane();

        let started = tokio::time::Instant::now();
        let reads = futures_util::future::join_all((0..5).map(|_| elb.targets(TG_A))).await;
        assert!(reads.iter().all(Result::is_ok));
        assert_eq!((busy.num_calls(), health.num_calls()), (1, 5), "five reads issued together, one reservation");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(2_900) && waited <= Duration::from_millis(3_100), "{waited:?}");

        // Counted, not waited for: a rollback followed goes at once, and its reads push the waiting ones back.
        tokio::time::advance(LANE_GRANT_TTL * 2).await;
        let started = tokio::time::Instant::now();
        reads::under(ReadPolicy::new(LaneMode::Count, None), elb.targets(TG_A)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(busy.num_calls(), 2);

        // Outside the lane (a follower): no reservation at all.
        tokio::time::advance(LANE_GRANT_TTL * 2).await;
        reads::under(ReadPolicy::new(LaneMode::Outside, None), elb.targets(TG_A)).await.unwrap();
        assert_eq!((busy.num_calls(), health.num_calls()), (2, 7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_keeps_one_pace_the_lanes_when_it_waits_there_and_the_processs_otherwise() {
        let (busy, health, laned) = in_a_busy_lane();
        // A process bucket of a burst of 5 refilled at 0.15 a second: ten reads through it take over 30 s.
        let elb = &laned.with_paced_reads(0.1, ReadBurst::Hook);
        let ten = || futures_util::future::join_all((0..10).map(|_| elb.targets(TG_A)));
        let started = tokio::time::Instant::now();
        reads::under(ReadPolicy::new(LaneMode::Wait, None), async {
            let _check = reads::check();
            assert!(ten().await.iter().all(Result::is_ok));
        })
        .await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(2_900) && waited <= Duration::from_millis(3_100), "{waited:?}");
        assert_eq!((busy.num_calls(), health.num_calls()), (1, 10), "the lane's turn alone");

        let started = tokio::time::Instant::now();
        reads::under(ReadPolicy::new(LaneMode::Outside, None), async {
            assert!(ten().await.iter().all(Result::is_ok))
        })
        .await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(30), "outside the lane, the process's pace: {waited:?}");
        assert_eq!(busy.num_calls(), 1, "and no turn asked of the lane");

        // Counted in the lane without waiting for a turn: the process's pace is the only one it keeps.
        tokio::time::advance(Duration::from_secs(60)).await;
        let started = tokio::time::Instant::now();
        reads::under(ReadPolicy::new(LaneMode::Count, None), async { assert!(ten().await.iter().all(Result::is_ok)) })
            .await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(30), "counted, the process's pace: {waited:?}");
        assert!(busy.num_calls() >= 2, "and counted in the lane");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_waits_its_turn_once_and_its_later_rounds_are_counted_without_waiting() {
        let (busy, health, elb) = in_a_busy_lane();
        let elb = &elb;
        reads::under(ReadPolicy::new(LaneMode::Wait, Some(Duration::from_secs(60))), async {
            let waited = |started: tokio::time::Instant| started.elapsed();
            {
                let _check = reads::check();
                let started = tokio::time::Instant::now();
                elb.targets(TG_A).await.unwrap();
                let first = waited(started);
                assert!(first >= Duration::from_millis(2_900) && first <= Duration::from_millis(3_100), "{first:?}");
                // The next round, once the first round's reservation has lapsed: reserved (counted), not waited for.
                tokio::time::advance(LANE_GRANT_TTL * 2).await;
                let started = tokio::time::Instant::now();
                let later = futures_util::future::join_all((0..6).map(|_| elb.targets(TG_A))).await;
                assert!(later.iter().all(Result::is_ok));
                assert_eq!(waited(started), Duration::ZERO);
                assert_eq!((busy.num_calls(), health.num_calls()), (2, 7), "each round reserved once, all of it read");
            }

            // The next check waits its turn again.
            tokio::time::advance(LANE_GRANT_TTL * 2).await;
            {
                let _check = reads::check();
                let started = tokio::time::Instant::now();
                elb.targets(TG_A).await.unwrap();
                assert!(waited(started) >= Duration::from_millis(2_900), "{:?}", waited(started));
                assert_eq!(busy.num_calls(), 3);
            }

            // Outside a check, every round waits its turn.
            for _ in 0..2 {
                tokio::time::advance(LANE_GRANT_TTL * 2).await;
                let started = tokio::time::Instant::now();
                elb.targets(TG_A).await.unwrap();
                assert!(waited(started) >= Duration::from_millis(2_900), "{:?}", waited(started));
            }
        })
        .await;
        assert_eq!(busy.num_calls(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_whose_turn_comes_after_its_time_gives_the_reservation_back_and_steps_aside() {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
        use aws_sdk_dynamodb::types::AttributeValue;
        // The lane is 8 s ahead: past its burst (5 s at 2 a second), a turn 3 s from now.
        let reserve = mock!(aws_sdk_dynamodb::Client::update_item)
            .match_requests(|r| r.update_expression() == Some("SET #kind = :kind ADD #tat :cost"))
            .then_output(move || {
                let tat = AttributeValue::N((now_ms() + 8_000).to_string());
                UpdateItemOutput::builder().attributes("tat_ms", tat).build()
            });
        let given_back = mock!(aws_sdk_dynamodb::Client::update_item)
            .match_requests(|r| {
                r.update_expression() == Some("ADD #tat :back")
                    && r.expression_attribute_values().and_then(|v| v.get(":back"))
                        == Some(&AttributeValue::N("-500".into()))
            })
            .then_output(|| UpdateItemOutput::builder().build());
        let health =
            mock!(Client::describe_target_health).then_output(|| DescribeTargetHealthOutput::builder().build());
        let lane = crate::aws::DynamoState::new(
            mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&reserve, &given_back]),
            "state".into(),
        )
        .read_lane(crate::domain::Lane::new(2.0, 10.0));
        let elb = Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, [&health])).with_lane(lane);

        // A sweep with a second left: it does not sleep into its timeout, and reads nothing.
        reads::under(ReadPolicy::new(LaneMode::Wait, Some(Duration::from_secs(1))), async {
            let started = tokio::time::Instant::now();
            let e = elb.targets(TG_A).await.unwrap_err();
            assert!(matches!(e, Error::LaneBusy(_)), "{e}");
            assert!(e.to_string().contains("turn in 3 s"), "{e}");
            assert_eq!(started.elapsed(), Duration::ZERO);
            assert_eq!((reserve.num_calls(), given_back.num_calls(), health.num_calls()), (1, 1, 0));
            // The reads after it in the invocation step aside without reserving again.
            assert!(matches!(elb.targets(TG_A).await, Err(Error::LaneBusy(_))));
            assert_eq!((reserve.num_calls(), given_back.num_calls(), health.num_calls()), (1, 1, 0));
        })
        .await;

        // The next invocation, with time enough: it waits its turn and reads.
        let started = tokio::time::Instant::now();
        reads::under(ReadPolicy::new(LaneMode::Wait, Some(Duration::from_secs(10))), elb.targets(TG_A)).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(2_900) && waited <= Duration::from_millis(3_100), "{waited:?}");
        assert_eq!((reserve.num_calls(), given_back.num_calls(), health.num_calls()), (2, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_throttled_once_then_answered_succeeds() {
        let rule = mock!(Client::describe_target_health)
            .sequence()
            .error(|| {
                DescribeTargetHealthError::generic(
                    ErrorMetadata::builder().code("Throttling").message("Rate exceeded").build(),
                )
            })
            .times(2)
            .output(|| DescribeTargetHealthOutput::builder().build())
            .build();
        let elb = Elb::new(mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::Sequential, [&rule]));
        assert!(elb.targets(TG_A).await.unwrap().is_empty());
        assert_eq!(rule.num_calls(), 3, "two throttled attempts, one pause, one answer");
    }
}
