//! Ports: the few domain-shaped operations the use cases need from the outside world. Adapters for AWS live in
//! [`crate::aws`]; in-memory fakes live with the tests. Methods return `impl Future + Send` so that use cases
//! stay generic (no boxing, no `async_trait`) and run on any executor.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::config::RouteRef;
use crate::domain::{
    BindingRecord, Census, CensusEntry, DeploymentRecord, FollowerLease, HealthCheck, ObservedTarget, Route,
    StoredBinding, Target, TargetKey, TrafficShift,
};
use crate::Result;

/// A target group's configuration, as far as the preflight checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetGroupFacts {
    pub arn: String,
    pub name: String,
    /// `ip`, `instance`, `lambda` or `alb`.
    pub target_type: String,
    pub protocol: Option<String>,
    pub port: Option<u16>,
    pub load_balancers: Vec<String>,
    pub health_check: HealthCheck,
}

/// Elastic Load Balancing, as the mirror uses it.
pub trait LoadBalancers: Send + Sync {
    /// Describes the given target groups; a missing one is an `AwsErrorKind::NotFound` error.
    fn target_groups(&self, arns: &[&str]) -> impl Future<Output = Result<Vec<TargetGroupFacts>>> + Send;
    /// The registered targets of a target group with their health.
    fn targets(&self, target_group: &str) -> impl Future<Output = Result<Vec<ObservedTarget>>> + Send;
    /// Registers one batch (the caller batches).
    fn register(&self, target_group: &str, targets: &[Target]) -> impl Future<Output = Result<()>> + Send;
    /// Deregisters one batch (the caller batches).
    fn deregister(&self, target_group: &str, targets: &[TargetKey]) -> impl Future<Output = Result<()>> + Send;
    /// The forward action of a listener's default action or of a rule. A route whose action is not a plain
    /// forward is a `Misconfigured` error.
    fn route(&self, route: &RouteRef) -> impl Future<Output = Result<Route>> + Send;
    /// Several routes at once, in the order asked: an adapter reads all the listeners in one call and all the
    /// rules in another (`DescribeListeners` and `DescribeRules` take lists of ARNs).
    fn routes(&self, routes: &[RouteRef]) -> impl Future<Output = Result<Vec<Route>>> + Send {
        futures_util::future::try_join_all(routes.iter().map(|r| self.route(r)))
    }
    /// Replaces the forward action of a listener's default action or of a rule.
    fn set_route(&self, route: &RouteRef, to: &Route) -> impl Future<Output = Result<()>> + Send;
    /// How long each target group drains a deregistered target (`deregistration_delay.timeout_seconds`), by ARN:
    /// one `DescribeTargetGroupAttributes` per group, so only `check` asks.
    fn deregistration_delays(
        &self,
        target_groups: &[&str],
    ) -> impl Future<Output = Result<std::collections::BTreeMap<String, std::time::Duration>>> + Send;
    /// The tags of target groups, listeners and rules, by ARN (`DescribeTags`, 20 ARNs a call).
    fn tags(
        &self,
        arns: &[&str],
    ) -> impl Future<Output = Result<std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>>> + Send;
    /// The same load balancers, for the reads of a move that cannot wait (a public route that has moved back, the
    /// replacement tasks about to go): neither paced, nor queued in the installation's read lane, nor held after
    /// throttling; a throttled attempt is retried at once within the SDK's standard retry, as a write is.
    fn at_once(&self) -> Self
    where
        Self: Sized;
}

/// Blue or green, as CodeDeploy labels an ECS task set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskSetLabel {
    Blue,
    Green,
}

/// One ECS task set of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSet {
    pub label: TaskSetLabel,
    pub target_group_name: Option<String>,
    pub desired_count: Option<u32>,
    pub running_count: Option<u32>,
}

