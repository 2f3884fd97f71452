//! The functions' metrics in CloudWatch Embedded Metric Format: one JSON log line per document, which CloudWatch
//! Logs turns into metrics. No API call and nothing on a hook's critical path: the line is written after the
//! report. This module only builds the lines (pure); the functions print them.
//!
//! Metrics (units in brackets), with the dimension sets each is published under:
//! - per hook invocation, by (Application, DeploymentGroup), by (Hook), and over the installation:
//!   `HookDuration` [ms], `HookFailed` [0/1], `TargetsRegistered`, `TargetsDeregistered`, `ElbCalls`,
//!   `ElbThrottles`, `ElbLaneWait` [ms: how long its reads waited in the installation's read lane], and for
//!   AfterAllowTraffic `FlipSkew` [ms] (the private route written after the public one,
//!   as the hook sees it);
//! - per binding the reconciler reconciled, by (Application, DeploymentGroup) and over the installation:
//!   `BindingsOutOfSync` [0/1: it found the private side differing from the public one], `TargetsRegistered`,
//!   `TargetsDeregistered`;
//! - per follower invocation, by (Application, DeploymentGroup): `FollowerWeightLag` [ms, one value per public
//!   move mirrored];
//! - per reconciler invocation, by (Function) and over the installation: `ReconcilerErrors` [0/1],
//!   `ReconcilerSteppedAside` [0/1: its reads stepped aside from the busy read lane, its check left to a later
//!   sweep], `ElbCalls`, `ElbThrottles`, `ElbLaneWait` [ms];
//! - shadow mode, where a binding observes: per hook invocation, by (Application, DeploymentGroup) and over the
//!   installation, `ObserveWouldFail` [0/1: an enforcing hook would have reported Failed] and `ObserveFindings`
//!   [the actions it would have taken on the private side]; per reconciler invocation, by (Function) and over the
//!   installation, `ObserveFindings` (a follower's also by its binding).

use serde_json::{json, Map, Value};

use crate::domain::ElbSpend;
use crate::harness::{Outcome, Summary};
use crate::ports::HookStatus;
use crate::usecase::Reconciled;

#[derive(Debug, Clone, Copy)]
enum Unit {
    Milliseconds,
    Count,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Milliseconds => "Milliseconds",
            Unit::Count => "Count",
        }
    }
}

/// One EMF document: dimensions' values, the dimension sets the metrics are published under, the metrics.
#[derive(Debug, Default)]
struct Document {
    fields: Map<String, Value>,
    dimension_sets: Vec<Vec<&'static str>>,
    metrics: Vec<(&'static str, Unit)>,
}

impl Document {
    fn dimension(mut self, name: &'static str, value: &str) -> Self {
        self.fields.insert(name.to_string(), Value::from(value));
        self
    }

