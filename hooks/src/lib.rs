//! The Lambda side of the hooks: cold-start wiring (configuration, clients), event parsing, and the handler
//! that hands each invocation to the harness. Each hook binary's `main` is one call to [`serve`]; the reconciler's
//! is one call to [`serve_reconciler`].

pub mod cli;
pub mod cli_bindings;
pub mod logging;
pub mod report;

use bluegreen_mirror::aws::Aws;
use bluegreen_mirror::aws::FOLLOW_KEY;
use bluegreen_mirror::config::Config;
use bluegreen_mirror::domain::Phase;
use bluegreen_mirror::harness::{self, Budget, Epilogue, Invocation, Outcome, Tracker};
use bluegreen_mirror::ports::{
    Coordination, Deployments, FollowRequest, Followers, HookReporter, LoadBalancers, NoFollowers, StateStore,
};
use bluegreen_mirror::usecase::{Engine, Trigger};
use bluegreen_mirror::Error;

use aws_lambda_events::event::codedeploy::{CodeDeployEventDetail, CodeDeployLifecycleEvent};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
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

/// The engine a function runs on, over the AWS adapters, with followers of kind `F`.
type AwsEngine<F> =
    Engine<bluegreen_mirror::aws::Elb, bluegreen_mirror::aws::CodeDeploy, bluegreen_mirror::aws::DynamoState, F>;

/// One hook as its binary is built: its phase, its use case, and whether it starts followers. Each binary names
/// its hook as a type, so that it links that hook's use case alone, and a Lambda client only if it starts
/// followers.
pub trait Hook {
    const PHASE: Phase;
    /// Whether the hook's ELB reads wait their turn in the installation's read lane
    /// (`bluegreen_mirror::domain::lane`): AfterInstall's and BeforeAllowTraffic's can wait; AfterAllowTraffic's
    /// few reads verify a flip already made, and do not queue behind other deployments' starts.
    const IN_LANE: bool;
    type Followers: Followers + 'static;
    fn followers(aws: &Aws, config: &Config) -> Self::Followers;
    fn work<'a, L, D, S, F>(
        engine: &'a Engine<L, D, S, F>,
        deployment_id: &'a str,
        budget: Budget,
        t: &'a Tracker,
    ) -> BoxedWork<'a>
    where
        L: LoadBalancers,
        D: Deployments,
        S: StateStore + Coordination,
        F: Followers;
}

/// A use case's future, boxed and type-erased: it is deep, and erasing it keeps the handler's small.
pub type BoxedWork<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = bluegreen_mirror::Result<Epilogue<'a>>> + Send + 'a>>;

/// A hook's type: its phase, the use case it runs, and the followers it can start (`$followers` built by `$make`
/// at cold start). Each impl names one use case, which is what keeps the other hooks' out of its binary.
macro_rules! hook {
    ($(#[$doc:meta])* $name:ident: $phase:ident runs $usecase:ident, lane $lane:literal,
     followers $followers:ty = $make:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl Hook for $name {
            const PHASE: Phase = Phase::$phase;
            const IN_LANE: bool = $lane;
            type Followers = $followers;
            fn followers(aws: &Aws, config: &Config) -> $followers {
                ($make)(aws, config)
            }
            fn work<'a, L, D, S, F>(
                e: &'a Engine<L, D, S, F>,
                id: &'a str,
                budget: Budget,
                t: &'a Tracker,
            ) -> BoxedWork<'a>
            where
                L: LoadBalancers,
                D: Deployments,
                S: StateStore + Coordination,
                F: Followers,
            {
                Box::pin(e.run_hook(Self::PHASE, id, budget, t, e.$usecase(id, budget, t)))
            }
        }
    };
}

hook!(
    /// The `AfterInstall` hook: mirror green's tasks into the private green group.
    AfterInstallHook: AfterInstall runs after_install, lane true, followers NoFollowers = |_: &Aws, _: &Config| NoFollowers
);
hook!(
    /// The `BeforeAllowTraffic` hook: gate on the private side's health, start the follower.
    BeforeAllowTrafficHook: BeforeAllowTraffic runs before_allow_traffic, lane true,
    followers bluegreen_mirror::aws::LambdaFollowers = Aws::followers
);
hook!(
    /// The `AfterAllowTraffic` hook: flip the private route, then converge and record.
    AfterAllowTrafficHook: AfterAllowTraffic runs after_allow_traffic, lane false,
    followers NoFollowers = |_: &Aws, _: &Config| NoFollowers
);