/// A deployment and its deployment group, in the terms the hooks need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeploymentFacts {
    pub deployment_id: String,
    pub application: String,
    pub deployment_group: String,
    /// `ECS`, `Server` or `Lambda`.
    pub compute_platform: String,
    /// `BLUE_GREEN` or `IN_PLACE`.
    pub deployment_type: String,
    /// `user`, `autoscaling`, `codeDeployRollback`, ...
    pub creator: Option<String>,
    /// `Created`, `InProgress`, `Succeeded`, `Failed`, `Stopped`, ...
    pub status: String,
    /// The deployment configuration (`CodeDeployDefault.ECSCanary10Percent5Minutes`, ...), when CodeDeploy says.
    pub config_name: Option<String>,
    /// Target group names of the group's target group pair.
    pub target_group_names: Vec<String>,
    pub production_listeners: Vec<String>,
    pub test_listeners: Vec<String>,
    /// How long after rerouting CodeDeploy terminates the original task set (`terminationWaitTimeInMinutes`);
    /// `None` when it keeps them or does not say.
    pub termination_wait: Option<std::time::Duration>,
}

impl DeploymentFacts {
    /// Whether CodeDeploy is done with the deployment, one way or the other.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "Succeeded" | "Failed" | "Stopped")
    }
}

/// A deployment group's load balancer and service setup (what the reconciler needs between deployments).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeploymentGroupFacts {
    pub target_group_names: Vec<String>,
    pub production_listeners: Vec<String>,
    pub test_listeners: Vec<String>,
    /// `(cluster, service)` names of the ECS services the group deploys.
    pub ecs_services: Vec<(String, String)>,
    /// As [`DeploymentFacts::termination_wait`].
    pub termination_wait: Option<std::time::Duration>,
}

/// CodeDeploy, read side.
pub trait Deployments: Send + Sync {
    /// The deployment group's setup. An unknown group is an `AwsErrorKind::NotFound` error.
    fn deployment_group(
        &self,
        application: &str,
        group: &str,
    ) -> impl Future<Output = Result<DeploymentGroupFacts>> + Send;
    /// The deployment and its deployment group. An unknown id is an `AwsErrorKind::NotFound` error.
    fn deployment(&self, deployment_id: &str) -> impl Future<Output = Result<DeploymentFacts>> + Send;
    /// How a deployment configuration shifts traffic (`GetDeploymentConfig`), intervals in real minutes.
    fn traffic_shift(&self, config_name: &str) -> impl Future<Output = Result<TrafficShift>> + Send;
    /// The deployment's ECS task sets (empty when CodeDeploy does not list them yet).
    fn task_sets(&self, deployment_id: &str) -> impl Future<Output = Result<Vec<TaskSet>>> + Send;
}

/// The status a hook reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookStatus {
    Succeeded,
    Failed,
}

impl HookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HookStatus::Succeeded => "Succeeded",
            HookStatus::Failed => "Failed",
        }
    }
}

/// What CodeDeploy said to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reported {
    Accepted,
    /// CodeDeploy already had a status for this execution (a repeated invocation): not an error.
    AlreadyCompleted,
}

/// CodeDeploy, write side: `PutLifecycleEventHookExecutionStatus`.
pub trait HookReporter: Send + Sync {
    fn report(
        &self,
        deployment_id: &str,
        execution_id: &str,
        status: HookStatus,
    ) -> impl Future<Output = Result<Reported>> + Send;
}

/// Whether a conditional write went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    Written,
    /// Another writer got there first (the version check failed): reload and retry.
    Conflict,
}

/// Deployment state (DynamoDB). A write with `version` n succeeds only if the stored version is n - 1
/// (or no item exists and n = 1).
pub trait StateStore: Send + Sync {
    fn deployment(&self, deployment_id: &str) -> impl Future<Output = Result<Option<DeploymentRecord>>> + Send;
    fn put_deployment(&self, record: &DeploymentRecord) -> impl Future<Output = Result<Saved>> + Send;
    fn binding(&self, application: &str, group: &str) -> impl Future<Output = Result<Option<BindingRecord>>> + Send;
    fn put_binding(&self, record: &BindingRecord) -> impl Future<Output = Result<Saved>> + Send;
    /// Writes a deployment's record and its binding's together, each under its version check: both or neither
    /// (`Saved::Conflict` when either check failed).
    fn put_deployment_and_binding(
        &self,
        deployment: &DeploymentRecord,
        binding: &BindingRecord,
    ) -> impl Future<Output = Result<Saved>> + Send;
    fn follower(&self, application: &str, group: &str) -> impl Future<Output = Result<Option<FollowerLease>>> + Send;
    fn put_follower(&self, lease: &FollowerLease) -> impl Future<Output = Result<Saved>> + Send;
    /// One stored binding (one read).
    fn stored_binding(
        &self,
        application: &str,
        group: &str,
    ) -> impl Future<Output = Result<Option<StoredBinding>>> + Send;
    /// Every stored binding, read page by page. An item that cannot be decoded is an error of its own, so that
    /// it fails only its binding.
    fn stored_bindings(&self) -> impl Future<Output = Result<Vec<Result<StoredBinding>>>> + Send;
    /// Writes a stored binding under the version check of every record.
    fn put_stored_binding(&self, stored: &StoredBinding) -> impl Future<Output = Result<Saved>> + Send;
    /// Removes a stored binding if its stored version is still `version`.
    fn remove_stored_binding(
        &self,
        application: &str,
        group: &str,
        version: u64,
    ) -> impl Future<Output = Result<Saved>> + Send;
}

