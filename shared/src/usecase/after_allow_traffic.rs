//! AfterAllowTraffic: the public production listener now serves green. Make the private production route its
//! mirror at once — on the fast path one DynamoDB read (the flip BeforeAllowTraffic planned) and one
//! ModifyListener/ModifyRule — then verify against the public truth, correct if needed, check that the private
//! route is not dark, converge membership and the test route, record. If the private side cannot be made right,
//! it is put back where it was (by `Hooks::run`, which also covers panics and timeouts) and the hook fails (CodeDeploy then reroutes the public side back too).

use std::borrow::Cow;

use super::{name, now_ms, Engine, Tracker, STATE_READ_BOUND};
use crate::config::{Binding, RouteRef};
use crate::domain::{mirror_route, test_route, HealthState, Phase, Route, RouteStyle};
use crate::harness::Budget;
use crate::ports::{Deployments, Followers, LoadBalancers, StateStore};
use crate::{Error, Result};

/// What the flip started from.
struct Flip<'a> {
    binding: Cow<'a, Binding>,
    before: Option<Route>,
    public_production_listener: Option<String>,
    public_test_listener: Option<String>,
}

impl<L: LoadBalancers, D: Deployments, S: StateStore, F: Followers> Engine<L, D, S, F> {
    pub async fn after_allow_traffic(&self, deployment_id: &str, _budget: Budget, t: &Tracker) -> Result<()> {
        let record = match tokio::time::timeout(STATE_READ_BOUND, self.state.deployment(deployment_id)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                t.note(format!("deployment record unreadable ({e}); taking the slow path"));
                None
            }
            Err(_) => {
                t.note(format!(
                    "deployment record not read within {} ms; taking the slow path",
                    STATE_READ_BOUND.as_millis()
                ));
                None
            }
        };
        let fast = record.and_then(|rec| {
            // The environment form's binding, or the stored one BeforeAllowTraffic carried in the record: no read.
            let b = if self.config.stored {
                let b: Binding = serde_json::from_value(rec.binding.clone()?).ok()?;
                (b.application == rec.application && b.deployment_group == rec.deployment_group)
                    .then_some(Cow::Owned(b))?
            } else {
                Cow::Borrowed(self.config.binding(&rec.application, &rec.deployment_group)?)
            };
            let planned = rec.planned_private_route.clone()?;
            let privates = b.private_target_groups();
            planned
                .target_groups
                .iter()
                .all(|w| privates.contains(&w.target_group.as_str()))
                .then_some((rec, b, planned))
        });

