//! BeforeAllowTraffic: the gate. Re-mirror, then wait until every replacement task is healthy *in the private
//! target group of every private side*. If they are not by the deadline, report `Failed`: CodeDeploy rolls back
//! before any production traffic moves, and nothing is lost. On success, plan each side's flip for
//! AfterAllowTraffic.

use futures_util::future::try_join_all;

use super::{health_budget, live_keys, name, Engine, Green, ReadOnce, Setup, Shadow, Tracker};
use crate::clock::now_ms;
use crate::config::Binding;
use crate::domain::{plan_mirror, HealthState, Phase, Route, SideRecord, DEFAULT_BATCH};
use crate::harness::Budget;
use crate::ports::{Coordination, Deployments, FollowRequest, Followers, LoadBalancers, StateStore};
use crate::{Error, Result};

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    pub async fn before_allow_traffic(&self, deployment_id: &str, budget: Budget, t: &Tracker) -> Result<()> {
        // Checks, each taking one turn in the read lane for its rounds of reads: the setup (preflight, green,
        // blue's mirror), then each poll (for green's tasks, then the gate's).
        let Setup { r, sides, binding_record, green: g, productions } = self.setup(deployment_id, budget, t).await?;
        let b: &Binding = &r.binding;
        self.wait_for_public_green(&g, budget).await?;
        let greens: Vec<Green> = sides.iter().map(|(side, _)| g.on(side)).collect();
        try_join_all(
            sides.iter().zip(&greens).map(|((side, pre), g)| self.test_route_to_green(side, pre.test.as_ref(), g, t)),
        )
        .await?;

        // Every side's gate in one: traffic moves only when every side is ready for it.
        let gated: Vec<(&Binding, &Green)> = sides.iter().map(|(side, _)| side).zip(&greens).collect();
        let healthy = self.gate(&gated, budget, t).await?;

        let facts = &r.facts;
        self.record(b, deployment_id, t, |rec| {
            rec.phases.insert(Phase::BeforeAllowTraffic.to_string(), now_ms());
            rec.public_production_listener = facts.production_listeners.first().cloned();
            rec.public_test_listener = facts.test_listeners.first().cloned();
            rec.green_public_target_group = Some(g.public.clone());
            for ((side, _), production) in sides.iter().zip(&productions) {
                let g = g.on(side);
                let mut planned = Route::all_to(&g.private, &[&g.blue_private], side.style());
                planned.stickiness_seconds = production.stickiness_seconds;
                let flip = SideRecord {
                    private_route_before: Some(production.clone()),
                    planned_private_route: Some(planned),
                    ..SideRecord::default()
                };
                rec.set_side(side.side, g.recorded(side, flip));
            }
            rec.targets_mirrored = healthy;
            rec.followed = self.config.follower_function.is_some();
            rec.binding_record = binding_record.clone();
            // A stored binding travels with the deployment, so that AfterAllowTraffic flips without reading it.
            if self.config.stored {
                rec.binding = serde_json::to_value(b).ok();
            }
        })
        .await;
        // Traffic may now move in steps (canary, linear): a follower mirrors each step. Without one, the private
        // side flips at AfterAllowTraffic, which is still correct, only coarser.
        let request = FollowRequest {
            deployment_id: deployment_id.to_string(),
            application: b.application.clone(),
            deployment_group: b.deployment_group.clone(),
            production_listener: facts.production_listeners.first().cloned(),
            config_name: facts.config_name.clone(),
            binding: self.config.stored.then(|| b.clone()),
        };
        match self.followers.start(&request).await {
            Ok(true) => t.note("follower started".to_string()),
            Ok(false) => {}
            Err(e) => {
                t.note(format!("warning: follower not started ({e}); the private side flips at AfterAllowTraffic"))
            }
        }
        Ok(())
    }

    /// Every side's gate, level-triggered and polled as one: each poll reads the public green group once for all
    /// the sides still waiting (see [`ReadOnce`]) and each of their private green groups, re-applies a side's
    /// mirror if ECS changed the public side meanwhile, and checks health of exactly the public side's live
    /// members in each private group. A side found ready is not polled again. Returns how many are healthy (the
    /// fewest of any side).
    async fn gate(&self, sides: &[(&Binding, &Green)], budget: Budget, t: &Tracker) -> Result<usize> {
        let timeout = sides.iter().map(|(side, _)| side.health_timeout_seconds).min().unwrap_or(0);
        let gate = sides.iter().fold(budget, |b, (side, _)| health_budget(b, side));
        // Each side's healthy count once it was found ready.
        let ready = std::sync::Mutex::new(vec![None::<usize>; sides.len()]);
        let lock = || ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let waited = self
            .poll(gate, || async {
                let waiting: Vec<usize> =
                    lock().iter().enumerate().filter(|(_, r)| r.is_none()).map(|(i, _)| i).collect();
                let reads = ReadOnce::new(&self.lb);
                let checked = try_join_all(
                    waiting.iter().filter_map(|i| sides.get(*i)).map(|(_, g)| self.gate_check(&reads, g, t)),
                )
                .await?;
                let mut states = Vec::new();
                let mut ready = lock();
                for (i, c) in waiting.into_iter().zip(checked) {
                    match c {
                        Ok(n) => {
                            if let Some(r) = ready.get_mut(i) {
                                *r = Some(n);
                            }
                        }
                        Err(state) => states.push(state),
                    }
                }
                Ok(match states.is_empty() {
                    true => Ok(ready.iter().map(|r| r.unwrap_or(0)).collect::<Vec<usize>>()),
                    false => Err(states.join("; ")),
                })
            })
            .await;
        let healthy = match waited {
            Ok(each) => each,
            Err(Error::Timeout(state)) => {
                let waiting: Vec<String> = lock()
                    .iter()
                    .zip(sides)
                    .filter(|(r, _)| r.is_none())
                    .map(|(_, (side, _))| format!("the private load balancer of {}", side.side_label()))
                    .collect();
                let which = match sides {
                    [_] => "the private load balancer".to_string(),
                    _ => waiting.join(" and "),
                };
                return Err(Error::Unhealthy(format!(
                    "replacement tasks did not become healthy behind {which} within {} s: {state}. \
                     Reporting Failed so that CodeDeploy rolls back; production traffic has not moved",
                    timeout.min(budget.remaining().as_secs().max(1))
                )));
            }
            Err(e) => return Err(e),
        };
        for ((_, g), n) in sides.iter().zip(&healthy) {
            t.note(format!("{n} mirrored targets healthy in {}", name(&g.private)));
        }
        Ok(healthy.into_iter().min().unwrap_or(0))
    }

    /// One side's check in a poll of the gate: `Ok(healthy)` when every live public member is healthy in the
    /// private group, `Err(state)` while waiting.
    async fn gate_check(
        &self,
        reads: &ReadOnce<'_, Shadow<L>>,
        g: &Green,
        t: &Tracker,
    ) -> Result<std::result::Result<usize, String>> {
        let (public, private) = tokio::join!(reads.targets(&g.public), self.lb.targets(&g.private));
        let (public, private) = (public?, private?);
        let plan = plan_mirror(&public, &private, DEFAULT_BATCH);
        if !plan.is_empty() {
            for batch in &plan.register {
                self.lb.register(&g.private, batch).await?;
            }
            for batch in &plan.deregister {
                self.lb.deregister(&g.private, batch).await?;
            }
            t.mirrored(plan.registered(), plan.deregistered());
            return Ok(Err(format!("mirror of {} changed; re-checking health", name(&g.public))));
        }
        let wanted = live_keys(&public);
        if wanted.is_empty() {
            return Ok(Err(format!("public target group {} holds no replacement task", name(&g.public))));
        }
        let not_healthy: Vec<String> = private
            .iter()
            .filter(|p| wanted.contains(&p.key()) && p.health != HealthState::Healthy)
            .map(|p| match &p.reason {
                Some(reason) => format!("{} {} ({reason})", p.key(), p.health.as_str()),
                None => format!("{} {}", p.key(), p.health.as_str()),
            })
            .collect();
        if not_healthy.is_empty() {
            return Ok(Ok(wanted.len()));
        }
        let unused = private.iter().any(|p| p.health == HealthState::Unused);
        Ok(Err(format!(
            "{} of {} mirrored targets are not healthy in private target group {}: {}{}",
            not_healthy.len(),
            wanted.len(),
            name(&g.private),
            not_healthy.join(", "),
            if unused {
                " — `unused` means no listener or rule of the private load balancer forwards to this target group"
            } else {
                " — check that the private load balancer's security group may reach the tasks and that the health check matches the public one"
            }
        )))
    }
}