/// What claiming a read came to ([`Coordination::claim_read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No read was pending: the caller's, to make once the moment's other events have come.
    Taken,
    /// The pending read was the caller's own, left by an attempt of the same invocation that died before making
    /// it: the caller makes it at once (the moment's events have had the retry's delay to come).
    TakenBack,
    /// Another invocation's read is pending and will see what the caller would have.
    Pending,
}

/// How the installation's processes coordinate their reads of ELB, through the state table beside the records
/// but no part of them: the followers' census, the claims that let the ECS task events of one moment share one
/// read, and the bindings a sweep left due. Losing any of it costs reads, never a deployment.
pub trait Coordination: Send + Sync {
    /// Writes one follower's entry of the installation's census (its heartbeat or its leaving, dropping the
    /// entries named to forget) and returns the census as it stands after the write, in one call.
    fn census(&self, entry: &CensusEntry) -> impl Future<Output = Result<Census>> + Send;
    /// Claims the next read of `what` for `read_at_ms` on behalf of `owner` (the invocation's request id), in one
    /// conditional write: [`Claim::Taken`] when no read of it was pending at `now_ms`, [`Claim::TakenBack`] when
    /// the pending one was `owner`'s own, [`Claim::Pending`] when another's still is.
    fn claim_read(
        &self,
        what: &str,
        owner: &str,
        now_ms: u64,
        read_at_ms: u64,
    ) -> impl Future<Output = Result<Claim>> + Send;
    /// Marks bindings (by label) due: their check stepped aside from a busy read lane, and the next sweep takes
    /// them first (one write; marking one already due changes nothing).
    fn mark_due(&self, labels: &[String]) -> impl Future<Output = Result<()>> + Send;
    /// Takes every due binding, leaving none due: the sweep that takes them checks them, or marks those it could
    /// not check due again (one write that returns what it removed).
    fn take_due(&self) -> impl Future<Output = Result<std::collections::BTreeSet<String>>> + Send;
}

/// Asks for a follower of a deployment (the reconciler in follow mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowRequest {
    pub deployment_id: String,
    pub application: String,
    pub deployment_group: String,
    /// The public production listener, when the starter knows it (saves the follower a CodeDeploy read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_listener: Option<String>,
    /// The deployment configuration's name, when the starter knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_name: Option<String>,
    /// The stored binding as the starter read it, so that the follower's first read is of the public route, not
    /// of the table (the environment form has it at hand and leaves this out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<crate::config::Binding>,
}

/// Lambda, to start a follower asynchronously.
pub trait Followers: Send + Sync {
    /// Starts a follower for the request, without waiting for it. `Ok(false)` when no follower function is
    /// configured.
    fn start(&self, request: &FollowRequest) -> impl Future<Output = Result<bool>> + Send;
}

/// The followers of a function that starts none (AfterInstall, AfterAllowTraffic): it builds no Lambda client, so
/// its binary links none. Asked to start one anyway, it refuses rather than silently not following.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFollowers;

impl Followers for NoFollowers {
    async fn start(&self, request: &FollowRequest) -> Result<bool> {
        Err(crate::Error::Misconfigured(format!(
            "this function starts no follower (only BeforeAllowTraffic and the reconciler do); deployment {} was \
             not followed",
            request.deployment_id
        )))
    }
}
