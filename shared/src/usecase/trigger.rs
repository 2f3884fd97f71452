//! What starts a reconcile and what it concerns: the trigger (a deployment's or a task's event, the schedule, a
//! follow request), how its reads use the installation's read lane, the bindings it concerns (the schedule's: those
//! due first, then its slice of the rotation), and one trigger's whole run (`run_trigger`: a rollback's put-back
//! first, the bindings spread over the run, a check that steps aside leaving the rest due).

use std::borrow::Cow;
use std::time::Duration;

use serde_json::Value;

use super::{Engine, Reconciled, Tracker};
use crate::config::Binding;
use crate::domain::{LaneMode, Phase};
use crate::harness::Budget;
use crate::ports::{
    Coordination, DeploymentGroupFacts, Deployments, FollowRequest, Followers, LoadBalancers, StateStore,
};
use crate::reads::ReadPolicy;
use crate::Result;

/// What woke the reconciler, in the engine's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Follow a deployment's traffic shifting (started by BeforeAllowTraffic, or by a follower handing over).
    Follow(FollowRequest),
    /// A CodeDeploy deployment changed state (START, SUCCESS, FAILURE, STOP, READY, ...) at `at` (the event's
    /// time, seconds since the epoch, when it says).
    Deployment { application: String, deployment_group: String, deployment_id: String, state: String, at: Option<u64> },
    /// An ECS task of `service` in `cluster` changed state.
    Task { cluster: String, service: String },
    /// The schedule, fired at `at` (seconds since the epoch): the bindings due (whose check stepped aside), then
    /// the slice whose turn it is.
    Schedule { at: u64 },
}

impl Trigger {
    /// How the reads this trigger causes use the installation's read lane, knowing nothing of the deployment: the
    /// sweep waits its turn; a move already made (a deployment's end, a rollback, a stop) and a task that comes or
    /// goes are counted without waiting; a follower reads at its own share. [`Engine::lane_for`] lets the end of a
    /// deployment whose flip is on record wait too.
    pub fn lane(&self) -> LaneMode {
        match self {
            Trigger::Schedule { .. } => LaneMode::Wait,
            Trigger::Deployment { .. } | Trigger::Task { .. } => LaneMode::Count,
            Trigger::Follow(_) => LaneMode::Outside,
        }
    }
}

