//! What the hooks write to DynamoDB: one record per binding (its current view) and one per deployment (phases,
//! target groups involved, the planned flip, outcome). Records carry a version for conditional writes. They are
//! a log and a fast path, never the truth: the truth is re-read from ELB whenever a record is missing or stale.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::route::Route;

/// The lifecycle events the hooks run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    AfterInstall,
    BeforeAllowTraffic,
    AfterAllowTraffic,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::AfterInstall => "AfterInstall",
            Phase::BeforeAllowTraffic => "BeforeAllowTraffic",
            Phase::AfterAllowTraffic => "AfterAllowTraffic",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One action the functions would have taken on a private side in observe mode (shadow mode), and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WouldBe {
    /// When it would have been taken (ms since the epoch).
    pub at_ms: u64,
    /// The function that found it (`AfterInstall`, `follower`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
    pub action: String,
    /// A route change: which route (`production` or `test`, with the side after the first: `production 2`) and
    /// what it would have been set to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Route>,
}

impl WouldBe {
    /// Whether `earlier` already holds this action: for a route's change, the route's last change there sends the
    /// same traffic; for anything else, the same action is there.
    pub fn repeats(&self, earlier: &[WouldBe]) -> bool {
        match (&self.route, &self.to) {
            (Some(which), Some(to)) => earlier
                .iter()
                .rev()
                .find(|x| x.route.as_ref() == Some(which))
                .and_then(|x| x.to.as_ref())
                .is_some_and(|last| last.same_action(to)),
            _ => earlier.iter().any(|x| x.action == self.action),
        }
    }
}

/// How long deployment records are kept before DynamoDB's TTL retires them.
pub const DEPLOYMENT_RECORD_TTL_SECS: u64 = 30 * 24 * 3600;

/// One deployment as the hooks saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeploymentRecord {
    pub deployment_id: String,
    pub application: String,
    pub deployment_group: String,
    /// Incremented on every write; the store only accepts a write whose version is one above the stored one.
    pub version: u64,
    /// Phase name → completion time (ms since the epoch), for each hook that finished its work.
    pub phases: BTreeMap<String, u64>,
    pub public_production_listener: Option<String>,
    pub public_test_listener: Option<String>,
    pub green_public_target_group: Option<String>,
    pub green_private_target_group: Option<String>,
    pub blue_private_target_group: Option<String>,
    pub targets_mirrored: usize,
    /// The private production route as it was before the flip, to restore if the flip cannot be completed.
    pub private_route_before: Option<Route>,
    /// The private production route AfterAllowTraffic is to set (the fast path of the flip).
    pub planned_private_route: Option<Route>,
    /// When the private production route was changed (ms since the epoch), for the flip-skew metric.
    pub private_flip_at_ms: Option<u64>,
    /// `succeeded` or `failed`, with the last hook's message.
    pub outcome: Option<String>,
    pub last_message: Option<String>,
    /// DynamoDB TTL (seconds since the epoch).
    pub expires_at: u64,
    /// The binding this deployment was resolved to, as BeforeAllowTraffic read it: AfterAllowTraffic takes it
    /// from here so that a stored binding costs its critical path no read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<serde_json::Value>,
    /// The binding's other private sides (its `additional_private_sides`, in order): the fields above that are
    /// about the private side describe its first one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_sides: Vec<SideRecord>,
    /// BeforeAllowTraffic asked for a follower: the private routes have likely been flipped when AfterAllowTraffic
    /// comes, which then reads them before writing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub followed: bool,
    /// The binding's record as BeforeAllowTraffic read it (version 0: there was none), so that AfterAllowTraffic
    /// writes it over that version without reading it first; a write lost to another writer reads it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding_record: Option<BindingRecord>,
    /// The binding observed (shadow mode): nothing was written to its private side, and what would have been is
    /// in `would_be`, in the order it was found; a hook that would have failed says why in `would_be_failure`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub observed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_be: Vec<WouldBe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_be_failure: Option<String>,
    /// The public production route at each move an observed binding's follower read (ms since the epoch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_moves: Vec<(u64, Route)>,
}

