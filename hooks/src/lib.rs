//! The Lambda side of the hooks: cold-start wiring (configuration, clients), event parsing, and the handler
//! that hands each invocation to the harness. Each binary's `main` is one call to [`serve`].

use bluegreen_mirror::aws::Aws;
use bluegreen_mirror::config::Config;
use bluegreen_mirror::domain::Phase;
use bluegreen_mirror::harness::{self, Invocation, Outcome, Tracker};
use bluegreen_mirror::ports::{Deployments, HookReporter, LoadBalancers, StateStore};
use bluegreen_mirror::usecase::Hooks;
use bluegreen_mirror::Error;

use aws_lambda_events::event::codedeploy::CodeDeployLifecycleEvent;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

/// Reads the lifecycle event CodeDeploy sends (`DeploymentId`, `LifecycleEventHookExecutionId`).
pub fn parse_event(payload: Value) -> Result<CodeDeployLifecycleEvent, Error> {
    let event: CodeDeployLifecycleEvent = serde_json::from_value(payload).map_err(|e| {
        Error::Event(format!(
            "expected CodeDeploy's lifecycle hook payload {{\"DeploymentId\": ..., \"LifecycleEventHookExecutionId\": ...}}: {e}"
        ))
    })?;
    if event.deployment_id.trim().is_empty() || event.lifecycle_event_hook_execution_id.trim().is_empty() {
        return Err(Error::Event("DeploymentId and LifecycleEventHookExecutionId must not be empty".to_string()));
    }
    Ok(event)
}

/// The response of an invocation: the outcome when the report reached CodeDeploy, an error otherwise (so that
/// Lambda retries the asynchronous invocation and the idempotent hook reports again).
pub fn response(outcome: Outcome) -> Result<Value, Error> {
    match &outcome.report_error {
        None => Ok(serde_json::to_value(&outcome).unwrap_or(Value::Null)),
        Some(e) => Err(Error::Misconfigured(format!(
            "{} for deployment {} decided {} but could not report it to CodeDeploy: {e}",
            outcome.phase,
            outcome.deployment_id,
            outcome.status.as_str()
        ))),
    }
}

/// Starts the function: configuration and clients once at cold start (a bad configuration stops it here,
/// before any invocation), then one harness run per invocation.
pub async fn serve(phase: Phase) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let aws = Aws::load(&config).await;
    let reporter = aws.codedeploy.clone();
    let hooks = Hooks::new(aws.elb, aws.codedeploy, aws.state, config);
    let (hooks, reporter) = (&hooks, &reporter);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handle(phase, hooks, reporter, event).await.map_err(lambda_runtime::Error::from)
    }))
    .await
}

async fn handle<L, D, S, R>(
    phase: Phase,
    hooks: &Hooks<L, D, S>,
    reporter: &R,
    event: LambdaEvent<Value>,
) -> Result<Value, Error>
where
    L: LoadBalancers,
    D: Deployments,
    S: StateStore,
    R: HookReporter,
{
    // Without both ids there is nothing CodeDeploy would accept a report for: the error goes to the log.
    let lifecycle = parse_event(event.payload).inspect_err(|e| tracing::error!(error = %e, "event rejected"))?;
    let inv = Invocation {
        phase,
        deployment_id: lifecycle.deployment_id,
        execution_id: lifecycle.lifecycle_event_hook_execution_id,
        deadline: event.context.deadline(),
    };
    let tracker = Tracker::default();
    let outcome = harness::run(reporter, &inv, &tracker, |budget| {
        let (inv, tracker) = (&inv, &tracker);
        // Boxed and type-erased: the use case's future is deep, and erasing it keeps the handler's small.
        let work: std::pin::Pin<Box<dyn std::future::Future<Output = bluegreen_mirror::Result<()>> + Send + '_>> =
            Box::pin(hooks.run(inv.phase, &inv.deployment_id, budget, tracker));
        work
    })
    .await;
    response(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_codedeploy_payloads_and_rejects_the_rest() {
        let ok = parse_event(json!({"DeploymentId": "d-ABC", "LifecycleEventHookExecutionId": "eyJ"}));
        assert_eq!(ok.map(|e| e.deployment_id).ok().as_deref(), Some("d-ABC"));
        for bad in [
            json!({}),
            json!(null),
            json!("d-ABC"),
            json!({"DeploymentId": "d-ABC"}),
            json!({"deploymentId": "d-ABC", "lifecycleEventHookExecutionId": "x"}),
            json!({"DeploymentId": "", "LifecycleEventHookExecutionId": "x"}),
            json!({"DeploymentId": 7, "LifecycleEventHookExecutionId": "x"}),
        ] {
            let err = parse_event(bad.clone()).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.starts_with("malformed event"), "{bad} → {err}");
        }
    }
}