/// Cold start, shared by every function: logging, the configuration (a bad one stops the function here), the
/// clients.
/// The ELB reads of a function `in_lane` wait their turn in the installation's read lane, shared by every process
/// through the state table, unless an invocation keeps them outside it (a follower); the others keep a per-process
/// bucket (see `Elb::with_paced_reads`), the hooks' with a smaller burst than the reconciler's. The operator CLI
/// paces its reads too.
async fn cold_start<F: Followers>(
    burst: bluegreen_mirror::aws::ReadBurst,
    in_lane: bool,
    followers: impl FnOnce(&Aws, &Config) -> F,
) -> Result<(AwsEngine<F>, bluegreen_mirror::aws::CodeDeploy, Metrics), Error> {
    logging::init();
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let aws = Aws::for_function(&config).inspect_err(|e| tracing::error!(error = %e, "cold start failed"))?;
    let followers = followers(&aws, &config);
    let reporter = aws.codedeploy.clone();
    let metrics = Metrics { namespace: config.metrics_namespace.clone(), elb: aws.elb_spend.clone() };
    let mut elb = aws.elb.with_paced_reads(config.elb_reads_per_s, burst);
    if in_lane {
        let lane = bluegreen_mirror::domain::Lane::new(config.elb_reads_per_s, bluegreen_mirror::domain::LANE_BURST);
        elb = elb.with_lane(aws.state.read_lane(lane));
    }
    Ok((Engine::new(elb, aws.codedeploy, aws.state, followers, config), reporter, metrics))
}

/// Where an invocation's metrics go: one Embedded Metric Format line each on stdout, after the report (see
/// `bluegreen_mirror::metrics`), with what the process spent of ELB's budget meanwhile.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub namespace: String,
    pub elb: bluegreen_mirror::aws::ElbCounter,
}

impl Metrics {
    fn print(lines: impl IntoIterator<Item = String>) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for line in lines {
            // A lost metric line is not worth failing an invocation for.
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    fn hook(&self, outcome: &Outcome) {
        Self::print(bluegreen_mirror::metrics::hook_line(
            &self.namespace,
            outcome,
            self.elb.take(),
            bluegreen_mirror::clock::now_ms(),
        ));
    }

    fn reconciler(&self, done: &[bluegreen_mirror::usecase::Reconciled], summary: &harness::Summary, failed: bool) {
        Self::print(bluegreen_mirror::metrics::reconciler_lines(
            &self.namespace,
            done,
            summary,
            failed,
            self.elb.take(),
            bluegreen_mirror::clock::now_ms(),
        ));
    }
}

/// Starts hook `H`'s function: configuration and clients once at cold start (a bad configuration stops it here,
/// before any invocation), then one harness run per invocation.
pub async fn serve<H: Hook>() -> Result<(), lambda_runtime::Error> {
    let (hooks, reporter, metrics) =
        match cold_start(bluegreen_mirror::aws::ReadBurst::Hook, H::IN_LANE, H::followers).await {
            Ok(started) => started,
            // Boxed, as the invocations below: the runtime's futures are deep.
            Err(e) => return Box::pin(serve_refusal::<H>(e)).await,
        };
    let (hooks, reporter, metrics) = (&hooks, &reporter, &metrics);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        // Boxed: the runtime's own futures are deep, and the compiler lays out nested futures to a fixed depth.
        let invocation = Box::pin(handle::<H, _, _, _, _, _>(hooks, reporter, Some(metrics), event));
        invocation.await.map_err(lambda_runtime::Error::from)
    }))
    .await
}

/// The invocation CodeDeploy's event asks of hook `phase`. Without both ids there is nothing CodeDeploy would
/// accept a report for: the error goes to the log.
fn invocation(phase: Phase, event: LambdaEvent<Value>) -> Result<Invocation, Error> {
    let lifecycle = parse_event(event.payload).inspect_err(|e| tracing::error!(error = %e, "event rejected"))?;
    Ok(Invocation {
        phase,
        deployment_id: lifecycle.deployment_id,
        execution_id: lifecycle.lifecycle_event_hook_execution_id,
        deadline: event.context.deadline(),
    })
}

