//! CodeDeploy adapter: the deployment and its group (read), the ECS task sets of a deployment, and the hook
//! status report.

use aws_sdk_codedeploy::operation::get_deployment_group::GetDeploymentGroupOutput;
use std::time::Duration;

use aws_sdk_codedeploy::types::{
    DeploymentGroupInfo, InstanceAction, LifecycleEventStatus, TargetLabel, TrafficRoutingConfig, TrafficRoutingType,
};
use aws_sdk_codedeploy::Client;

use super::errors::aws_error;
use crate::domain::TrafficShift;
use crate::ports::{
    DeploymentFacts, DeploymentGroupFacts, Deployments, HookReporter, HookStatus, Reported, TaskSet, TaskSetLabel,
};
use crate::{Error, Result};

const SERVICE: &str = "codedeploy";

/// [`Deployments`] and [`HookReporter`] over the CodeDeploy API.
#[derive(Debug, Clone)]
pub struct CodeDeploy {
    client: Client,
}

impl CodeDeploy {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl CodeDeploy {
    async fn group_info(&self, application: &str, group: &str) -> Result<GetDeploymentGroupOutput> {
        self.client
            .get_deployment_group()
            .application_name(application)
            .deployment_group_name(group)
            .send()
            .await
            .map_err(|e| {
                aws_error(SERVICE, "GetDeploymentGroup", &format!("deployment group {application}/{group}"), e)
            })
    }
}

/// The load balancer and service setup of a deployment group.
fn group_facts(info: Option<&DeploymentGroupInfo>) -> DeploymentGroupFacts {
    let pair = info.and_then(|gi| gi.load_balancer_info()).and_then(|lb| lb.target_group_pair_info_list().first());
    let listeners = |route: Option<&aws_sdk_codedeploy::types::TrafficRoute>| -> Vec<String> {
        route.map(|r| r.listener_arns().to_vec()).unwrap_or_default()
    };
    DeploymentGroupFacts {
        target_group_names: pair
            .map(|p| p.target_groups().iter().filter_map(|t| t.name().map(str::to_string)).collect())
            .unwrap_or_default(),
        production_listeners: listeners(pair.and_then(|p| p.prod_traffic_route())),
        test_listeners: listeners(pair.and_then(|p| p.test_traffic_route())),
        ecs_services: info
            .map(|gi| {
                gi.ecs_services()
                    .iter()
                    .filter_map(|s| Some((s.cluster_name()?.to_string(), s.service_name()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        termination_wait: info
            .and_then(|gi| gi.blue_green_deployment_configuration())
            .and_then(|bg| bg.terminate_blue_instances_on_deployment_success())
            .filter(|t| t.action() == Some(&InstanceAction::Terminate))
            .map(|t| Duration::from_secs(u64::try_from(t.termination_wait_time_in_minutes()).unwrap_or(0) * 60)),
    }
}

/// CodeDeploy's traffic routing, in the domain's terms. Intervals are whole minutes in the API.
fn shift_of(routing: Option<&TrafficRoutingConfig>) -> TrafficShift {
    let minutes = |m: i32| Duration::from_secs(u64::try_from(m).unwrap_or(0) * 60);
    let percent = |p: i32| u32::try_from(p).unwrap_or(0);
    match routing.and_then(|r| r.r#type()) {
        Some(TrafficRoutingType::AllAtOnce) => TrafficShift::AllAtOnce,
        Some(TrafficRoutingType::TimeBasedCanary) => match routing.and_then(|r| r.time_based_canary()) {
            Some(c) => TrafficShift::Canary {
                percentage: percent(c.canary_percentage()),
                interval: minutes(c.canary_interval()),
            },
            None => TrafficShift::Unknown,
        },
        Some(TrafficRoutingType::TimeBasedLinear) => match routing.and_then(|r| r.time_based_linear()) {
            Some(l) => TrafficShift::Linear {
                percentage: percent(l.linear_percentage()),
                interval: minutes(l.linear_interval()),
            },
            None => TrafficShift::Unknown,
        },
        _ => TrafficShift::Unknown,
    }
}

/// What IAM scopes a call about one deployment by, for the "grant … on …" of an AccessDenied.
fn of_deployment(deployment_id: &str) -> String {
    format!("the deployment group of deployment {deployment_id}")
}

impl Deployments for CodeDeploy {
    async fn deployment(&self, deployment_id: &str) -> Result<DeploymentFacts> {
        let out = self
            .client
            .get_deployment()
            .deployment_id(deployment_id)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "GetDeployment", &of_deployment(deployment_id), e))?;
        let info = out.deployment_info().ok_or_else(|| {
            Error::Misconfigured(format!("CodeDeploy returned no information for deployment {deployment_id}"))
        })?;
        let application = info.application_name().unwrap_or_default().to_string();
        let group = info.deployment_group_name().unwrap_or_default().to_string();
        let g = self.group_info(&application, &group).await?;
        let group_info = g.deployment_group_info();
        let style = info.deployment_style().or_else(|| group_info.and_then(|gi| gi.deployment_style()));
        let facts = group_facts(group_info);
        Ok(DeploymentFacts {
            deployment_id: deployment_id.to_string(),
            application,
            deployment_group: group,
            compute_platform: info
                .compute_platform()
                .or_else(|| group_info.and_then(|gi| gi.compute_platform()))
                .map_or("Server", |p| p.as_str())
                .to_string(),
            deployment_type: style.and_then(|s| s.deployment_type()).map_or("IN_PLACE", |t| t.as_str()).to_string(),
            creator: info.creator().map(|c| c.as_str().to_string()),
            status: info.status().map_or("Unknown", |s| s.as_str()).to_string(),
            config_name: info.deployment_config_name().map(str::to_string),
            target_group_names: facts.target_group_names,
            production_listeners: facts.production_listeners,
            test_listeners: facts.test_listeners,
            termination_wait: facts.termination_wait,
        })
    }

    async fn deployment_group(&self, application: &str, group: &str) -> Result<DeploymentGroupFacts> {
        let g = self.group_info(application, group).await?;
        Ok(group_facts(g.deployment_group_info()))
    }

    async fn traffic_shift(&self, config_name: &str) -> Result<TrafficShift> {
        let out =
            self.client.get_deployment_config().deployment_config_name(config_name).send().await.map_err(|e| {
                aws_error(SERVICE, "GetDeploymentConfig", &format!("deployment config {config_name}"), e)
            })?;
        Ok(shift_of(out.deployment_config_info().and_then(|i| i.traffic_routing_config())))
    }

    async fn task_sets(&self, deployment_id: &str) -> Result<Vec<TaskSet>> {
        let mut target_ids = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client
                .list_deployment_targets()
                .deployment_id(deployment_id)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| aws_error(SERVICE, "ListDeploymentTargets", &of_deployment(deployment_id), e))?;
            target_ids.extend(page.target_ids().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        let mut sets = Vec::new();
        // An ECS deployment has one target (the service); the loop keeps a multi-target answer harmless.
        for target_id in &target_ids {
            let out = self
                .client
                .get_deployment_target()
                .deployment_id(deployment_id)
                .target_id(target_id)
                .send()
                .await
                .map_err(|e| aws_error(SERVICE, "GetDeploymentTarget", &of_deployment(deployment_id), e))?;
            let Some(ecs) = out.deployment_target().and_then(|t| t.ecs_target()) else {
                continue;
            };
            for s in ecs.task_sets_info() {
                let label = match s.task_set_label() {
                    Some(TargetLabel::Blue) => TaskSetLabel::Blue,
                    Some(TargetLabel::Green) => TaskSetLabel::Green,
                    _ => continue,
                };
                sets.push(TaskSet {
                    label,
                    target_group_name: s.target_group().and_then(|t| t.name()).map(str::to_string),
                    desired_count: u32::try_from(s.desired_count()).ok(),
                    running_count: u32::try_from(s.running_count()).ok(),
                });
            }
        }
        Ok(sets)
    }
}

impl HookReporter for CodeDeploy {
    async fn report(&self, deployment_id: &str, execution_id: &str, status: HookStatus) -> Result<Reported> {
        let status = match status {
            HookStatus::Succeeded => LifecycleEventStatus::Succeeded,
            HookStatus::Failed => LifecycleEventStatus::Failed,
        };
        let sent = self
            .client
            .put_lifecycle_event_hook_execution_status()
            .deployment_id(deployment_id)
            .lifecycle_event_hook_execution_id(execution_id)
            .status(status)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Reported::Accepted),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_lifecycle_event_already_completed_exception()) => {
                Ok(Reported::AlreadyCompleted)
            }
            Err(e) => Err(aws_error(SERVICE, "PutLifecycleEventHookExecutionStatus", &of_deployment(deployment_id), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_codedeploy::error::ErrorMetadata;
    use aws_sdk_codedeploy::operation::get_deployment::GetDeploymentError;
    use aws_sdk_codedeploy::operation::get_deployment::GetDeploymentOutput;
    use aws_sdk_codedeploy::operation::get_deployment_group::GetDeploymentGroupOutput;
    use aws_sdk_codedeploy::operation::get_deployment_target::GetDeploymentTargetOutput;
    use aws_sdk_codedeploy::operation::list_deployment_targets::ListDeploymentTargetsOutput;
    use aws_sdk_codedeploy::operation::put_lifecycle_event_hook_execution_status::{
        PutLifecycleEventHookExecutionStatusError, PutLifecycleEventHookExecutionStatusOutput,
    };
    use aws_sdk_codedeploy::types::error::{DeploymentDoesNotExistException, LifecycleEventAlreadyCompletedException};
    use aws_sdk_codedeploy::types::{
        BlueGreenDeploymentConfiguration, BlueInstanceTerminationOption, ComputePlatform, DeploymentGroupInfo,
        DeploymentInfo, DeploymentOption, DeploymentStyle, DeploymentTarget, DeploymentType, EcsTarget, EcsTaskSet,
        LoadBalancerInfo, TargetGroupInfo, TargetGroupPairInfo, TrafficRoute,
    };
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    use super::*;
    use crate::AwsErrorKind;

    #[tokio::test]
    async fn deployment_facts_come_from_the_deployment_and_its_group() {
        let dep =
            mock!(Client::get_deployment).match_requests(|r| r.deployment_id() == Some("d-1")).then_output(|| {
                GetDeploymentOutput::builder()
                    .deployment_info(
                        DeploymentInfo::builder()
                            .application_name("web")
                            .deployment_group_name("web-bg")
                            .compute_platform(ComputePlatform::Ecs)
                            .deployment_style(
                                DeploymentStyle::builder()
                                    .deployment_type(DeploymentType::BlueGreen)
                                    .deployment_option(DeploymentOption::WithTrafficControl)
                                    .build(),
                            )
                            .build(),
                    )
                    .build()
            });
        let group = mock!(Client::get_deployment_group)
            .match_requests(|r| r.application_name() == Some("web") && r.deployment_group_name() == Some("web-bg"))
            .then_output(|| {
                GetDeploymentGroupOutput::builder()
                    .deployment_group_info(
                        DeploymentGroupInfo::builder()
                            .load_balancer_info(
                                LoadBalancerInfo::builder()
                                    .target_group_pair_info_list(
                                        TargetGroupPairInfo::builder()
                                            .target_groups(TargetGroupInfo::builder().name("pub-blue").build())
                                            .target_groups(TargetGroupInfo::builder().name("pub-green").build())
                                            .prod_traffic_route(TrafficRoute::builder().listener_arns("prod").build())
                                            .test_traffic_route(TrafficRoute::builder().listener_arns("test").build())
                                            .build(),
                                    )
                                    .build(),
                            )
                            .blue_green_deployment_configuration(
                                BlueGreenDeploymentConfiguration::builder()
                                    .terminate_blue_instances_on_deployment_success(
                                        BlueInstanceTerminationOption::builder()
                                            .action(InstanceAction::Terminate)
                                            .termination_wait_time_in_minutes(5)
                                            .build(),
                                    )
                                    .build(),
                            )
                            .build(),
                    )
                    .build()
            });
        let cd = CodeDeploy::new(mock_client!(aws_sdk_codedeploy, [&dep, &group]));
        let f = cd.deployment("d-1").await.unwrap();
        assert_eq!((f.application.as_str(), f.deployment_group.as_str()), ("web", "web-bg"));
        assert_eq!((f.compute_platform.as_str(), f.deployment_type.as_str()), ("ECS", "BLUE_GREEN"));
        assert_eq!(f.target_group_names, vec!["pub-blue", "pub-green"]);
        assert_eq!((f.production_listeners, f.test_listeners), (vec!["prod".to_string()], vec!["test".to_string()]));
        assert_eq!(f.termination_wait, Some(Duration::from_secs(300)));
        // Kept, not terminated: no wait to speak of.
        let kept = DeploymentGroupInfo::builder()
            .blue_green_deployment_configuration(
                BlueGreenDeploymentConfiguration::builder()
                    .terminate_blue_instances_on_deployment_success(
                        BlueInstanceTerminationOption::builder().action(InstanceAction::KeepAlive).build(),
                    )
                    .build(),
            )
            .build();
        assert_eq!(group_facts(Some(&kept)).termination_wait, None);
    }

    #[tokio::test]
    async fn traffic_shifts_come_from_the_deployment_config() {
        use aws_sdk_codedeploy::operation::get_deployment_config::GetDeploymentConfigOutput;
        use aws_sdk_codedeploy::types::{DeploymentConfigInfo, TimeBasedCanary, TimeBasedLinear};
        let config = mock!(Client::get_deployment_config).then_compute_output(|r| {
            let routing = match r.deployment_config_name() {
                Some("canary") => TrafficRoutingConfig::builder()
                    .r#type(TrafficRoutingType::TimeBasedCanary)
                    .time_based_canary(TimeBasedCanary::builder().canary_percentage(10).canary_interval(5).build()),
                Some("linear") => TrafficRoutingConfig::builder()
                    .r#type(TrafficRoutingType::TimeBasedLinear)
                    .time_based_linear(TimeBasedLinear::builder().linear_percentage(20).linear_interval(2).build()),
                _ => TrafficRoutingConfig::builder().r#type(TrafficRoutingType::AllAtOnce),
            };
            GetDeploymentConfigOutput::builder()
                .deployment_config_info(DeploymentConfigInfo::builder().traffic_routing_config(routing.build()).build())
                .build()
        });
        let cd = CodeDeploy::new(mock_client!(aws_sdk_codedeploy, RuleMode::MatchAny, [&config]));
        assert_eq!(
            cd.traffic_shift("canary").await.unwrap(),
            TrafficShift::Canary { percentage: 10, interval: Duration::from_secs(300) }
        );
        assert_eq!(
            cd.traffic_shift("linear").await.unwrap(),
            TrafficShift::Linear { percentage: 20, interval: Duration::from_secs(120) }
        );
        assert_eq!(cd.traffic_shift("all").await.unwrap(), TrafficShift::AllAtOnce);
    }

    #[tokio::test]
    async fn an_unknown_deployment_is_not_found() {
        let dep = mock!(Client::get_deployment).then_error(|| {
            // The code is what the deserializer takes from the wire.
            GetDeploymentError::DeploymentDoesNotExistException(
                DeploymentDoesNotExistException::builder()
                    .meta(ErrorMetadata::builder().code("DeploymentDoesNotExistException").build())
                    .build(),
            )
        });
        let cd = CodeDeploy::new(mock_client!(aws_sdk_codedeploy, [&dep]));
        assert_eq!(cd.deployment("d-x").await.unwrap_err().aws_kind(), Some(AwsErrorKind::NotFound));
    }

    #[tokio::test]
    async fn task_sets_follow_every_page_of_deployment_targets() {
        let page1 = mock!(Client::list_deployment_targets)
            .match_requests(|r| r.next_token().is_none())
            .then_output(|| ListDeploymentTargetsOutput::builder().target_ids("svc:a").next_token("p2").build());
        let page2 = mock!(Client::list_deployment_targets)
            .match_requests(|r| r.next_token() == Some("p2"))
            .then_output(|| ListDeploymentTargetsOutput::builder().target_ids("svc:b").build());
        let target = mock!(Client::get_deployment_target).then_compute_output(|r| {
            let label = if r.target_id() == Some("svc:a") { TargetLabel::Blue } else { TargetLabel::Green };
            let name = if r.target_id() == Some("svc:a") { "pub-blue" } else { "pub-green" };
            GetDeploymentTargetOutput::builder()
                .deployment_target(
                    DeploymentTarget::builder()
                        .ecs_target(
                            EcsTarget::builder()
                                .task_sets_info(
                                    EcsTaskSet::builder()
                                        .task_set_label(label)
                                        .desired_count(4)
                                        .running_count(2)
                                        .target_group(TargetGroupInfo::builder().name(name).build())
                                        .build(),
                                )
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
        let cd = CodeDeploy::new(mock_client!(aws_sdk_codedeploy, RuleMode::MatchAny, [&page1, &page2, &target]));
        let sets = cd.task_sets("d-1").await.unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[1].label, TaskSetLabel::Green);
        assert_eq!(sets[1].target_group_name.as_deref(), Some("pub-green"));
        assert_eq!((sets[1].desired_count, sets[1].running_count), (Some(4), Some(2)));
        assert_eq!(target.num_calls(), 2);
    }

    #[tokio::test]
    async fn a_second_report_is_already_completed_not_an_error() {
        let ok = mock!(Client::put_lifecycle_event_hook_execution_status)
            .match_requests(|r| {
                r.deployment_id() == Some("d-1")
                    && r.lifecycle_event_hook_execution_id() == Some("e-1")
                    && r.status() == Some(&LifecycleEventStatus::Failed)
            })
            .then_output(|| PutLifecycleEventHookExecutionStatusOutput::builder().build());
        let done = mock!(Client::put_lifecycle_event_hook_execution_status).then_error(|| {
            PutLifecycleEventHookExecutionStatusError::LifecycleEventAlreadyCompletedException(
                LifecycleEventAlreadyCompletedException::builder().build(),
            )
        });
        let cd = CodeDeploy::new(mock_client!(aws_sdk_codedeploy, RuleMode::Sequential, [&ok, &done]));
        assert_eq!(cd.report("d-1", "e-1", HookStatus::Failed).await.unwrap(), Reported::Accepted);
        assert_eq!(cd.report("d-1", "e-1", HookStatus::Succeeded).await.unwrap(), Reported::AlreadyCompleted);
    }
}
