//! Following a rollback before anything else waits. When CodeDeploy reports a deployment FAILURE or STOP, the
//! public production route has been put back on the original task set and the replacement tasks are about to
//! go: a private route still on green goes dark with them. So the private route is put back first, from what the
//! deployment's record already says (the route before the flip, and the flip that stood), after the one read the
//! never-dark check needs, neither paced nor queued nor held; then the reconcile that reads both sides follows,
//! for membership, the test routes and to verify.

use std::borrow::Cow;
use std::collections::BTreeMap;

use futures_util::future::{join_all, try_join_all};

use super::{Engine, Reconciled, Tracker, STATE_READ_BOUND};
use crate::clock::now_s;
use crate::config::Binding;
use crate::domain::{roll_back, DeploymentRecord, Phase, Route};
use crate::ports::{Coordination, Deployments, Followers, LoadBalancers, StateStore};
use crate::Result;

use super::trigger::Trigger;

/// How old a FAILURE or STOP event may be for its deployment's record to be trusted over the live public route:
/// past it, the replacement tasks' removal is no longer being raced, and a later deployment of the group may have
/// flipped the private side since (an event Lambda retried, or queued while the function was throttled). Such an
/// event takes the reconcile alone, which reads both sides.
const ROLLBACK_FRESH_FOR_S: u64 = 60;

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// For a fresh FAILURE or STOP of a deployment whose flip stood: every private side put back on its route
    /// before the flip. Returns what moved, a side each. What cannot be done here (no record, no flip on record,
    /// nothing healthy to go back to, a failed call) is left to the reconcile that follows, with a note.
    pub async fn roll_back_first(&self, trigger: &Trigger, t: &Tracker) -> Vec<Reconciled> {
        let Trigger::Deployment { deployment_id, state, at, .. } = trigger else { return Vec::new() };
        if !matches!(state.as_str(), "FAILURE" | "STOP") {
            return Vec::new();
        }
        if !at.is_some_and(|at| now_s() <= at + ROLLBACK_FRESH_FOR_S) {
            t.note(format!("{deployment_id} {state}: the event is not fresh; the reconcile reads both sides"));
            return Vec::new();
        }
        match self.roll_back_from_record(deployment_id, t).await {
            Ok(moved) => moved,
            Err(e) => {
                t.note(format!("{deployment_id}: private route not put back at once ({e}); the reconcile follows"));
                Vec::new()
            }
        }
    }

    async fn roll_back_from_record(&self, deployment_id: &str, t: &Tracker) -> Result<Vec<Reconciled>> {
        let rec = match tokio::time::timeout(STATE_READ_BOUND, self.state.deployment(deployment_id)).await {
            Ok(read) => read?,
            Err(_) => {
                t.note(format!("{deployment_id}: record not read within {} ms", STATE_READ_BOUND.as_millis()));
                return Ok(Vec::new());
            }
        };
        // Only a flip AfterAllowTraffic recorded as done stood: one that failed was put back by the hook itself.
        let Some(rec) = rec.filter(|r| r.phases.contains_key(Phase::AfterAllowTraffic.as_str())) else {
            return Ok(Vec::new());
        };
        let Some(b) = self.binding_in_record(&rec) else { return Ok(Vec::new()) };
        let sides: Vec<(Binding, Route, Route)> = b
            .sides()
            .into_iter()
            .filter_map(|side| {
                let s = rec.side(side.side)?;
                Some((side, s.private_route_before?, s.planned_private_route?))
            })
            .filter(|(_, before, flipped)| !before.same_action(flipped))
            .collect();
        if sides.is_empty() {
            return Ok(Vec::new());
        }
        // The never-dark check's reads: the groups each route before sends to, once each, all at once.
        let mut groups: Vec<&str> = sides.iter().flat_map(|(_, before, _)| before.live()).collect();
        groups.sort_unstable();
        groups.dedup();
        let at_once = self.lb.at_once();
        let read = try_join_all(groups.iter().map(|g| at_once.targets(g))).await?;
        let targets: BTreeMap<String, _> = groups.iter().map(|g| g.to_string()).zip(read).collect();
        let moves: Vec<(&Binding, Route, &Route)> = sides
            .iter()
            .filter_map(|(side, before, flipped)| match roll_back(before, flipped, &targets) {
                Some(to) => Some((side, to, flipped)),
                None => {
                    t.note(format!("{}: no healthy target to go back to; the reconcile decides", side.side_label()));
                    None
                }
            })
            .collect();
        let written =
            join_all(moves.iter().map(|(side, to, _)| self.lb.set_route(&side.private_production_route, to))).await;
        let mut moved = Vec::new();
        for ((side, to, flipped), w) in moves.iter().zip(written) {
            match w {
                Ok(()) => {
                    moved.push(Reconciled {
                        production: Some(format!("{flipped} -> {to}")),
                        rounds: 1,
                        ..Reconciled::of(side, side.side_label())
                    });
                    t.route_change(flipped.to_string(), to.to_string());
                    t.note(format!("{}: private route put back on {to} after {deployment_id}", side.side_label()));
                }
                Err(e) => t.note(format!("{}: private route not put back ({e}); the reconcile follows", side.label())),
            }
        }
        // The records follow the route, off the critical path: the binding's names the live group again.
        if let Some((first, to, _)) = moves.iter().find(|(side, _, _)| side.side == 0) {
            if let [live] = to.live().as_slice() {
                let known = rec.binding_record.clone();
                self.record_binding_live(first, live, None, known, t).await;
            }
        }
        Ok(moved)
    }

    /// The binding a deployment's record was resolved to, with no read: the environment form's, or the stored
    /// one BeforeAllowTraffic carried in the record (`None` when neither matches the record's group).
    pub(super) fn binding_in_record<'s>(&'s self, rec: &DeploymentRecord) -> Option<Cow<'s, Binding>> {
        if self.config.stored {
            let b: Binding = serde_json::from_value(rec.binding.clone()?).ok()?;
            self.scope(&b);
            (b.application == rec.application && b.deployment_group == rec.deployment_group).then_some(Cow::Owned(b))
        } else {
            self.config.binding(&rec.application, &rec.deployment_group).map(Cow::Borrowed)
        }
    }
}