/// A hook that cannot start (its configuration is invalid) cannot mirror anything, but it can still answer
/// CodeDeploy: every invocation reports `Failed` at once, through the same harness, with the message that says
/// what to fix, and publishes `HookFailed`; otherwise CodeDeploy would wait for the hook's timeout (an hour) and no
/// alarm would name the cause. Only a function that cannot even build a CodeDeploy client stops here.
async fn serve_refusal<H: Hook>(cause: Error) -> Result<(), lambda_runtime::Error> {
    let reporter = bluegreen_mirror::aws::Aws::codedeploy_for_function().map_err(|_| cause.to_string())?;
    let namespace = std::env::var(bluegreen_mirror::config::ENV_METRICS_NAMESPACE)
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| bluegreen_mirror::config::DEFAULT_NAMESPACE.to_string());
    let metrics = Metrics { namespace, elb: bluegreen_mirror::aws::ElbCounter::default() };
    // An installation that observes fails no deployment, not even for its own configuration.
    let observe =
        std::env::var(bluegreen_mirror::config::ENV_MODE).ok().and_then(|m| bluegreen_mirror::config::Mode::parse(&m))
            == Some(bluegreen_mirror::config::Mode::Observe);
    let (cause, reporter, metrics) = (&cause.to_string(), &reporter, &metrics);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        Box::pin(refuse::<H, _>(reporter, cause, observe, Some(metrics), event))
            .await
            .map_err(lambda_runtime::Error::from)
    }))
    .await
}

/// One invocation of a hook that could not start: `Failed`, reported exactly once, naming `cause`.
async fn refuse<H: Hook, R: HookReporter>(
    reporter: &R,
    cause: &str,
    observe: bool,
    metrics: Option<&Metrics>,
    event: LambdaEvent<Value>,
) -> Result<Value, Error> {
    let inv = invocation(H::PHASE, event)?;
    let tracker = Tracker::default();
    tracker.observing(observe);
    let outcome = harness::run(reporter, &inv, &tracker, |_| async move {
        Err::<Epilogue<'_>, _>(Error::Misconfigured(format!(
            "{} could not start, so it mirrors nothing and fails every deployment until its configuration is \
             fixed: {cause}",
            H::PHASE
        )))
    })
    .await;
    if let Some(m) = metrics {
        m.hook(&outcome);
    }
    response(outcome)
}

async fn handle<H, L, D, S, F, R>(
    hooks: &Engine<L, D, S, F>,
    reporter: &R,
    metrics: Option<&Metrics>,
    event: LambdaEvent<Value>,
) -> Result<Value, Error>
where
    H: Hook,
    L: LoadBalancers,
    D: Deployments,
    S: StateStore + Coordination,
    F: Followers,
    R: HookReporter,
{
    let inv = invocation(H::PHASE, event)?;
    let tracker = Tracker::default();
    let outcome = harness::run(reporter, &inv, &tracker, |budget| {
        let (inv, tracker) = (&inv, &tracker);
        H::work(hooks, &inv.deployment_id, budget, tracker)
    })
    .await;
    if let Some(m) = metrics {
        m.hook(&outcome);
    }
    response(outcome)
}

