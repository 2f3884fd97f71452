//! Typed configuration, read and validated once at cold start so that a misconfigured function fails before it
//! is ever asked to act. The bindings JSON is the documented contract (DESIGN.md, "Bindings"): fields may be
//! added, never renamed, and unknown fields are refused so that a typo cannot silently disable a binding.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

pub use crate::domain::binding::{Binding, Mode, Pair, PrivateSide, RouteRef};
use crate::{Error, Result};

pub const ENV_TABLE: &str = "BLUEGREEN_MIRROR_TABLE";
pub const ENV_BINDINGS: &str = "BLUEGREEN_MIRROR_BINDINGS";
pub const ENV_POLL_MS: &str = "BLUEGREEN_MIRROR_POLL_MS";
pub const ENV_FOLLOWER: &str = "BLUEGREEN_MIRROR_FOLLOWER";
pub const ENV_ELB_READS_PER_S: &str = "BLUEGREEN_MIRROR_ELB_READS_PER_S";
pub const ENV_SCHEDULE_S: &str = "BLUEGREEN_MIRROR_SCHEDULE_S";
pub const ENV_MINUTE_MS: &str = "BLUEGREEN_MIRROR_MINUTE_MS";
pub const ENV_METRICS_NAMESPACE: &str = "BLUEGREEN_MIRROR_METRICS_NAMESPACE";
pub const ENV_MODE: &str = "BLUEGREEN_MIRROR_MODE";

/// The tag (value `true`) the fleet installation's roles require on every private target group, listener and
/// rule they change (`infra/fleet.yaml`); `check` and `bindings apply` verify it on stored bindings.
pub const MANAGED_TAG: &str = "bluegreen-mirror:managed";
/// The metrics' namespace when `BLUEGREEN_MIRROR_METRICS_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "BluegreenMirror";

/// The installation's share of the account's ELB `Describe*` budget, averaged over all functions: a tenth of the
/// bucket's refill (50 a second since March 2026, for everything in the account).
const DEFAULT_ELB_READS_PER_S: f64 = 5.0;
/// How often the schedule wakes the reconciler (the template's `rate(1 minute)`).
const DEFAULT_SCHEDULE: Duration = Duration::from_secs(60);
const DEFAULT_POLL: Duration = Duration::from_secs(2);

/// The bindings are domain values ([`crate::domain::binding`]); a stored one is read here, against the
/// configuration's errors.
impl Binding {
    /// The binding a stored item holds, checked as the environment form is: a bad item fails only its own
    /// binding, with what to fix.
    pub fn from_stored(stored: &crate::domain::StoredBinding) -> Result<Self> {
        let bad = |why: String| {
            Error::Misconfigured(format!(
                "the stored binding {} is not valid: {why}; fix it and apply it again with `bluegreen-mirror bindings \
                 apply`",
                stored.label()
            ))
        };
        let b: Binding = serde_json::from_value(stored.binding.clone()).map_err(|e| bad(e.to_string()))?;
        if (b.application.as_str(), b.deployment_group.as_str())
            != (stored.application.as_str(), stored.deployment_group.as_str())
        {
            return Err(bad(format!("it is stored under {} but names {}", stored.label(), b.label())));
        }
        let problems = b.problems();
        if !problems.is_empty() {
            return Err(bad(problems.join("; ")));
        }
        Ok(b)
    }
}

/// The document `infra/bindings.schema.json` describes; `$schema` lets an editor find that schema.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingsDoc {
    bindings: Vec<Binding>,
    #[serde(rename = "$schema", default)]
    _schema: Option<String>,
}

/// Everything a function needs from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub table: String,
    /// The bindings of the environment form (`BLUEGREEN_MIRROR_BINDINGS`); empty when they are stored.
    pub bindings: Vec<Binding>,
    /// The bindings live in the state table (`bluegreen-mirror bindings apply`): `BLUEGREEN_MIRROR_BINDINGS` is
    /// unset. Lambda caps a function's environment at 4 KB, about three bindings.
    pub stored: bool,
    /// How often waits re-read ELB.
    pub poll_interval: Duration,
    /// The reconciler function BeforeAllowTraffic starts in follow mode (name or ARN); no follow mode without.
    pub follower_function: Option<String>,
    /// The installation's ELB `Describe*` budget, reads per second averaged over all functions.
    pub elb_reads_per_s: f64,
    /// How often the schedule wakes the reconciler: the sweep spreads every binding's check over such periods.
    pub schedule: Duration,
    /// How long one of CodeDeploy's minutes lasts: 60 s on AWS; the rehearsal plays minutes faster.
    pub minute: Duration,
    /// The CloudWatch namespace of the functions' metrics (Embedded Metric Format log lines).
    pub metrics_namespace: String,
    /// The mode of every binding that does not name its own (`BLUEGREEN_MIRROR_MODE`).
    pub mode: Mode,
}