    fn under(mut self, sets: &[&[&'static str]]) -> Self {
        self.dimension_sets = sets.iter().map(|s| s.to_vec()).collect();
        self
    }

    fn metric(mut self, name: &'static str, unit: Unit, value: f64) -> Self {
        self.fields.insert(name.to_string(), json!(value));
        self.metrics.push((name, unit));
        self
    }

    /// A metric with several values in one line (EMF takes up to 100); none: the metric is left out.
    fn values(mut self, name: &'static str, unit: Unit, values: &[u64]) -> Self {
        if !values.is_empty() {
            let v: Vec<u64> = values.iter().take(100).copied().collect();
            self.fields.insert(name.to_string(), json!(v));
            self.metrics.push((name, unit));
        }
        self
    }

    fn property(mut self, name: &str, value: Value) -> Self {
        self.fields.insert(name.to_string(), value);
        self
    }

    fn render(self, namespace: &str, timestamp_ms: u64) -> Option<String> {
        if self.metrics.is_empty() {
            return None;
        }
        let metrics: Vec<Value> = self.metrics.iter().map(|(n, u)| json!({"Name": n, "Unit": u.as_str()})).collect();
        let mut doc = self.fields;
        doc.insert(
            "_aws".to_string(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": self.dimension_sets, "Metrics": metrics}],
            }),
        );
        serde_json::to_string(&Value::Object(doc)).ok()
    }
}

const BY_BINDING: &[&str] = &["Application", "DeploymentGroup"];
const OVERALL: &[&str] = &[];

/// What a hook's metrics carry as the application and deployment group when CodeDeploy could not be asked which
/// they are (the configuration refused at cold start, GetDeployment failing): the alarm that names the deployment
/// group still fires, naming this.
pub const UNKNOWN_GROUP: &str = "(unknown)";

/// The line for one hook invocation, by binding (the deployment group CodeDeploy named, bound or not; see
/// [`UNKNOWN_GROUP`]), by hook and over the installation: the `HookFailed` alarm groups by the first, so that a
/// page names the service.
pub fn hook_line(namespace: &str, outcome: &Outcome, elb: ElbSpend, timestamp_ms: u64) -> Vec<String> {
    let s = &outcome.summary;
    let mut doc = Document::default()
        .dimension("Hook", outcome.phase.as_str())
        .dimension("Application", s.application.as_deref().unwrap_or(UNKNOWN_GROUP))
        .dimension("DeploymentGroup", s.deployment_group.as_deref().unwrap_or(UNKNOWN_GROUP))
        .under(&[BY_BINDING, &["Hook"], OVERALL]);
    let failed = matches!(outcome.status, HookStatus::Failed);
    doc = doc
        .metric("HookDuration", Unit::Milliseconds, outcome.duration_ms as f64)
        .metric("HookFailed", Unit::Count, if failed { 1.0 } else { 0.0 })
        .metric("TargetsRegistered", Unit::Count, s.registered as f64)
        .metric("TargetsDeregistered", Unit::Count, s.deregistered as f64)
        .metric("ElbCalls", Unit::Count, elb.calls as f64)
        .metric("ElbThrottles", Unit::Count, elb.throttles as f64)
        .metric("ElbLaneWait", Unit::Milliseconds, elb.lane_wait_ms as f64)
        .property("deployment_id", Value::from(outcome.deployment_id.as_str()));
    if let Some(skew) = s.flip_skew_ms {
        doc = doc.metric("FlipSkew", Unit::Milliseconds, skew as f64);
    }
    let mut lines: Vec<String> = doc.render(namespace, timestamp_ms).into_iter().collect();
    if s.observed {
        lines.extend(
            Document::default()
                .dimension("Application", s.application.as_deref().unwrap_or(UNKNOWN_GROUP))
                .dimension("DeploymentGroup", s.deployment_group.as_deref().unwrap_or(UNKNOWN_GROUP))
                .under(&[BY_BINDING, OVERALL])
                .metric("ObserveWouldFail", Unit::Count, if s.would_be_failure.is_some() { 1.0 } else { 0.0 })
                .metric("ObserveFindings", Unit::Count, s.would_be.len() as f64)
                .render(namespace, timestamp_ms),
        );
    }
    lines
}

/// The lines for one reconciler invocation: one per binding it reconciled, one for the follower's lag when it
/// followed, and one for the invocation.
pub fn reconciler_lines(
    namespace: &str,
    done: &[Reconciled],
    summary: &Summary,
    failed: bool,
    elb: ElbSpend,
    timestamp_ms: u64,
) -> Vec<String> {
    let mut lines: Vec<String> = done
        .iter()
        .filter_map(|r| {
            Document::default()
                .dimension("Application", &r.application)
                .dimension("DeploymentGroup", &r.deployment_group)
                .under(&[BY_BINDING, OVERALL])
                .metric(
                    "BindingsOutOfSync",
                    Unit::Count,
                    if r.changed() || !r.held_back.is_empty() { 1.0 } else { 0.0 },
                )
                .metric("TargetsRegistered", Unit::Count, r.registered as f64)
                .metric("TargetsDeregistered", Unit::Count, r.deregistered as f64)
                .render(namespace, timestamp_ms)
        })
        .collect();
    if let (Some(a), Some(g)) = (&summary.application, &summary.deployment_group) {
        let mut doc = Document::default()
            .dimension("Application", a)
            .dimension("DeploymentGroup", g)
            .under(&[BY_BINDING])
            .values("FollowerWeightLag", Unit::Milliseconds, &summary.weight_lag_ms);
        if summary.observed {
            doc = doc.metric("ObserveFindings", Unit::Count, summary.would_be.len() as f64);
        }
        lines.extend(doc.render(namespace, timestamp_ms));
    }
    lines.extend(
        Document::default()
            .dimension("Function", "reconciler")
            .under(&[&["Function"], OVERALL])
            .metric("ReconcilerErrors", Unit::Count, if failed { 1.0 } else { 0.0 })
            .metric("ReconcilerSteppedAside", Unit::Count, if summary.stepped_aside { 1.0 } else { 0.0 })
            .metric("ElbCalls", Unit::Count, elb.calls as f64)
            .metric("ElbThrottles", Unit::Count, elb.throttles as f64)
            .metric("ElbLaneWait", Unit::Milliseconds, elb.lane_wait_ms as f64)
            .metric("ObserveFindings", Unit::Count, summary.would_be.len() as f64)
            .render(namespace, timestamp_ms),
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Phase;

    fn outcome(status: HookStatus, resolved: bool) -> Outcome {
        let mut summary = Summary { registered: 3, flip_skew_ms: Some(42), ..Summary::default() };
        if resolved {
            summary.application = Some("web".into());
            summary.deployment_group = Some("web-bg".into());
        }
        Outcome {
            phase: Phase::AfterAllowTraffic,
            deployment_id: "d-1".into(),
            status,
            message: None,
            reported: None,
            report_error: None,
            duration_ms: 120,
            summary,
        }
    }

    fn parse(line: &str) -> Value {
        serde_json::from_str(line).unwrap_or(Value::Null)
    }

    #[test]
    fn a_hook_line_is_emf_with_every_metric_named_and_valued() {
        let line = hook_line(
            "Ns",
            &outcome(HookStatus::Failed, true),
            ElbSpend { calls: 9, throttles: 1, lane_wait_ms: 2500 },
            7,
        );
        assert_eq!(line.len(), 1, "no shadow-mode line for an enforcing binding: {line:?}");
        let doc = parse(line.first().map_or("", String::as_str));
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(doc["_aws"]["Timestamp"], 7);
        assert_eq!(cw["Namespace"], "Ns");
        assert_eq!(cw["Dimensions"], json!([["Application", "DeploymentGroup"], ["Hook"], []]));
        assert_eq!((doc["Application"].clone(), doc["DeploymentGroup"].clone()), (json!("web"), json!("web-bg")));
        assert_eq!(doc["Hook"], "AfterAllowTraffic");
        // Every metric declared has its value at the top level, as EMF requires.
        let names: Vec<&str> =
            cw["Metrics"].as_array().into_iter().flatten().filter_map(|m| m["Name"].as_str()).collect();
        for n in &names {
            assert!(doc.get(*n).is_some_and(Value::is_number), "{n} has no value");
        }
        assert_eq!(doc["HookFailed"], 1.0);
        assert_eq!(doc["FlipSkew"], 42.0);
        assert_eq!((doc["ElbCalls"].clone(), doc["ElbThrottles"].clone()), (json!(9.0), json!(1.0)));
        assert_eq!(doc["ElbLaneWait"], 2500.0);
        assert_eq!(doc["TargetsRegistered"], 3.0);
    }

    #[test]
    fn an_unresolved_deployment_is_counted_under_an_unknown_group_too() {
        let line = hook_line("Ns", &outcome(HookStatus::Failed, false), ElbSpend::default(), 0);
        let doc = parse(line.first().map_or("", String::as_str));
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Application", "DeploymentGroup"], ["Hook"], []])
        );
        assert_eq!(doc["HookFailed"], 1.0);
        assert_eq!(
            (doc["Application"].clone(), doc["DeploymentGroup"].clone()),
            (json!("(unknown)"), json!("(unknown)"))
        );
    }

    #[test]
    fn an_observing_hook_counts_what_it_would_have_done_and_whether_it_would_have_failed() {
        let mut o = outcome(HookStatus::Succeeded, true);
        o.summary.observed = true;
        o.summary.would_be_failure = Some("replacement tasks did not become healthy".into());
        o.summary.would_be = vec![
            crate::domain::WouldBe {
                at_ms: 1,
                by: "AfterInstall".into(),
                action: "register 10.0.0.1:80".into(),
                route: None,
                to: None,
            },
            crate::domain::WouldBe {
                at_ms: 2,
                by: "AfterInstall".into(),
                action: "set listener".into(),
                route: None,
                to: None,
            },
        ];
        let lines = hook_line("Ns", &o, ElbSpend::default(), 0);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(parse(&lines[0])["HookFailed"], 0.0, "shadow mode reports a success to CodeDeploy");
        let doc = parse(&lines[1]);
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Application", "DeploymentGroup"], []]));
        assert_eq!((doc["ObserveWouldFail"].clone(), doc["ObserveFindings"].clone()), (json!(1.0), json!(2.0)));
        assert_eq!(doc["DeploymentGroup"], "web-bg");
    }

    #[test]
    fn the_reconciler_reports_each_binding_and_the_followers_lag() {
        let r = |application: &str, registered| Reconciled {
            binding: format!("{application}/g"),
            application: application.into(),
            deployment_group: "g".into(),
            registered,
            ..Reconciled::default()
        };
        let summary = Summary {
            application: Some("web".into()),
            deployment_group: Some("g".into()),
            weight_lag_ms: vec![120, 340],
            ..Summary::default()
        };
        let lines = reconciler_lines(
            "Ns",
            &[r("web", 2), r("api", 0)],
            &summary,
            false,
            ElbSpend { calls: 4, throttles: 0, lane_wait_ms: 0 },
            1,
        );
        let docs: Vec<Value> = lines.iter().map(|l| parse(l)).collect();
        assert_eq!(docs.len(), 4);
        assert_eq!((docs[0]["Application"].clone(), docs[0]["BindingsOutOfSync"].clone()), (json!("web"), json!(1.0)));
        assert_eq!((docs[1]["Application"].clone(), docs[1]["BindingsOutOfSync"].clone()), (json!("api"), json!(0.0)));
        assert_eq!(docs[2]["FollowerWeightLag"], json!([120, 340]));
        assert_eq!((docs[3]["ReconcilerErrors"].clone(), docs[3]["ElbCalls"].clone()), (json!(0.0), json!(4.0)));
        assert_eq!(docs[3]["ReconcilerSteppedAside"], json!(0.0));
    }

    #[test]
    fn no_lag_no_lag_line() {
        let aside = Summary { stepped_aside: true, ..Summary::default() };
        let lines = reconciler_lines("Ns", &[], &aside, true, ElbSpend::default(), 1);
        assert_eq!(lines.len(), 1);
        assert_eq!(parse(&lines[0])["ReconcilerErrors"], 1.0);
        assert_eq!(parse(&lines[0])["ReconcilerSteppedAside"], 1.0);
    }
}