/// Reads what woke the reconciler: a follow request, or an EventBridge event (CodeDeploy deployment state change,
/// ECS task state change, the schedule). `Ok(None)` for an event of another kind, which is ignored.
pub fn parse_trigger(payload: Value) -> Result<Option<Trigger>, Error> {
    if let Some(follow) = payload.get(FOLLOW_KEY) {
        let req: FollowRequest = serde_json::from_value(follow.clone())
            .map_err(|e| Error::Event(format!("malformed follow request: {e}")))?;
        return Ok(Some(Trigger::Follow(req)));
    }
    let event: EventBridgeEvent<Value> = serde_json::from_value(payload)
        .map_err(|e| Error::Event(format!("expected an EventBridge event or a follow request: {e}")))?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let at = event.time.and_then(|t| u64::try_from(t.timestamp()).ok());
    // aws_lambda_events has no type for ECS task state changes: its two fields are read from the detail.
    let trigger = match (event.source.as_str(), event.detail_type.as_str()) {
        ("aws.codedeploy", "CodeDeploy Deployment State-change Notification") => {
            let d: CodeDeployEventDetail = serde_json::from_value(event.detail)
                .map_err(|e| Error::Event(format!("malformed CodeDeploy state change: {e}")))?;
            match (d.application, d.deployment_group, d.deployment_id) {
                (Some(application), Some(deployment_group), Some(deployment_id)) => {
                    Some(Trigger::Deployment { application, deployment_group, deployment_id, state: d.state, at })
                }
                _ => {
                    return Err(Error::Event(
                        "CodeDeploy state change without application, deploymentGroup or deploymentId".into(),
                    ))
                }
            }
        }
        ("aws.ecs", "ECS Task State Change") => {
            let d = &event.detail;
            let cluster = text(d, "clusterArn").and_then(|a| a.rsplit('/').next().map(str::to_string));
            let service = text(d, "group").and_then(|g| g.strip_prefix("service:").map(str::to_string));
            match (cluster, service) {
                (Some(cluster), Some(service)) => Some(Trigger::Task { cluster, service }),
                // A standalone task (no service) is nobody's deployment group.
                _ => None,
            }
        }
        ("aws.events", "Scheduled Event") => {
            // The event's own time names the run, so that a retried run checks the same slice of bindings.
            let at = at.unwrap_or_else(bluegreen_mirror::clock::now_s);
            Some(Trigger::Schedule { at })
        }
        _ => None,
    };
    if trigger.is_none() {
        tracing::info!(source = %event.source, detail_type = %event.detail_type, "event ignored");
    }
    Ok(trigger)
}

/// Starts the reconciler function: like [`serve`], one engine for the process, one trigger per invocation.
pub async fn serve_reconciler() -> Result<(), lambda_runtime::Error> {
    let (engine, _, metrics) = cold_start(bluegreen_mirror::aws::ReadBurst::Reconcile, true, Aws::followers).await?;
    let (engine, metrics) = (&engine, &metrics);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        reconcile_event(engine, Some(metrics), event).await.map_err(lambda_runtime::Error::from)
    }))
    .await
}