/// One private side of a deployment: its groups and its flip.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SideRecord {
    /// The side's private production route (ARN), to tell sides apart when reading the record.
    pub private_production_route: Option<String>,
    pub green_private_target_group: Option<String>,
    pub blue_private_target_group: Option<String>,
    pub private_route_before: Option<Route>,
    pub planned_private_route: Option<Route>,
}

impl DeploymentRecord {
    pub fn new(deployment_id: &str, application: &str, deployment_group: &str, now_ms: u64) -> Self {
        Self {
            deployment_id: deployment_id.to_string(),
            application: application.to_string(),
            deployment_group: deployment_group.to_string(),
            expires_at: now_ms / 1000 + DEPLOYMENT_RECORD_TTL_SECS,
            ..Self::default()
        }
    }

    pub fn key(deployment_id: &str) -> String {
        format!("deployment#{deployment_id}")
    }

    /// Adds would-be actions not already on record: a later function finds again what an earlier one would have
    /// done, the private side it reads being still untouched. A route's change is already on record when the
    /// route's last recorded change sends the same traffic; a registration, when the same one is.
    pub fn add_would_be(&mut self, found: impl IntoIterator<Item = WouldBe>) {
        for w in found {
            if !w.repeats(&self.would_be) {
                self.would_be.push(w);
            }
        }
    }

    /// Adds public moves read by a follower, leaving out one that repeats the last on record (a successor's
    /// first read).
    pub fn add_public_moves(&mut self, moves: impl IntoIterator<Item = (u64, Route)>) {
        for (at, route) in moves {
            if !self.public_moves.last().is_some_and(|(_, last)| last.same_action(&route)) {
                self.public_moves.push((at, route));
            }
        }
    }

    /// Side `i` (0: the record's own fields).
    pub fn side(&self, i: usize) -> Option<SideRecord> {
        match i {
            0 => Some(SideRecord {
                private_production_route: None,
                green_private_target_group: self.green_private_target_group.clone(),
                blue_private_target_group: self.blue_private_target_group.clone(),
                private_route_before: self.private_route_before.clone(),
                planned_private_route: self.planned_private_route.clone(),
            }),
            i => self.additional_sides.get(i - 1).cloned(),
        }
    }

    /// Writes side `i` (0: the record's own fields), growing the list of other sides as needed.
    pub fn set_side(&mut self, i: usize, side: SideRecord) {
        if i == 0 {
            self.green_private_target_group = side.green_private_target_group;
            self.blue_private_target_group = side.blue_private_target_group;
            self.private_route_before = side.private_route_before;
            self.planned_private_route = side.planned_private_route;
            return;
        }
        if self.additional_sides.len() < i {
            self.additional_sides.resize(i, SideRecord::default());
        }
        self.additional_sides[i - 1] = side;
    }
}

/// A binding's current view of the private side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BindingRecord {
    pub application: String,
    pub deployment_group: String,
    pub version: u64,
    /// The private target group that carries production traffic after the last completed flip.
    pub live_private_target_group: Option<String>,
    pub last_deployment: Option<String>,
    pub updated_at_ms: u64,
}

impl BindingRecord {
    /// A binding's record before its first write (version 0).
    pub fn new(application: &str, deployment_group: &str) -> Self {
        Self { application: application.to_string(), deployment_group: deployment_group.to_string(), ..Self::default() }
    }

    pub fn key(application: &str, deployment_group: &str) -> String {
        format!("binding#{application}#{deployment_group}")
    }
}

/// A binding kept in the state table, managed with `bluegreen-mirror bindings`: the binding's JSON as applied,
/// parsed and validated by whoever reads it, so that one bad item fails only its own binding's deployments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredBinding {
    pub application: String,
    pub deployment_group: String,
    pub version: u64,
    pub binding: serde_json::Value,
    pub updated_at_ms: u64,
    /// Who applied it (the caller's identity, as the CLI knows it), for the operator reading `bindings list`.
    pub updated_by: Option<String>,
}

impl StoredBinding {
    /// The item kind, and the prefix of every stored binding's key.
    pub const KIND: &'static str = "config";

    pub fn key(application: &str, deployment_group: &str) -> String {
        format!("config#{application}#{deployment_group}")
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.application, self.deployment_group)
    }
}