/// What a reconcile needs after its turn in the read lane (its reads and writes): a read whose turn would leave
/// less of the invocation steps aside.
const AFTER_THE_TURN: Duration = Duration::from_secs(5);

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// One trigger's work within `budget`: the follower's, or a reconcile of each binding the trigger concerns (the
    /// schedule's bindings spread over the run). A binding that fails fails alone and the error names them all; a
    /// sweep, or a recorded deployment's end, whose turn in the read lane comes too late stops there, as done, and
    /// leaves the bindings it did not check due for the next sweep.
    pub async fn run_trigger(
        &self,
        trigger: &Trigger,
        owner: &str,
        budget: Budget,
        t: &Tracker,
        done: &mut Vec<Reconciled>,
    ) -> Result<Value> {
        self.lb.begin();
        let result = self.trigger_work(trigger, owner, budget, t, done).await;
        // What shadow mode would have changed: a follower's, or the end of a deployment's (a rollback followed),
        // goes on its deployment's record beside the hooks'; anything else is drift on an observed binding, in the
        // log and the metrics.
        let (who, deployment) = match trigger {
            Trigger::Follow(req) => ("follower", Some(req.deployment_id.as_str())),
            Trigger::Deployment { deployment_id, .. } => ("reconciler", Some(deployment_id.as_str())),
            _ => ("reconciler", None),
        };
        self.keep_would_be(deployment, who, None, t).await;
        result
    }

    async fn trigger_work(
        &self,
        trigger: &Trigger,
        owner: &str,
        budget: Budget,
        t: &Tracker,
        done: &mut Vec<Reconciled>,
    ) -> Result<Value> {
        if let Trigger::Follow(req) = trigger {
            self.follow(req, owner, budget, t).await?;
            return Ok(serde_json::json!({"followed": req.deployment_id}));
        }
        // A rollback's private route goes back before anything else is read or waited for; the reconcile below then
        // verifies it and mirrors the rest.
        done.extend(self.roll_back_first(trigger, t).await);
        let bindings = self.bindings_for(trigger).await?;
        // Decided once there is something to read (finding the bindings reads no ELB): the end of a deployment in a
        // group with no binding costs no read of its record.
        let lane = if bindings.is_empty() { trigger.lane() } else { self.lane_for(trigger, t).await };
        // Nothing before here reads ELB but at once (the rollback's put-back). A read that cannot have its turn in
        // the lane before the invocation's end (less what a reconcile needs after it) steps aside rather than sleep
        // into the timeout.
        let policy = ReadPolicy::new(lane, Some(budget.remaining().saturating_sub(AFTER_THE_TURN)));
        crate::reads::under(policy, self.check_bindings(trigger, bindings, owner, budget, t, done)).await
    }

    /// The checks of the bindings a trigger concerns, under its read policy: the schedule's spread over the run
    /// after their reads ahead, a task's of its membership, any other's a full reconcile.
    async fn check_bindings(
        &self,
        trigger: &Trigger,
        bindings: Vec<Concerned<'_>>,
        owner: &str,
        budget: Budget,
        t: &Tracker,
        done: &mut Vec<Reconciled>,
    ) -> Result<Value> {
        // The schedule's slice is spread over the run, not burst at its start: the account's `Describe*` bucket is
        // shared with everything else the customer runs. Its routes and target groups are read ahead, together.
        let (spacing, ahead) = match trigger {
            Trigger::Schedule { .. } => {
                let room = budget.remaining().saturating_sub(AFTER_THE_TURN);
                let spacing = crate::domain::sweep_spacing(self.config.schedule, bindings.len())
                    .min(room / u32::try_from(bindings.len().max(1)).unwrap_or(u32::MAX));
                let ok: Vec<_> =
                    bindings.iter().filter_map(|(_, found)| found.as_ref().ok()).map(|(b, g)| (&**b, g)).collect();
                match self.read_ahead(&ok, t).await {
                    Ok(ahead) => (spacing, Some(ahead)),
                    Err(e) => {
                        let labels = labels(&bindings);
                        if let crate::Error::LaneBusy(_) = e {
                            self.step_aside("sweep", &labels, &e, t).await;
                            return Ok(serde_json::to_value(&*done).unwrap_or(Value::Null));
                        }
                        // Left due, so that the next sweep checks them first.
                        self.defer(&labels, t).await;
                        return Err(e);
                    }
                }
            }
            _ => (Duration::ZERO, None),
        };
        let labels = labels(&bindings);
        let mut failures = Vec::new();
        for (i, (label, found)) in bindings.into_iter().enumerate() {
            if i > 0 && !spacing.is_zero() {
                tokio::time::sleep(spacing).await;
            }
            match found {
                Ok((b, group)) => match match trigger {
                    Trigger::Task { .. } => self.reconcile_membership_after_events(&b, owner, t).await,
                    _ => self.reconcile_from(&b, &group, ahead.as_ref(), t).await.map(Some),
                } {
                    Ok(r) => done.extend(r),
                    // Only a read that waits its turn steps aside (the sweep's, a recorded deployment's end): the
                    // deployments are using the lane. Not a failure: Lambda would run the event again, to wait once
                    // more. This binding and those after it are marked due, and the next sweep takes them first.
                    Err(e @ crate::Error::LaneBusy(_)) => {
                        let who = match trigger {
                            Trigger::Deployment { deployment_id, .. } => format!("the end of {deployment_id}"),
                            _ => "sweep".to_string(),
                        };
                        self.step_aside(&who, &labels[i..], &e, t).await;
                        break;
                    }
                    Err(e) => failures.push(format!("{label}: {}", crate::harness::error_chain(&e))),
                },
                Err(e) => failures.push(format!("{label}: {}", crate::harness::error_chain(&e))),
            }
        }
        if failures.is_empty() {
            Ok(serde_json::to_value(&*done).unwrap_or(Value::Null))
        } else {
            // An error makes Lambda retry the asynchronous event; reconciling again is harmless.
            Err(crate::Error::Misconfigured(format!("reconcile failed for {}", failures.join("; "))))
        }
    }

    /// How this trigger's reads use the read lane. The end of a deployment (SUCCESS) whose AfterAllowTraffic
    /// recorded its flip has nothing left to follow in a hurry: the private routes were flipped and verified then,
    /// and the tasks CodeDeploy stops afterwards leave the private side with their own ECS events, counted. Its
    /// check waits its turn like the sweep's, and steps aside to the sweep when the lane is busier than its
    /// invocation is long: on AWS, twenty deployments that end together would otherwise spend their full
    /// reconciles at once, over the account's bucket. Without that record (no hook ran, or its record is
    /// unreadable) the end may be the only thing that flips the private side, and it is counted at once.
    pub async fn lane_for(&self, trigger: &Trigger, t: &Tracker) -> LaneMode {
        let Trigger::Deployment { deployment_id, state, .. } = trigger else { return trigger.lane() };
        if state != "SUCCESS" {
            return trigger.lane();
        }
        match self.state.deployment(deployment_id).await {
            Ok(Some(rec))
                if rec.phases.contains_key(Phase::AfterAllowTraffic.as_str())
                    && rec.outcome.as_deref() == Some("succeeded") =>
            {
                LaneMode::Wait
            }
            Ok(_) => trigger.lane(),
            Err(e) => {
                t.note(format!("{deployment_id}: record unreadable ({e}); its end is checked at once"));
                trigger.lane()
            }
        }
    }

    /// Records that `who` stepped aside from a busy read lane with the checks of `left` (labels) undone, and leaves
    /// them due for the next sweep.
    async fn step_aside(&self, who: &str, left: &[String], e: &crate::Error, t: &Tracker) {
        let Some(first) = left.first() else { return };
        t.step_aside(format!(
            "{who} stepped aside at {first}, {} left to the next sweep: {e}",
            if left.len() == 1 { "its check".to_string() } else { format!("{} checks", left.len()) }
        ));
        tracing::info!(binding = %first, error = %e, "{who} stepped aside for the deployments reading");
        self.defer(left, t).await;
    }

    /// Leaves the check of these bindings to the next sweep, which takes them first: a check that stepped aside
    /// from a busy read lane is done once the lane has room, not when the sweep's rotation comes back to it
    /// (`ceil(n / k)` sweeps later). One write.
    pub async fn defer(&self, labels: &[String], t: &Tracker) {
        if let Err(e) = self.state.mark_due(labels).await {
            t.note(format!(
                "{} not marked due ({e}): checked when the sweep's rotation comes to them",
                labels.join(", ")
            ));
        }
    }

    /// The bindings a trigger concerns, each labelled `application/group`, with its deployment group's setup; a
    /// binding that cannot be used (a stored one that does not validate, a deployment group that cannot be read)
    /// is returned as its error, so that it fails alone. The error outside is the stored list being unreadable.
    pub async fn bindings_for(&self, trigger: &Trigger) -> Result<Vec<Concerned<'_>>> {
        let candidates: Vec<(String, Result<Cow<'_, Binding>>)> = match trigger {
            Trigger::Follow(_) => Vec::new(),
            // START and READY change nothing on the public side; the end of a deployment (SUCCESS) and a
            // rollback (FAILURE, STOP) do.
            Trigger::Deployment { state, .. } if !matches!(state.as_str(), "SUCCESS" | "FAILURE" | "STOP") => {
                Vec::new()
            }
            Trigger::Deployment { application, deployment_group, .. } => {
                match self.binding_of(application, deployment_group).await {
                    Ok(found) => found.map(|b| (b.label(), Ok(b))).into_iter().collect(),
                    Err(e) => vec![(format!("{application}/{deployment_group}"), Err(e))],
                }
            }
            Trigger::Task { .. } => self.every_binding_cached().await?,
            Trigger::Schedule { at } => {
                let all = self.every_binding().await?;
                // Taken once the list is read: a sweep that fails before it leaves them due for the next.
                let due = match self.state.take_due().await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::warn!(error = %e, "the bindings due could not be taken; the sweep checks its slice");
                        std::collections::BTreeSet::new()
                    }
                };
                let per_run = crate::domain::sweep_per_run(
                    all.len(),
                    self.config.elb_reads_per_s,
                    self.config.schedule,
                    self.config.minute,
                );
                let slot = at / self.config.schedule.as_secs().max(1);
                let due: Vec<usize> =
                    all.iter().enumerate().filter(|(_, (label, _))| due.contains(label)).map(|(i, _)| i).collect();
                let order = crate::domain::sweep_order(all.len(), per_run, slot, &due);
                let mut all: Vec<Option<_>> = all.into_iter().map(Some).collect();
                order.into_iter().filter_map(|i| all.get_mut(i).and_then(Option::take)).collect()
            }
        };
        let mut out = Vec::new();
        for (label, b) in candidates {
            let b = match b {
                Ok(b) => b,
                Err(e) => {
                    // An ECS task event concerns one service: a broken binding elsewhere is the schedule's to report.
                    if !matches!(trigger, Trigger::Task { .. }) {
                        out.push((label, Err(e)));
                    }
                    continue;
                }
            };
            let group = match trigger {
                Trigger::Task { .. } => self.group_for_task(&b).await,
                _ => {
                    let fresh = self.group(&b).await;
                    if let Ok(facts) = &fresh {
                        self.groups.put(&b, facts);
                    }
                    fresh
                }
            };
            let wanted = match (trigger, &group) {
                (Trigger::Task { cluster, service }, Ok(g)) => {
                    g.ecs_services.iter().any(|(c, s)| c == cluster && s == service)
                }
                _ => true,
            };
            if wanted {
                out.push((label, group.map(|g| (b, g))));
            }
        }
        Ok(out)
    }
}

