//! AfterAllowTraffic: the public production listener now serves green. Make every private side's production
//! route its mirror at once — on the fast path one DynamoDB read (the flips BeforeAllowTraffic planned) and one
//! ModifyListener/ModifyRule per side, all issued together — then verify against the public truth, correct if
//! needed, check that no private route is dark, converge membership and the test routes, record. If any side
//! cannot be made right, every side is put back where it was (by `Engine::run`, which also covers panics and
//! timeouts) and the hook fails (CodeDeploy then reroutes the public side back too).

use std::borrow::Cow;
use std::collections::BTreeMap;

use futures_util::future::{join_all, try_join_all};
use tokio::time::Instant;

use super::{name, Engine, Tracker, STATE_READ_BOUND};
use crate::clock::now_ms;
use crate::config::{Binding, RouteRef};
use crate::domain::{
    dark_while_public_serves, mirror_route, test_route, DeploymentRecord, HealthState, ObservedTarget, Phase, Route,
    RouteStyle,
};
use crate::harness::{Budget, Epilogue};
use crate::ports::{Coordination, Deployments, Followers, LoadBalancers, Saved, StateStore};
use crate::{Error, Result};

/// What the flip started from.
struct Flip<'a> {
    binding: Cow<'a, Binding>,
    /// Each private side with its production route as it was before the flip (when known) and as flipped.
    sides: Vec<(Binding, Option<Route>, Route)>,
    /// The routes before were read just now (the slow path): a side already in place is not written again.
    fresh: bool,
    /// The deployment record as read at the start (the fast path), so that recording the outcome needs no read.
    record: Option<DeploymentRecord>,
    public_production_listener: Option<String>,
    public_test_listener: Option<String>,
}

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// Returns once every side is flipped, checked and converged: the verdict. Recording it is left to the
    /// epilogue, which the harness runs beside the report.
    pub async fn after_allow_traffic<'a>(
        &'a self,
        deployment_id: &str,
        _budget: Budget,
        t: &'a Tracker,
    ) -> Result<Epilogue<'a>> {
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
            let b = self.binding_in_record(&rec)?;
            // Every side must have its planned flip, within its own groups; otherwise the slow path plans them all.
            let sides: Option<Vec<(Binding, Option<Route>, Route)>> = b
                .sides()
                .into_iter()
                .map(|side| {
                    let planned = rec.side(side.side)?;
                    let to = planned.planned_private_route?;
                    let privates = side.private_target_groups();
                    to.target_groups.iter().all(|w| privates.contains(&w.target_group.as_str())).then_some((
                        side,
                        planned.private_route_before,
                        to,
                    ))
                })
                .collect();
            Some(Flip {
                sides: sides?,
                fresh: false,
                record: Some(rec.clone()),
                binding: b,
                public_production_listener: rec.public_production_listener.clone(),
                public_test_listener: rec.public_test_listener.clone(),
            })
        });

        let flip = match fast {
            Some(flip) => flip,
            None => {
                let r = self.resolve(deployment_id, t).await?;
                let b = r.binding;
                let pres = self.preflight_sides(&b, t).await?;
                let listener = r.facts.production_listeners.first().cloned().ok_or_else(|| {
                    Error::Misconfigured(format!(
                        "deployment group {} has no production listener",
                        r.facts.deployment_group
                    ))
                })?;
                let public = self.lb.route(&RouteRef::Listener(listener.clone())).await?;
                let mut sides = Vec::new();
                for (side, pre) in pres {
                    let desired = mirror_route(&public, &side.pair_arns(), side.style(), Some(&pre.production))
                        .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", side.side_label())))?;
                    sides.push((side, Some(pre.production), desired));
                }
                Flip {
                    binding: b,
                    sides,
                    fresh: true,
                    record: None,
                    public_production_listener: Some(listener),
                    public_test_listener: r.facts.test_listeners.first().cloned(),
                }
            }
        };
        t.binding(&flip.binding);
        t.observing(self.observes(&flip.binding));
        // Every side's write at once, each with its undo remembered first: from here on a failure (error, panic,
        // timeout) puts every side back (see `Engine::run`).
        for (side, before, _) in &flip.sides {
            if let Some(before) = before {
                t.undo_with(side.private_production_route.clone(), before.clone());
            }
        }
        // A follower was started at the gate and reads the public route every few hundred ms after it: it has most
        // likely mirrored the reroute before CodeDeploy got round to this hook. The routes are then read first, a
        // side already in place is not written again (a Describe spent from ELB's largest bucket saves a Modify
        // from its tightest), and that read is also the one the checks below need when nothing was written.
        // Without a follower the flip is written blind, with no read before it.
        let followed = flip.record.as_ref().is_some_and(|r| r.followed) && !flip.fresh;
        let early = match followed.then(|| self.routes_after_flip(deployment_id, &flip, t)) {
            Some(read) => read
                .await
                .map_err(|e| t.note(format!("private routes not read before the flip ({e}); writing them")))
                .ok(),
            None => None,
        };
        let in_place = |i: usize, to: &Route| {
            early.as_ref().and_then(|r| r.production.get(i)).is_some_and(|now| now.same_action(to))
        };
        let writes = flip.sides.iter().enumerate().map(|(i, (side, before, to))| async move {
            if (flip.fresh && before.as_ref().is_some_and(|b| b.same_action(to))) || in_place(i, to) {
                return Ok(false);
            }
            self.lb.set_route(&side.private_production_route, to).await.map(|()| true)
        });
        let written = join_all(writes).await;
        let flip_at = now_ms();
        let wrote = written.into_iter().collect::<Result<Vec<bool>>>()?.into_iter().any(|w| w);
        if wrote || early.is_none() {
            t.flipped();
        } else {
            t.note("every private production route already mirrored the reroute (the follower's); nothing written");
        }
        let early = early.filter(|_| !wrote);
        let shown = |routes: Vec<String>| routes.join(" | ");
        t.route_change(
            shown(
                flip.sides.iter().map(|(_, before, _)| before.as_ref().map_or("?".into(), Route::to_string)).collect(),
            ),
            shown(flip.sides.iter().map(|(_, _, to)| to.to_string()).collect()),
        );

        // Everything after the flip is independent reads first, all at once: the checks of each side against the
        // public truth (I2, I4), the membership of every pair of every side (I1: mirroring is safe whatever the
        // routes, so it does not wait for the checks), and each side's test routes (I3), written once the checks
        // have settled production.
        // Each group is read once, for both the I4 check and membership: every pair's groups (the public ones are
        // every side's) and the groups each side was set to send to.
        let pairs: Vec<(String, String)> = flip.sides.iter().flat_map(|(side, _, _)| side.pair_arns()).collect();
        let mut groups: Vec<String> = pairs
            .iter()
            .flat_map(|(public, private)| [public.clone(), private.clone()])
            .chain(flip.sides.iter().flat_map(|(_, _, to)| to.live().into_iter().map(str::to_string)))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let reads = try_join_all(groups.iter().map(|g| async { Ok((self.lb.targets(g).await?, Instant::now())) }));
        let routes = async {
            match early {
                Some(read) => Ok(read),
                None => self.routes_after_flip(deployment_id, &flip, t).await,
            }
        };
        let (routes, read) = tokio::join!(routes, reads);
        let (routes, read) = (routes?, read?);
        let (read, answered): (Vec<_>, Vec<_>) = read.into_iter().unzip();
        let read: Vec<(String, Vec<ObservedTarget>)> = groups.iter().cloned().zip(read).collect();
        let answered: Vec<(String, Instant)> = groups.into_iter().zip(answered).collect();
        let of = |tg: &str| read.iter().find(|(g, _)| g == tg).map_or(&[][..], |(_, r)| r.as_slice());
        let at = |tg: &str| answered.iter().find(|(g, _)| g == tg).map(|(_, at)| *at);
        let mirrors = try_join_all(pairs.iter().map(|(public, private)| {
            // How much later the private group's read answered than its public one's.
            let apart = at(private).zip(at(public)).map(|(q, p)| q.saturating_duration_since(p));
            self.mirror_onto((of(public), public), of(private), private, apart, t)
        }));
        let settled = try_join_all(flip.sides.iter().zip(&routes.production).map(|((side, _, flipped), now)| {
            self.settle_side(side, &routes.public, flipped.clone(), (now.clone(), read.clone()), t)
        }));
        let (desired, mirrored) = tokio::join!(settled, mirrors);
        let (desired, test_reads) = (desired?, routes.tests);
        mirrored?;
        let tests = flip
            .sides
            .iter()
            .zip(&desired)
            .zip(test_reads)
            .map(|(((side, _, _), desired), reads)| self.converge_test_route(side, desired, reads, t));
        try_join_all(tests).await?;

        let live = desired.first().and_then(|d| d.live().first().map(|s| s.to_string()));
        // Decided: nothing from here on puts a route back, and the records cannot change the verdict.
        t.take_undo();
        let (binding, known, id) = (flip.binding.into_owned(), flip.record, deployment_id.to_string());
        Ok(Epilogue::of(async move { self.record_after_flip(&binding, &id, flip_at, live, known, t).await }))
    }

    /// Records the flip: the deployment's record (over the one read at the start, on the fast path) and the
    /// binding's (over the version BeforeAllowTraffic read and carried in it) in one write when both are known;
    /// otherwise, or when that write is lost to another writer, each on its own, reading what it must.
    async fn record_after_flip(
        &self,
        b: &Binding,
        deployment_id: &str,
        flip_at: u64,
        live: Option<String>,
        known: Option<DeploymentRecord>,
        t: &Tracker,
    ) {
        let update = |rec: &mut DeploymentRecord| {
            rec.phases.insert(Phase::AfterAllowTraffic.to_string(), now_ms());
            rec.private_flip_at_ms.get_or_insert(flip_at);
            rec.outcome = Some("succeeded".to_string());
            rec.last_message = None;
        };
        let known_binding = known
            .as_ref()
            .and_then(|r| r.binding_record.clone())
            .filter(|k| k.application == b.application && k.deployment_group == b.deployment_group);
        let (known, known_binding) = 'together: {
            if let (Some(rec), Some(binding), Some(live)) = (&known, &known_binding, &live) {
                if binding.live_private_target_group.as_deref() != Some(live.as_str()) {
                    let mut binding = binding.clone();
                    binding.live_private_target_group = Some(live.clone());
                    binding.last_deployment = Some(deployment_id.to_string());
                    binding.updated_at_ms = now_ms();
                    binding.version += 1;
                    let mut rec = rec.clone();
                    update(&mut rec);
                    rec.version += 1;
                    // As written: a retry of this invocation then finds the binding's record already up to date.
                    rec.binding_record = Some(binding.clone());
                    match self.state.put_deployment_and_binding(&rec, &binding).await {
                        Ok(Saved::Written) => return,
                        // Most likely the binding's record changed since BeforeAllowTraffic read it: read it again.
                        Ok(Saved::Conflict) => {}
                        Err(e) => t.note(format!("records not written together ({e}); writing each on its own")),
                    }
                    break 'together (known, None);
                }
            }
            (known, known_binding)
        };
        let outcome = self.record_over(b, deployment_id, known, t, update);
        let binding = async {
            if let Some(live) = &live {
                self.record_binding_live(b, live, Some(deployment_id), known_binding, t).await;
            }
        };
        tokio::join!(outcome, binding);
    }

    /// Every route AfterAllowTraffic needs after the flip, in one read (the listeners in one DescribeListeners,
    /// the rules in one DescribeRules): the public production route, each side's production route as it now reads,
    /// each side's test route and the public test route it mirrors.
    async fn routes_after_flip(&self, deployment_id: &str, flip: &Flip<'_>, t: &Tracker) -> Result<RoutesAfterFlip> {
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
        let mut refs = vec![RouteRef::Listener(listener)];
        refs.extend(flip.sides.iter().map(|(side, _, _)| side.private_production_route.clone()));
        let public_test = flip.public_test_listener.as_ref().map(|l| RouteRef::Listener(l.clone()));
        let mirrors_public_test =
            |side: &Binding| side.private_test_route.is_some() && side.style() == RouteStyle::Weighted;
        for (side, _, _) in &flip.sides {
            refs.extend(side.private_test_route.clone());
        }
        if let Some(p) = public_test.as_ref().filter(|_| flip.sides.iter().any(|(s, _, _)| mirrors_public_test(s))) {
            refs.push(p.clone());
        }
        let routes = self.lb.routes(&refs).await?;
        let read = |r: &RouteRef| refs.iter().position(|x| x == r).and_then(|i| routes.get(i)).cloned();
        let public = routes.first().cloned().ok_or_else(|| Error::Invariant("no public route read".into()))?;
        // Always read above; an empty route would fail the check that follows, never pass it.
        let empty = || Route { target_groups: Vec::new(), stickiness_seconds: None };
        let production =
            flip.sides.iter().map(|(side, _, _)| read(&side.private_production_route).unwrap_or_else(empty)).collect();
        let tests = flip
            .sides
            .iter()
            .map(|(side, _, _)| {
                side.private_test_route.as_ref().and_then(|which| {
                    let public = public_test.as_ref().filter(|_| mirrors_public_test(side)).and_then(&read);
                    read(which).map(|current| (current, public))
                })
            })
            .collect();
        Ok(RoutesAfterFlip { public, production, tests })
    }

    /// One side after the flip: corrects it if the public route is not what was planned (then reads it again),
    /// checks that it reads as set, and that no live group is dark while its public mirror serves (I4). `read`
    /// is the route and the groups as read right after the flip; a group not among them, or any after a
    /// correction, is read now.
    async fn settle_side(
        &self,
        b: &Binding,
        public: &Route,
        flipped: Route,
        read: (Route, Vec<(String, Vec<ObservedTarget>)>),
        t: &Tracker,
    ) -> Result<Route> {
        let desired = mirror_route(public, &b.pair_arns(), b.style(), Some(&flipped))
            .map_err(|e| Error::Misconfigured(format!("binding {}: {e}", b.side_label())))?;
        let (now, mut targets) = read;
        let now = if desired.same_traffic(&flipped) {
            now
        } else {
            t.note(format!("public route is {public}; correcting the planned private route {flipped} to {desired}"));
            self.lb.set_route(&b.private_production_route, &desired).await?;
            t.route_change(flipped.to_string(), desired.to_string());
            targets.clear();
            self.lb.route(&b.private_production_route).await?
        };
        if !now.same_traffic(&desired) {
            return Err(Error::Invariant(format!(
                "the private production route {} reads {now} after it was set to {desired}; something else is \
                 changing it",
                b.private_production_route
            )));
        }
        // I4 (`dark_while_public_serves`), with what was read after the flip; a group not read then is read now,
        // and its public mirror only when the private group has no healthy target.
        let pairs = b.pair_arns();
        let mut seen: BTreeMap<String, Vec<ObservedTarget>> = targets.into_iter().collect();
        for tg in desired.live() {
            if !seen.contains_key(tg) {
                seen.insert(tg.to_string(), self.lb.targets(tg).await?);
            }
            let serves = seen.get(tg).is_some_and(|ts| ts.iter().any(|t| t.health == HealthState::Healthy));
            if let Some((public, _)) = pairs.iter().find(|(_, p)| p == tg).filter(|_| !serves) {
                if !seen.contains_key(public) {
                    seen.insert(public.clone(), self.lb.targets(public).await?);
                }
            }
        }
        if let Some(tg) = dark_while_public_serves(desired.live(), &pairs, &seen).first() {
            let public = pairs.iter().find(|(_, p)| p == tg).map_or("?", |(p, _)| p.as_str());
            return Err(Error::Invariant(format!(
                "the private production route would forward to {}, which has no healthy target while its public \
                 mirror {} has: not leaving the private side dark",
                name(tg),
                name(public)
            )));
        }
        Ok(desired)
    }

    /// Makes the private test route mirror the public test listener (I3). On an NLB, whose listeners forward to
    /// one group each, the test listener instead takes the group production no longer uses, so that both stay
    /// attached and health-checked.
    async fn converge_test_route(&self, b: &Binding, production: &Route, reads: TestReads, t: &Tracker) -> Result<()> {
        let (Some(which), Some((current, public))) = (&b.private_test_route, reads) else {
            return Ok(());
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

/// A side's test route as read, and the public test listener's route when it is mirrored (`None`: no test route).
type TestReads = Option<(Route, Option<Route>)>;

/// The routes as read right after the flip: the public production route, each side's production route, each
/// side's test reads.
#[derive(Debug)]
struct RoutesAfterFlip {
    public: Route,
    production: Vec<Route>,
    tests: Vec<TestReads>,
}