/// The lease that makes one reconciler invocation *the* follower of a binding's deployment. A follower renews it
/// (a version-checked write) about once a second; another invocation may take it when it is stale or when its
/// holder asked to hand over (before its Lambda deadline).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FollowerLease {
    pub application: String,
    pub deployment_group: String,
    pub deployment_id: String,
    pub owner: String,
    pub heartbeat_ms: u64,
    pub handover_requested: bool,
    /// When the follower last saw the public weights move (ms since the epoch; 0: not yet), so that a successor
    /// paces its reads by the same schedule instead of starting over.
    pub last_move_ms: u64,
    pub version: u64,
}

impl FollowerLease {
    /// How long a lease holds without a heartbeat.
    pub const STALE_AFTER_MS: u64 = 5_000;

    pub fn key(application: &str, deployment_group: &str) -> String {
        format!("follower#{application}#{deployment_group}")
    }

    /// Whether `owner`, following `deployment_id`, may take this lease at `now_ms`.
    pub fn can_be_taken_by(&self, owner: &str, deployment_id: &str, now_ms: u64) -> bool {
        self.owner == owner
            || self.owner.is_empty()
            || self.handover_requested
            || self.deployment_id != deployment_id
            || now_ms.saturating_sub(self.heartbeat_ms) > Self::STALE_AFTER_MS
    }
}

/// The installation's followers as one item of the table counts them: each live follower's last heartbeat by
/// owner. Every follower writes its own entry now and then and reads the whole back in the same call, so that it
/// paces its ELB reads as one of however many follow at once ([`crate::domain::pacing::follower_reads_per_s`]):
/// the budget is the installation's, not each process's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    pub heartbeats: BTreeMap<String, u64>,
}

/// One follower's change to the census: its heartbeat, or its leaving; and the entries of followers long gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CensusEntry {
    pub owner: String,
    /// `None`: the follower is done and leaves the census.
    pub heartbeat_ms: Option<u64>,
    /// Entries to drop (a follower that ended without leaving, its process gone).
    pub forget: Vec<String>,
}

impl Census {
    pub const KEY: &'static str = "census#followers";
    /// How often a follower writes its heartbeat to the census.
    pub const BEAT_MS: u64 = 10_000;
    /// An entry counts while its heartbeat is this recent (three beats: one lost write does not drop it).
    pub const FRESH_MS: u64 = 3 * Self::BEAT_MS;
    /// An entry this old belongs to a follower that cannot come back (a follower lives 15 minutes at most, and
    /// beats every ten seconds); the next writer drops it.
    pub const FORGET_AFTER_MS: u64 = 5 * 60_000;

    /// How many followers are live at `now_ms`: at least one, the one asking.
    pub fn live(&self, now_ms: u64) -> usize {
        let fresh = self.heartbeats.values().filter(|at| now_ms.saturating_sub(**at) <= Self::FRESH_MS).count();
        fresh.max(1)
    }