impl Config {
    /// Reads the environment. Call once at cold start; an error here should stop the function from starting.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with_table(None)
    }

    /// [`Config::from_env`] with the state table given (the operator's `--table`) rather than read from
    /// [`ENV_TABLE`].
    pub fn from_env_with_table(table: Option<&str>) -> Result<Self> {
        let table = match table {
            Some(t) => t.to_string(),
            None => std::env::var(ENV_TABLE).map_err(|_| Error::Config(format!("{ENV_TABLE} is not set")))?,
        };
        let mut cfg = match std::env::var(ENV_BINDINGS) {
            Ok(json) => Self::parse(&table, &json)?,
            Err(_) => Self::stored(&table)?,
        };
        if let Ok(ms) = std::env::var(ENV_POLL_MS) {
            let ms: u64 = ms.parse().ok().filter(|ms| (50..=60_000).contains(ms)).ok_or_else(|| {
                Error::Config(format!("{ENV_POLL_MS} must be a number of milliseconds in 50..=60000"))
            })?;
            cfg.poll_interval = Duration::from_millis(ms);
        }
        cfg.follower_function = std::env::var(ENV_FOLLOWER).ok().filter(|f| !f.trim().is_empty());
        if let Ok(v) = std::env::var(ENV_ELB_READS_PER_S) {
            cfg.elb_reads_per_s = v.parse().ok().filter(|r: &f64| (0.1..=40.0).contains(r)).ok_or_else(|| {
                Error::Config(format!("{ENV_ELB_READS_PER_S} must be a number of reads per second in 0.1..=40"))
            })?;
        }
        let whole = |name: &str, range: std::ops::RangeInclusive<u64>| -> Result<Option<u64>> {
            match std::env::var(name) {
                Err(_) => Ok(None),
                Ok(v) => v.parse().ok().filter(|n| range.contains(n)).map(Some).ok_or_else(|| {
                    Error::Config(format!("{name} must be a whole number in {}..={}", range.start(), range.end()))
                }),
            }
        };
        if let Some(s) = whole(ENV_SCHEDULE_S, 1..=3600)? {
            cfg.schedule = Duration::from_secs(s);
        }
        if let Some(ms) = whole(ENV_MINUTE_MS, 100..=60_000)? {
            cfg.minute = Duration::from_millis(ms);
        }
        if let Ok(m) = std::env::var(ENV_MODE) {
            cfg.mode = Mode::parse(&m).ok_or_else(|| {
                Error::Config(format!(
                    "{ENV_MODE}={m:?} must be `enforce` (mirror the private side) or `observe` \
                                       (record what would be done, write nothing)"
                ))
            })?;
        }
        if let Ok(ns) = std::env::var(ENV_METRICS_NAMESPACE) {
            // CloudWatch's rule for namespaces: 1 to 255 of these characters, not starting with "AWS/".
            let valid = !ns.is_empty()
                && ns.len() <= 255
                && !ns.starts_with("AWS/")
                && ns.chars().all(|c| c.is_ascii_alphanumeric() || ".-_/#:".contains(c));
            if !valid {
                return Err(Error::Config(format!(
                    "{ENV_METRICS_NAMESPACE}={ns:?} is not a CloudWatch namespace (1-255 of letters, digits and . - _ / # :, not AWS/...)"
                )));
            }
            cfg.metrics_namespace = ns;
        }
        Ok(cfg)
    }

    /// An installation whose bindings are stored in its table.
    pub fn stored(table: &str) -> Result<Self> {
        if table.trim().is_empty() {
            return Err(Error::Config(format!("{ENV_TABLE} is empty")));
        }
        Ok(Self { stored: true, bindings: Vec::new(), ..Self::defaults(table) })
    }

    fn defaults(table: &str) -> Self {
        Self {
            table: table.to_string(),
            bindings: Vec::new(),
            stored: false,
            poll_interval: DEFAULT_POLL,
            follower_function: None,
            elb_reads_per_s: DEFAULT_ELB_READS_PER_S,
            schedule: DEFAULT_SCHEDULE,
            minute: Duration::from_secs(60),
            metrics_namespace: DEFAULT_NAMESPACE.to_string(),
            mode: Mode::Enforce,
        }
    }

    /// The mode `b` runs in: its own, else the installation's.
    pub fn mode_of(&self, b: &Binding) -> Mode {
        b.mode.unwrap_or(self.mode)
    }

    /// Parses and validates the table name and the bindings JSON, reporting every problem at once.
    pub fn parse(table: &str, bindings_json: &str) -> Result<Self> {
        if table.trim().is_empty() {
            return Err(Error::Config(format!("{ENV_TABLE} is empty")));
        }
        let doc: BindingsDoc = serde_json::from_str(bindings_json)
            .map_err(|e| Error::Config(format!("{ENV_BINDINGS} is not a valid bindings document: {e}")))?;
        if doc.bindings.is_empty() {
            return Err(Error::Config(format!("{ENV_BINDINGS} declares no binding")));
        }
        let mut problems: Vec<String> = doc.bindings.iter().flat_map(Binding::problems).collect();
        let mut groups = HashSet::new();
        let mut private_owner: std::collections::HashMap<&str, String> = Default::default();
        for b in &doc.bindings {
            if !groups.insert((&b.application, &b.deployment_group)) {
                problems.push(format!("binding {} is declared twice", b.label()));
            }
            for tg in b.all_private_target_groups() {
                if let Some(other) = private_owner.insert(tg, b.label()) {
                    problems.push(format!("private target group {tg} is bound by both {other} and {}", b.label()));
                }
            }
        }
        for b in &doc.bindings {
            for tg in b.public_target_groups() {
                if let Some(owner) = private_owner.get(tg) {
                    problems.push(format!("target group {tg} is public in {} and private in {owner}", b.label()));
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        Ok(Self { bindings: doc.bindings, ..Self::defaults(table) })
    }

    /// Parses a bindings document (`{"bindings": [...]}`, the environment form's JSON) as `bindings apply`
    /// reads it: every binding checked alone and against the others, every problem reported at once.
    pub fn parse_bindings(json: &str) -> Result<Vec<Binding>> {
        Self::parse("-", json).map(|c| c.bindings).map_err(|e| match e {
            Error::Config(m) => Error::Config(m.replace(ENV_BINDINGS, "the bindings file")),
            e => e,
        })
    }

    /// The binding for a CodeDeploy application and deployment group.
    pub fn binding(&self, application: &str, deployment_group: &str) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.application == application && b.deployment_group == deployment_group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RouteStyle;

    const A: &str = "arn:aws:elasticloadbalancing:eu-west-1:111122223333";

    fn doc(extra: &str) -> String {
        format!(
            r#"{{"bindings":[{{"application":"web","deployment_group":"web-bg",
            "pairs":[{{"public_target_group":"{A}:targetgroup/pub-blue/1","private_target_group":"{A}:targetgroup/prv-blue/3"}},
                     {{"public_target_group":"{A}:targetgroup/pub-green/2","private_target_group":"{A}:targetgroup/prv-green/4"}}],
            "private_production_route":{{"listener":"{A}:listener/app/private/9/80"}}{extra}}}]}}"#
        )
    }

    #[test]
    fn parses_the_documented_shape() {
        let extra = format!(
            r#","private_test_route":{{"rule":"{A}:listener-rule/app/private/9/8080/77"}},"health_timeout_seconds":120"#
        );
        let cfg = Config::parse("table", &doc(&extra));
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let b = cfg.binding("web", "web-bg");
        assert!(b.is_some());
        let b = b.cloned().unwrap_or_else(|| panic!("binding"));
        assert_eq!(b.health_timeout_seconds, 120);
        assert_eq!(
            b.private_of(&format!("{A}:targetgroup/pub-green/2")),
            Some(&*format!("{A}:targetgroup/prv-green/4"))
        );
        assert_eq!(b.public_named("pub-blue"), Some(&*format!("{A}:targetgroup/pub-blue/1")));
        assert_eq!(b.private_load_balancer().as_deref(), Some(&*format!("{A}:loadbalancer/app/private/9")));
        assert!(matches!(b.private_test_route, Some(RouteRef::Rule(_))));
        assert!(cfg.binding("web", "other").is_none());
        let defaulted = Config::parse("t", &doc("")).map(|c| c.bindings[0].health_timeout_seconds);
        assert_eq!(defaulted.ok(), Some(300));
    }

    /// A second private side: an NLB with its own pair of groups and routes.
    fn nlb_side(blue: &str, green: &str, prod: &str) -> String {
        format!(
            r#","additional_private_sides":[{{"pairs":[
                {{"public_target_group":"{A}:targetgroup/pub-blue/1","private_target_group":"{A}:targetgroup/{blue}"}},
                {{"public_target_group":"{A}:targetgroup/pub-green/2","private_target_group":"{A}:targetgroup/{green}"}}],
              "private_production_route":{{"listener":"{A}:listener/net/link/7/{prod}"}},
              "private_test_route":{{"listener":"{A}:listener/net/link/7/8443"}}}}]"#
        )
    }

    fn no_test_route() -> String {
        let with = nlb_side("nlb-blue/5", "nlb-green/6", "443");
        let cut = with.find(",\n              \"private_test_route\"").unwrap_or(with.len());
        format!("{}}}]", &with[..cut])
    }

    #[test]
    fn a_binding_with_two_private_sides_yields_one_view_per_side() {
        let cfg =
            Config::parse("t", &doc(&nlb_side("nlb-blue/5", "nlb-green/6", "443"))).unwrap_or_else(|e| panic!("{e}"));
        let b = &cfg.bindings[0];
        assert_eq!(b.side_count(), 2);
        let sides = b.sides();
        assert_eq!(sides.len(), 2);
        assert_eq!((sides[0].side, sides[1].side), (0, 1));
        assert!(sides.iter().all(|s| s.additional_private_sides.is_empty()));
        assert_eq!(sides[1].side_label(), "web/web-bg side 2");
        assert_eq!(sides[1].style(), RouteStyle::Single);
        assert_eq!(
            sides[1].private_of(&format!("{A}:targetgroup/pub-green/2")),
            Some(&*format!("{A}:targetgroup/nlb-green/6"))
        );
        assert_eq!(b.all_private_target_groups().len(), 4);
        assert_eq!(b.all_private_routes().len(), 3);
        // The single-side form is one side, and serializes as it did.
        let one = Config::parse("t", &doc("")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.bindings[0].sides(), one.bindings.clone());
        let json = serde_json::to_string(&one.bindings[0]).unwrap_or_default();
        assert!(!json.contains("additional_private_sides") && !json.contains("\"side\""), "{json}");
    }

    #[test]
    fn refuses_sides_that_overlap_or_disagree() {
        let cases = [
            (nlb_side("prv-blue/3", "nlb-green/6", "443"), "appears twice"),
            (
                nlb_side("nlb-blue/5", "nlb-green/6", "443").replace("pub-green/2", "pub-other/9"),
                "same two public target groups",
            ),
            (
                nlb_side("nlb-blue/5", "nlb-green/6", "443")
                    .replace(",\n              \"private_test_route\"", ",\"x_\""),
                "unknown field `x_",
            ),
            (no_test_route(), "side 2: the private load balancer is an NLB"),
            (
                nlb_side("nlb-blue/5", "nlb-green/6", "443")
                    .replace("listener/net/link/7/443", "listener/app/private/9/80"),
                "is another side's too",
            ),
        ];
        for (extra, want) in cases {
            let err = Config::parse("t", &doc(&extra)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "{extra}\n→ {err:?}, wanted {want:?}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "not a valid bindings document"),
            (r#"{"bindings":[]}"#.into(), "declares no binding"),
            (doc(r#","colour":"blue""#), "unknown field"),
            (doc(r#","health_timeout_seconds":0"#), "health_timeout_seconds"),
            (doc("").replace("prv-green/4", "prv-blue/3"), "appears twice"),
            (doc("").replace(":targetgroup/pub-blue/1", ":loadbalancer/app/x/1"), "not a target group ARN"),
            (doc("").replace("listener/app/private/9/80", "listener/app/private"), "not a valid ARN"),
            (doc("").replace("listener/app/", "listener/net/"), "NLB"),
            (
                doc(&format!(r#","private_test_route":{{"listener":"{A}:listener/app/other/5/8080"}}"#)),
                "different load balancers",
            ),
        ];
        for (json, want) in cases {
            let err = Config::parse("t", &json).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "{json}\n→ {err:?}, wanted {want:?}");
        }
        let one = doc("");
        let inner = one.trim_start_matches(r#"{"bindings":["#).trim_end_matches("]}");
        let twice = format!(r#"{{"bindings":[{inner},{inner}]}}"#);
        let err = Config::parse("t", &twice).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("declared twice") && err.contains("bound by both"), "{err}");
        assert!(Config::parse(" ", &doc("")).is_err());
    }
}
