//! CodeDeploy in memory, both sides: deployments with their task sets, and the hooks' reports.

use super::*;

type DeploymentEntry = (DeploymentFacts, Vec<TaskSet>);

/// CodeDeploy, both sides, in memory. Reports follow CodeDeploy's rule: the first status of an execution wins
/// and later ones get `LifecycleEventAlreadyCompletedException`.
#[derive(Clone, Default)]
pub struct FakeCodeDeploy {
    pub(crate) deployments: Arc<Mutex<BTreeMap<String, DeploymentEntry>>>,
    pub(crate) reports: Arc<Mutex<Vec<(String, String, HookStatus)>>>,
    pub(crate) task_sets_fail: Arc<Mutex<bool>>,
    pub(crate) calls: Arc<Calls>,
}

impl FakeCodeDeploy {
    pub fn put(&self, facts: DeploymentFacts, sets: Vec<TaskSet>) {
        self.deployments.lock().unwrap().insert(facts.deployment_id.clone(), (facts, sets));
    }

    pub fn edit(&self, id: &str, f: impl FnOnce(&mut DeploymentFacts)) {
        f(&mut self.deployments.lock().unwrap().get_mut(id).unwrap().0)
    }

    /// Every report received, accepted or not.
    pub fn reports(&self) -> Vec<(String, String, HookStatus)> {
        self.reports.lock().unwrap().clone()
    }

    pub fn without_task_sets(&self) {
        *self.task_sets_fail.lock().unwrap() = true;
    }
}

impl Deployments for FakeCodeDeploy {
    async fn deployment_group(&self, application: &str, group: &str) -> Result<DeploymentGroupFacts> {
        self.calls.enter("codedeploy:GetDeploymentGroup")?;
        let deployments = self.deployments.lock().unwrap();
        let found =
            deployments.values().map(|d| &d.0).find(|f| f.application == application && f.deployment_group == group);
        found
            .map(|f| DeploymentGroupFacts {
                target_group_names: f.target_group_names.clone(),
                production_listeners: f.production_listeners.clone(),
                test_listeners: f.test_listeners.clone(),
                ecs_services: vec![("prod".into(), "web".into())],
                termination_wait: f.termination_wait,
            })
            .ok_or_else(|| Error::Aws {
                service: "codedeploy",
                operation: "GetDeploymentGroup",
                kind: AwsErrorKind::NotFound,
                message: format!("DeploymentGroupDoesNotExistException: {application}/{group}"),
                source: None,
            })
    }

    async fn deployment(&self, deployment_id: &str) -> Result<DeploymentFacts> {
        self.calls.enter("codedeploy:GetDeployment")?;
        self.calls.enter("codedeploy:GetDeploymentGroup")?;
        self.deployments.lock().unwrap().get(deployment_id).map(|d| d.0.clone()).ok_or_else(|| Error::Aws {
            service: "codedeploy",
            operation: "GetDeployment",
            kind: AwsErrorKind::NotFound,
            message: format!("DeploymentDoesNotExistException: {deployment_id}"),
            source: None,
        })
    }

    async fn traffic_shift(&self, config_name: &str) -> Result<TrafficShift> {
        self.calls.enter("codedeploy:GetDeploymentConfig")?;
        Ok(match config_name {
            "CodeDeployDefault.ECSAllAtOnce" => TrafficShift::AllAtOnce,
            "CodeDeployDefault.ECSCanary10Percent5Minutes" => {
                TrafficShift::Canary { percentage: 10, interval: Duration::from_secs(300) }
            }
            "CodeDeployDefault.ECSLinear10PercentEvery1Minutes" => {
                TrafficShift::Linear { percentage: 10, interval: Duration::from_secs(60) }
            }
            other => {
                return Err(Error::Aws {
                    service: "codedeploy",
                    operation: "GetDeploymentConfig",
                    kind: AwsErrorKind::NotFound,
                    message: format!("DeploymentConfigDoesNotExistException: {other}"),
                    source: None,
                })
            }
        })
    }

    async fn task_sets(&self, deployment_id: &str) -> Result<Vec<TaskSet>> {
        self.calls.enter("codedeploy:GetDeploymentTarget")?;
        if *self.task_sets_fail.lock().unwrap() {
            return Err(Error::Aws {
                service: "codedeploy",
                operation: "ListDeploymentTargets",
                kind: AwsErrorKind::Other,
                message: "not implemented".into(),
                source: None,
            });
        }
        Ok(self.deployments.lock().unwrap().get(deployment_id).map(|d| d.1.clone()).unwrap_or_default())
    }
}

impl HookReporter for FakeCodeDeploy {
    async fn report(&self, deployment_id: &str, execution_id: &str, status: HookStatus) -> Result<Reported> {
        // Reports do not go through the fault plan: the harness's own guarantee is what is under test.
        let mut reports = self.reports.lock().unwrap();
        let seen = reports.iter().any(|(d, e, _)| d == deployment_id && e == execution_id);
        reports.push((deployment_id.to_string(), execution_id.to_string(), status));
        Ok(if seen { Reported::AlreadyCompleted } else { Reported::Accepted })
    }
}