    /// The entries the next write may drop.
    pub fn forgotten(&self, now_ms: u64) -> Vec<String> {
        self.heartbeats
            .iter()
            .filter(|(_, at)| now_ms.saturating_sub(**at) > Self::FORGET_AFTER_MS)
            .map(|(owner, _)| owner.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_records_with_missing_fields_still_decode() {
        let old = r#"{"deployment_id":"d-1","version":3,"phases":{"AfterInstall":5}}"#;
        let rec: Result<DeploymentRecord, _> = serde_json::from_str(old);
        let rec = rec.ok();
        assert_eq!(rec.as_ref().map(|r| r.version), Some(3));
        assert_eq!(rec.and_then(|r| r.phases.get("AfterInstall").copied()), Some(5));
    }

    #[test]
    fn a_would_be_action_found_again_is_kept_once_and_a_route_moved_back_and_forth_each_time() {
        use super::super::route::RouteStyle;
        let set = |at_ms, to: Route| WouldBe {
            at_ms,
            by: "f".into(),
            action: format!("set {to}"),
            route: Some("production".into()),
            to: Some(to),
        };
        let (green, blue) =
            (Route::all_to("g", &["b"], RouteStyle::Weighted), Route::all_to("b", &["g"], RouteStyle::Weighted));
        let mut green_listed_otherwise = green.clone();
        green_listed_otherwise.target_groups.reverse();
        let register = WouldBe { at_ms: 1, by: "f".into(), action: "register a into g".into(), route: None, to: None };
        let mut rec = DeploymentRecord::default();
        rec.add_would_be([register.clone(), set(2, green.clone())]);
        // Found again by a later function: the same registration, the same traffic listed in another order.
        rec.add_would_be([WouldBe { at_ms: 3, ..register }, set(4, green_listed_otherwise)]);
        assert_eq!(rec.would_be.iter().map(|w| w.at_ms).collect::<Vec<_>>(), vec![1, 2]);
        // A rollback and a second try: each move is its own.
        rec.add_would_be([set(5, blue), set(6, green)]);
        assert_eq!(rec.would_be.iter().map(|w| w.at_ms).collect::<Vec<_>>(), vec![1, 2, 5, 6]);
    }

    #[test]
    fn a_live_lease_is_taken_only_when_stale_handed_over_or_for_another_deployment() {
        let lease = FollowerLease {
            deployment_id: "d-1".into(),
            owner: "a".into(),
            heartbeat_ms: 10_000,
            ..Default::default()
        };
        assert!(lease.can_be_taken_by("a", "d-1", 10_500));
        assert!(!lease.can_be_taken_by("b", "d-1", 10_500));
        assert!(lease.can_be_taken_by("b", "d-1", 10_000 + FollowerLease::STALE_AFTER_MS + 1));
        assert!(lease.can_be_taken_by("b", "d-2", 10_500));
        let handing_over = FollowerLease { handover_requested: true, ..lease };
        assert!(handing_over.can_be_taken_by("b", "d-1", 10_500));
    }

    #[test]
    fn the_census_counts_fresh_followers_and_forgets_long_gone_ones() {
        let now = 1_000_000_000;
        let census = Census {
            heartbeats: BTreeMap::from([
                ("live".to_string(), now - 1_000),
                ("one-beat-lost".to_string(), now - Census::FRESH_MS),
                ("stopped".to_string(), now - Census::FRESH_MS - 1),
                ("gone".to_string(), now - Census::FORGET_AFTER_MS - 1),
            ]),
        };
        assert_eq!(census.live(now), 2);
        assert_eq!(census.forgotten(now), vec!["gone".to_string()]);
        assert_eq!(Census::default().live(now), 1, "the asker counts itself even before its entry is read back");
    }

    #[test]
    fn sides_are_the_own_fields_then_the_list_and_round_trip() {
        let mut rec = DeploymentRecord::new("d-1", "web", "web-bg", 0);
        let side = |green: &str| SideRecord { green_private_target_group: Some(green.into()), ..Default::default() };
        rec.set_side(2, side("third"));
        rec.set_side(0, side("first"));
        assert_eq!(rec.green_private_target_group.as_deref(), Some("first"));
        assert_eq!(rec.additional_sides.len(), 2, "side 1 is held open for its own write");
        assert_eq!(rec.side(2).and_then(|s| s.green_private_target_group).as_deref(), Some("third"));
        assert_eq!(rec.side(1), Some(SideRecord::default()));
        assert_eq!(rec.side(3), None);
        let back: DeploymentRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap_or_default()).unwrap_or_default();
        assert_eq!(back, rec);
        // A record of one side says nothing of others.
        let one = DeploymentRecord::new("d-2", "web", "web-bg", 0);
        assert!(!serde_json::to_string(&one).unwrap_or_default().contains("additional_sides"));
    }

    #[test]
    fn ttl_is_thirty_days_out() {
        let rec = DeploymentRecord::new("d-1", "web", "web-bg", 1_000_000);
        assert_eq!(rec.expires_at, 1000 + DEPLOYMENT_RECORD_TTL_SECS);
        assert_eq!(DeploymentRecord::key("d-1"), "deployment#d-1");
        assert_eq!(BindingRecord::key("web", "web-bg"), "binding#web#web-bg");
    }
}
