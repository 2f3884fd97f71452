//! The pure domain: no I/O, no clocks, no AWS types. Everything here is synchronous and deterministic so that it
//! can be tested exhaustively and reused by every function (hooks, reconciler, rehearsal).

pub mod arn;
pub mod binding;
pub mod compat;
pub mod follower;
pub mod lane;
pub mod mirror;
pub mod pacing;
pub mod reconcile;
pub mod record;
pub mod route;
pub mod target;

pub use binding::{Binding, Mode, Pair, PrivateSide, RouteRef};
pub use compat::{nlb_termination_warning, shorter_drain_warning, GroupShape, HealthCheck, NLB_SETTLE};
pub use lane::{Admission, Lane, LaneMode, Turns, LANE_BURST, LANE_GRANT_TTL, LANE_MAX_BLOCK};
pub use mirror::{plan_mirror, MirrorPlan, DEFAULT_BATCH};
pub use pacing::{
    follower_reads_per_s, full_reconcile_fits, next_read, sweep_order, sweep_per_run, sweep_slice, sweep_spacing,
    ElbSpend, Pacing, Progress, TokenBucket, TrafficShift, ARNS_PER_CALL, CHECK_EVERY,
};
pub use reconcile::{dark_while_public_serves, plan_reconcile, roll_back, stale, Observed, ReconcilePlan};
pub use record::{
    BindingRecord, Census, CensusEntry, DeploymentRecord, FollowerLease, Phase, SideRecord, StoredBinding, WouldBe,
};
pub use route::{mirror_route, test_route, Route, RouteStyle, WeightedTargetGroup};
pub use target::{HealthState, ObservedTarget, Target, TargetKey};
