//! CodeDeploy adapter: the deployment and its group (read), the ECS task sets of a deployment, and the hook
//! status report.

use aws_sdk_codedeploy::types::{LifecycleEventStatus, TargetLabel};
use aws_sdk_codedeploy::Client;

use super::errors::aws_error;
use crate::ports::{DeploymentFacts, Deployments, HookReporter, HookStatus, Reported, TaskSet, TaskSetLabel};
use crate::{AwsErrorKind, Error, Result};

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

impl Deployments for CodeDeploy {
    async fn deployment(&self, deployment_id: &str) -> Result<DeploymentFacts> {
        let out = self
            .client
            .get_deployment()
            .deployment_id(deployment_id)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "GetDeployment", e))?;
        let info = out.deployment_info().ok_or_else(|| {
            Error::Misconfigured(format!("CodeDeploy returned no information for deployment {deployment_id}"))
        })?;
        let application = info.application_name().unwrap_or_default().to_string();
        let group = info.deployment_group_name().unwrap_or_default().to_string();
        let g = self
            .client
            .get_deployment_group()
            .application_name(&application)
            .deployment_group_name(&group)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "GetDeploymentGroup", e))?;
        let group_info = g.deployment_group_info();
        let style = info.deployment_style().or_else(|| group_info.and_then(|gi| gi.deployment_style()));
        let pair =
            group_info.and_then(|gi| gi.load_balancer_info()).and_then(|lb| lb.target_group_pair_info_list().first());
        let listeners = |route: Option<&aws_sdk_codedeploy::types::TrafficRoute>| -> Vec<String> {
            route.map(|r| r.listener_arns().to_vec()).unwrap_or_default()
        };
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
            target_group_names: pair
                .map(|p| p.target_groups().iter().filter_map(|t| t.name().map(str::to_string)).collect())
                .unwrap_or_default(),
            production_listeners: listeners(pair.and_then(|p| p.prod_traffic_route())),
            test_listeners: listeners(pair.and_then(|p| p.test_traffic_route())),
        })
    }

    async fn task_sets(&self, deployment_id: &str) -> Result<Vec<TaskSet>> {
        let ids = self
            .client
            .list_deployment_targets()
            .deployment_id(deployment_id)
            .send()
            .await
            .map_err(|e| aws_error(SERVICE, "ListDeploymentTargets", e))?;
        let mut sets = Vec::new();
        // An ECS deployment has one target (the service); the loop keeps a multi-target answer harmless.
        for target_id in ids.target_ids() {
            let out = self
                .client
                .get_deployment_target()
                .deployment_id(deployment_id)
                .target_id(target_id)
                .send()
                .await
                .map_err(|e| aws_error(SERVICE, "GetDeploymentTarget", e))?;
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
        match sent.map_err(|e| aws_error(SERVICE, "PutLifecycleEventHookExecutionStatus", e)) {
            Ok(_) => Ok(Reported::Accepted),
            Err(e) if e.aws_kind() == Some(AwsErrorKind::AlreadyCompleted) => Ok(Reported::AlreadyCompleted),
            Err(e) => Err(e),
        }
    }
}