async fn reconcile_event<L, D, S, F>(
    engine: &Engine<L, D, S, F>,
    metrics: Option<&Metrics>,
    event: LambdaEvent<Value>,
) -> Result<Value, Error>
where
    L: LoadBalancers,
    D: Deployments,
    S: StateStore + Coordination,
    F: Followers,
{
    let started = std::time::Instant::now();
    let Some(trigger) = parse_trigger(event.payload).inspect_err(|e| tracing::error!(error = %e, "event rejected"))?
    else {
        return Ok(serde_json::json!({"ignored": true}));
    };
    let (budget, _) = Budget::before(event.context.deadline());
    let tracker = Tracker::default();
    let mut done = Vec::new();
    let work: std::pin::Pin<Box<dyn std::future::Future<Output = bluegreen_mirror::Result<Value>> + Send + '_>> =
        Box::pin(engine.run_trigger(&trigger, &event.context.request_id, budget, &tracker, &mut done));
    let result = harness::guard(budget, "reconciler", work).await;
    let summary = tracker.snapshot();
    if let Some(m) = metrics {
        m.reconciler(&done, &summary, result.is_err());
    }
    let duration_ms = started.elapsed().as_millis();
    match &result {
        Ok(out) => tracing::info!(target: "bluegreen_mirror::summary", trigger = ?trigger, duration_ms, result = %out,
            notes = ?summary.notes, "reconciler finished"),
        Err(e) => tracing::error!(target: "bluegreen_mirror::summary", trigger = ?trigger, duration_ms,
            error = %harness::error_chain(e), notes = ?summary.notes, "reconciler failed"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eventbridge(source: &str, detail_type: &str, detail: Value) -> Value {
        json!({"version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718", "detail-type": detail_type,
               "source": source, "account": "111122223333", "time": "2026-11-26T12:00:00Z",
               "region": "eu-west-1", "resources": [], "detail": detail})
    }

    #[test]
    fn triggers_are_read_from_eventbridge_and_follow_requests() {
        let deployment = eventbridge(
            "aws.codedeploy",
            "CodeDeploy Deployment State-change Notification",
            json!({"region": "eu-west-1", "deploymentId": "d-1", "instanceGroupId": "x", "deploymentGroup": "web-bg",
                   "application": "web", "state": "FAILURE"}),
        );
        assert_eq!(
            parse_trigger(deployment).ok().flatten(),
            Some(Trigger::Deployment {
                application: "web".into(),
                deployment_group: "web-bg".into(),
                deployment_id: "d-1".into(),
                state: "FAILURE".into(),
                at: Some(1_795_694_400)
            })
        );
        let task = eventbridge(
            "aws.ecs",
            "ECS Task State Change",
            json!({"clusterArn": "arn:aws:ecs:eu-west-1:111122223333:cluster/prod", "group": "service:web",
                   "lastStatus": "RUNNING", "desiredStatus": "RUNNING"}),
        );
        assert_eq!(
            parse_trigger(task).ok().flatten(),
            Some(Trigger::Task { cluster: "prod".into(), service: "web".into() })
        );
        let standalone =
            eventbridge("aws.ecs", "ECS Task State Change", json!({"clusterArn": "c/prod", "group": "family:x"}));
        assert_eq!(parse_trigger(standalone).ok().flatten(), None);
        let schedule = eventbridge("aws.events", "Scheduled Event", json!({}));
        assert_eq!(parse_trigger(schedule).ok().flatten(), Some(Trigger::Schedule { at: 1_795_694_400 }));
        let other = eventbridge("aws.s3", "Object Created", json!({}));
        assert_eq!(parse_trigger(other).ok().flatten(), None);
        let follow = json!({FOLLOW_KEY: {"deployment_id": "d-1", "application": "web", "deployment_group": "web-bg"}});
        assert!(matches!(parse_trigger(follow), Ok(Some(Trigger::Follow(r))) if r.deployment_id == "d-1"));
        for bad in [
            json!({"nothing": 1}),
            json!({FOLLOW_KEY: {"deployment_id": 1}}),
            eventbridge("aws.codedeploy", "CodeDeploy Deployment State-change Notification", json!({"state": "X"})),
        ] {
            assert!(matches!(parse_trigger(bad.clone()), Err(Error::Event(_))), "{bad}");
        }
    }

    /// What a hook reported to CodeDeploy, as CodeDeploy would keep it.
    #[derive(Default)]
    struct Reports(std::sync::Mutex<Vec<(String, String, bluegreen_mirror::ports::HookStatus)>>);

    impl HookReporter for Reports {
        async fn report(
            &self,
            deployment_id: &str,
            execution_id: &str,
            status: bluegreen_mirror::ports::HookStatus,
        ) -> bluegreen_mirror::Result<bluegreen_mirror::ports::Reported> {
            self.0.lock().unwrap().push((deployment_id.into(), execution_id.into(), status));
            Ok(bluegreen_mirror::ports::Reported::Accepted)
        }
    }

    #[tokio::test]
    async fn a_hook_that_cannot_start_reports_failed_once_naming_what_to_fix() {
        let reports = Reports::default();
        let event = |payload: Value| {
            let mut context = lambda_runtime::Context::default();
            context.deadline = bluegreen_mirror::clock::now_ms() + 60_000;
            LambdaEvent::new(payload, context)
        };
        let cause = "configuration error: BLUEGREEN_MIRROR_TABLE is not set";
        let ok = json!({"DeploymentId": "d-1", "LifecycleEventHookExecutionId": "e-1"});
        let out = refuse::<AfterInstallHook, _>(&reports, cause, false, None, event(ok.clone())).await.unwrap();
        assert_eq!(
            *reports.0.lock().unwrap(),
            vec![("d-1".to_string(), "e-1".to_string(), bluegreen_mirror::ports::HookStatus::Failed)]
        );
        let message = out["message"].as_str().unwrap_or_default();
        assert!(message.contains("AfterInstall could not start") && message.contains(cause), "{out}");
        // An event CodeDeploy did not send has no execution to report for: refused, nothing reported.
        assert!(refuse::<AfterInstallHook, _>(&reports, cause, false, None, event(json!({}))).await.is_err());
        assert_eq!(reports.0.lock().unwrap().len(), 1);
        // An installation that observes fails no deployment: the refusal is kept as what would have failed it.
        let out = refuse::<AfterInstallHook, _>(&reports, cause, true, None, event(ok)).await.unwrap();
        assert_eq!(reports.0.lock().unwrap().last().map(|r| r.2), Some(bluegreen_mirror::ports::HookStatus::Succeeded));
        assert!(out["would_be_failure"].as_str().unwrap_or_default().contains(cause), "{out}");
    }

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