/// The labels of the bindings a trigger concerns, in order.
fn labels(bindings: &[Concerned<'_>]) -> Vec<String> {
    bindings.iter().map(|(label, _)| label.clone()).collect()
}

/// A binding a trigger concerns: its label, and the binding with its deployment group's setup or why not.
pub type Concerned<'a> = (String, Result<(Cow<'a, Binding>, DeploymentGroupFacts)>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knowing_nothing_of_the_deployment_only_the_sweep_waits_in_the_lane_and_a_follower_stays_out_of_it() {
        let deployment = |state: &str| Trigger::Deployment {
            application: "web".into(),
            deployment_group: "web-bg".into(),
            deployment_id: "d-1".into(),
            state: state.into(),
            at: None,
        };
        assert_eq!(Trigger::Schedule { at: 0 }.lane(), LaneMode::Wait);
        for state in ["SUCCESS", "FAILURE", "STOP"] {
            assert_eq!(
                deployment(state).lane(),
                LaneMode::Count,
                "{state}: a move already made is followed at once unless its flip is on record (`Engine::lane_for`)"
            );
        }
        assert_eq!(Trigger::Task { cluster: "c".into(), service: "s".into() }.lane(), LaneMode::Count);
        let follow: FollowRequest = serde_json::from_value(serde_json::json!({
            "application": "web", "deployment_group": "web-bg", "deployment_id": "d-1"
        }))
        .unwrap();
        assert_eq!(Trigger::Follow(follow).lane(), LaneMode::Outside);
    }
}
