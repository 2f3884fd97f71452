//! Bad input never panics: every payload the functions accept (lifecycle events, EventBridge events and follow
//! requests, the bindings configuration, DynamoDB items written by this or an older version) is generated at
//! random — arbitrary JSON, and JSON shaped like the real thing with fields dropped, retyped or renamed — and
//! each parser must answer with a value or a clear error.
//!
//! `BLUEGREEN_MIRROR_FUZZ_SECONDS=600 cargo test -p bluegreen-mirror-tests --test inputs --release` keeps
//! generating for that long (the default is one round per test).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use bluegreen_mirror::config::Config;
use bluegreen_mirror::domain::{BindingRecord, DeploymentRecord, FollowerLease};
use bluegreen_mirror::Error;
use bluegreen_mirror_hooks::{parse_event, parse_trigger};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{json, Map, Value};

/// Arbitrary JSON, with the keys the parsers look for appearing often.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("DeploymentId".to_string()),
        Just("LifecycleEventHookExecutionId".to_string()),
        Just("source".to_string()),
        Just("detail-type".to_string()),
        Just("detail".to_string()),
        Just("bindings".to_string()),
        Just("bluegreen_mirror_follow".to_string()),
        "[a-z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
        Just(json!("arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/x/1")),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A real document, then damaged: a field removed, replaced by arbitrary JSON, or a key renamed.
fn damaged(base: Value) -> impl Strategy<Value = Value> {
    (any::<prop::sample::Index>(), 0u8..4, any_json()).prop_map(move |(at, how, junk)| {
        let mut doc = base.clone();
        let mut paths = Vec::new();
        collect_paths(&doc, &mut Vec::new(), &mut paths);
        if paths.is_empty() {
            return doc;
        }
        let path = at.get(&paths).clone();
        damage(&mut doc, &path, how, junk);
        doc
    })
}

fn collect_paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            prefix.push(k.clone());
            out.push(prefix.clone());
            collect_paths(child, prefix, out);
            prefix.pop();
        }
    } else if let Value::Array(a) = v {
        for (i, child) in a.iter().enumerate() {
            prefix.push(i.to_string());
            collect_paths(child, prefix, out);
            prefix.pop();
        }
    }
}

fn damage(doc: &mut Value, path: &[String], how: u8, junk: Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut v = doc;
    for p in parents {
        v = match v {
            Value::Object(m) => m.get_mut(p).expect("path exists"),
            Value::Array(a) => &mut a[p.parse::<usize>().expect("index")],
            _ => return,
        };
    }
    if let Value::Object(m) = v {
        match how {
            0 => {
                m.remove(last);
            }
            1 => {
                m.insert(last.clone(), junk);
            }
            2 => {
                if let Some(x) = m.remove(last) {
                    m.insert(format!("{last}X"), x);
                }
            }
            _ => {
                m.insert(last.clone(), Value::Null);
            }
        }
    }
}

fn bindings_doc() -> Value {
    let a = "arn:aws:elasticloadbalancing:eu-west-1:111122223333";
    json!({"bindings": [{
        "application": "web", "deployment_group": "web-bg",
        "pairs": [{"public_target_group": format!("{a}:targetgroup/pub-blue/1"), "private_target_group": format!("{a}:targetgroup/prv-blue/3")},
                  {"public_target_group": format!("{a}:targetgroup/pub-green/2"), "private_target_group": format!("{a}:targetgroup/prv-green/4")}],
        "private_production_route": {"listener": format!("{a}:listener/app/private/9/80")},
        "private_test_route": {"rule": format!("{a}:listener-rule/app/private/9/80/7")},
        "health_timeout_seconds": 300
    }]})
}

fn eventbridge(source: &str, detail_type: &str, detail: Value) -> Value {
    json!({"version": "0", "id": "1", "detail-type": detail_type, "source": source, "account": "1",
           "time": "2026-11-26T12:00:00Z", "region": "eu-west-1", "resources": [], "detail": detail})
}

fn samples() -> Vec<Value> {
    vec![
        json!({"DeploymentId": "d-1", "LifecycleEventHookExecutionId": "e-1"}),
        eventbridge(
            "aws.codedeploy",
            "CodeDeploy Deployment State-change Notification",
            json!({"application": "web", "deploymentGroup": "web-bg", "deploymentId": "d-1", "state": "FAILURE"}),
        ),
        eventbridge(
            "aws.ecs",
            "ECS Task State Change",
            json!({"clusterArn": "arn:aws:ecs:r:1:cluster/c", "group": "service:web"}),
        ),
        eventbridge("aws.events", "Scheduled Event", json!({})),
        json!({"bluegreen_mirror_follow": {"deployment_id": "d-1", "application": "web", "deployment_group": "web-bg"}}),
        bindings_doc(),
        serde_json::to_value(DeploymentRecord::new("d-1", "web", "web-bg", 1)).expect("record"),
    ]
}

/// Every parser on one input: Ok or a clear error, never a panic.
fn parse_everything(v: &Value) -> Result<(), TestCaseError> {
    match parse_event(v.clone()) {
        Ok(e) => prop_assert!(!e.deployment_id.is_empty()),
        Err(e) => prop_assert!(matches!(e, Error::Event(_)) && !e.to_string().is_empty()),
    }
    if let Err(e) = parse_trigger(v.clone()) {
        prop_assert!(matches!(e, Error::Event(_)), "{e}");
    }
    if let Err(e) = Config::parse("table", &v.to_string()) {
        prop_assert!(matches!(e, Error::Config(_)) && e.to_string().len() > 20, "{e}");
    }
    let _ = serde_json::from_value::<DeploymentRecord>(v.clone());
    let _ = serde_json::from_value::<BindingRecord>(v.clone());
    let _ = serde_json::from_value::<FollowerLease>(v.clone());
    Ok(())
}

fn run_for_a_while(strategy: impl Strategy<Value = Value>) {
    let seconds: u64 = std::env::var("BLUEGREEN_MIRROR_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rounds = 0u64;
    loop {
        let mut runner =
            TestRunner::new(RunnerConfig { cases: 512, failure_persistence: None, ..RunnerConfig::default() });
        if let Err(e) = runner.run(&strategy, |v| parse_everything(&v)) {
            panic!("{e}");
        }
        rounds += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    if seconds > 0 {
        eprintln!("{} cases without a finding", rounds * 512);
    }
}

#[test]
fn arbitrary_json_never_panics() {
    run_for_a_while(any_json());
}

#[test]
fn damaged_real_payloads_never_panic() {
    let strategies: Vec<_> = samples().into_iter().map(damaged).collect();
    run_for_a_while(proptest::strategy::Union::new(strategies));
}

#[test]
fn the_real_payloads_parse() {
    let s = samples();
    assert!(parse_event(s[0].clone()).is_ok());
    for trigger in &s[1..5] {
        assert!(matches!(parse_trigger(trigger.clone()), Ok(Some(_))), "{trigger}");
    }
    assert!(Config::parse("table", &s[5].to_string()).is_ok());
}