        let (flip, flipped) = match fast {
            Some((rec, b, planned)) => {
                t.binding(b.label());
                let flip = Flip {
                    binding: b,
                    before: rec.private_route_before.clone(),
                    public_production_listener: rec.public_production_listener.clone(),
                    public_test_listener: rec.public_test_listener.clone(),
                };
                if let Some(before) = &flip.before {
                    t.undo_with(flip.binding.private_production_route.clone(), before.clone());
                }
                let set = self.lb.set_route(&flip.binding.private_production_route, &planned).await;
                (flip, set.map(|()| planned))
            }
            None => {
                let r = self.resolve(deployment_id, t).await?;
                let b = r.binding;
                let pre = self.preflight(&b, t).await?;
                let listener = r.facts.production_listeners.first().cloned().ok_or_else(|| {
                    Error::Misconfigured(format!(
                        "deployment group {} has no production listener",
                        r.facts.deployment_group
                    ))
                })?;
                let public = self.lb.route(&RouteRef::Listener(listener.clone())).await?;
                let desired = mirror_route(&public, &b.pair_arns(), b.style(), Some(&pre.production))
                    .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.label())))?;
                let flip = Flip {
                    binding: b,
                    before: Some(pre.production.clone()),
                    public_production_listener: Some(listener),
                    public_test_listener: r.facts.test_listeners.first().cloned(),
                };
                t.undo_with(flip.binding.private_production_route.clone(), pre.production.clone());
                let set = if pre.production.same_action(&desired) {
                    Ok(desired)
                } else {
                    self.lb.set_route(&flip.binding.private_production_route, &desired).await.map(|()| desired)
                };
                (flip, set)
            }
        };
        let flip_at = now_ms();
        let b: &Binding = &flip.binding;

        // From here on a failure (error, panic, timeout) puts the private route back (see `Hooks::run`).
        let flipped = flipped?;
        t.route_change(flip.before.as_ref().map_or("?".to_string(), Route::to_string), flipped.to_string());
        let desired = self.settle(deployment_id, &flip, flipped, t).await?;

        // Off the critical path: membership of both pairs (I1) and the test route (I3).
        for (public, private) in b.pair_arns() {
            self.mirror_pair(&public, &private, t).await?;
        }
        self.converge_test_route(b, flip.public_test_listener.as_deref(), &desired, t).await?;

        let live = desired.live().first().map(|s| s.to_string());
        self.record(b, deployment_id, t, |rec| {
            rec.phases.insert(Phase::AfterAllowTraffic.to_string(), now_ms());
            rec.private_flip_at_ms.get_or_insert(flip_at);
            rec.outcome = Some("succeeded".to_string());
            rec.last_message = None;
        })
        .await;
        if let Some(live) = live {
            self.record_binding_live(b, &live, Some(deployment_id), t).await;
        }
        t.take_undo();
        Ok(())
    }

    /// After the flip: compare with the public truth, correct, read back, and check that no live private target
    /// group is dark while its public mirror is not (I4). Returns the route in place.
    async fn settle(&self, deployment_id: &str, flip: &Flip<'_>, flipped: Route, t: &Tracker) -> Result<Route> {
        let b: &Binding = &flip.binding;
        let listener = match &flip.public_production_listener {
            Some(l) => l.clone(),
            None => {
                let r = self.resolve(deployment_id, t).await?;
                r.facts.production_listeners.first().cloned().ok_or_else(|| {
                    Error::Misconfigured(format!(
                        "deployment group {} has no production listener",
                        r.facts.deployment_group
                    ))
                })?
            }
        };
        let public = self.lb.route(&RouteRef::Listener(listener)).await?;
        let desired = mirror_route(&public, &b.pair_arns(), b.style(), Some(&flipped))
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.label())))?;
        if !desired.same_traffic(&flipped) {
            t.note(format!("public route is {public}; correcting the planned private route {flipped} to {desired}"));
            self.lb.set_route(&b.private_production_route, &desired).await?;
            t.route_change(flipped.to_string(), desired.to_string());
        }
        let now = self.lb.route(&b.private_production_route).await?;
        if !now.same_traffic(&desired) {
            return Err(Error::Invariant(format!(
                "the private production route reads {now} after it was set to {desired}; something else is changing it"
            )));
        }
        for tg in desired.live() {
            let private = self.lb.targets(tg).await?;
            if private.iter().any(|p| p.health == HealthState::Healthy) {
                continue;
            }
            let public_tg =
                b.pairs.iter().find(|p| p.private_target_group == tg).map(|p| p.public_target_group.as_str());
            if let Some(public_tg) = public_tg {
                let public = self.lb.targets(public_tg).await?;
                if public.iter().any(|p| p.health == HealthState::Healthy) {
                    return Err(Error::Invariant(format!(
                        "the private production route would forward to {}, which has no healthy target while its public \
                         mirror {} has: not leaving the private side dark",
                        name(tg),
                        name(public_tg)
                    )));
                }
            }
        }
        Ok(desired)
    }

    /// Makes the private test route mirror the public test listener (I3). On an NLB, whose listeners forward to
    /// one group each, the test listener instead takes the group production no longer uses, so that both stay
    /// attached and health-checked.
    async fn converge_test_route(
        &self,
        b: &Binding,
        public_test_listener: Option<&str>,
        production: &Route,
        t: &Tracker,
    ) -> Result<()> {
        let Some(which) = &b.private_test_route else {
            return Ok(());
        };
        let current = self.lb.route(which).await?;
        let public = match (b.style(), public_test_listener) {
            (RouteStyle::Weighted, Some(l)) => Some(self.lb.route(&RouteRef::Listener(l.to_string())).await?),
            _ => None,
        };
        let Some(desired) = test_route(&b.pair_arns(), b.style(), production, public.as_ref(), &current)
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.label())))?
        else {
            return Ok(());
        };
        if !current.same_action(&desired) {
            self.lb.set_route(which, &desired).await?;
            t.note(format!("{which}: {current} -> {desired}"));
        }
        Ok(())
    }
}
