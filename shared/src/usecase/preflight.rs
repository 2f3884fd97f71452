//! The preflight: what every hook and reconcile checks of a binding's resources before it changes anything
//! (target group types, ports and protocols, attachment, listeners and rules), read together for every side, and
//! the state table's check.

use super::{missing, name, Engine, ReadOnce, Tracker, STATE_READ_BOUND};
use crate::config::{Binding, RouteRef};
use crate::domain::{compat, BindingRecord, GroupShape, Route};
use crate::ports::{Coordination, Deployments, Followers, LoadBalancers, StateStore};
use crate::{AwsErrorKind, Error, Result};

/// The private routes as the preflight found them.
#[derive(Debug)]
pub(super) struct Preflight {
    pub(super) production: Route,
    pub(super) test: Option<Route>,
}

/// One pass over the private sides of a binding that then go their own ways (a reconcile's first round,
/// `status`): the public reads they share, and each side's preflight read together with the others' (see
/// [`Engine::preflight_together`]), handed to that side once.
pub(super) struct SidesPass<'l, L> {
    reads: ReadOnce<'l, L>,
    preflights: std::sync::Mutex<Vec<Option<Result<Preflight>>>>,
}

/// What one side takes from a [`SidesPass`]: the shared reads, and its preflight when it was read with the
/// others' (a side without one makes its own, see [`Engine::preflight_or_own`]).
pub(super) struct SidePass<'p, 'l, L> {
    pub(super) reads: &'p ReadOnce<'l, L>,
    pub(super) preflight: Option<Result<Preflight>>,
}

impl<'l, L: LoadBalancers> SidesPass<'l, L> {
    /// A pass whose first reads were made already: `reads` holds them, `preflights` each side's, in order.
    pub(super) fn of(reads: ReadOnce<'l, L>, preflights: Vec<Option<Result<Preflight>>>) -> Self {
        Self { reads, preflights: std::sync::Mutex::new(preflights) }
    }

    pub(super) fn side(&self, side: usize) -> SidePass<'_, 'l, L> {
        let preflight = self
            .preflights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(side)
            .and_then(Option::take);
        SidePass { reads: &self.reads, preflight }
    }
}

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// Checks every resource the binding names before anything is changed: the four target groups exist, are
    /// of type `ip`, mirror each other's port and protocol, and the private ones belong to the private load
    /// balancer only; the private routes exist, are plain forwards, and forward only to the binding's private
    /// target groups.
    pub(super) async fn preflight(&self, b: &Binding, t: &Tracker) -> Result<Preflight> {
        let mut arns = b.public_target_groups();
        arns.extend(b.private_target_groups());
        let each = || async {
            let production = self
                .lb
                .route(&b.private_production_route)
                .await
                .map_err(missing(format!("private production route ({})", b.private_production_route)))?;
            let test = match &b.private_test_route {
                Some(r) => Some(self.lb.route(r).await.map_err(missing(format!("private test route ({r})")))?),
                None => None,
            };
            Ok::<_, Error>((production, test))
        };
        // Both routes in one read (one call for the listeners, one for the rules), as a binding of several sides
        // reads them; one that is missing is named by reading each.
        let route_reads = async {
            let Some(test) = &b.private_test_route else { return each().await };
            match self.lb.routes(&[b.private_production_route.clone(), test.clone()]).await {
                Ok(read) => match <[Route; 2]>::try_from(read) {
                    Ok([production, test]) => Ok((production, Some(test))),
                    Err(read) => Err(Error::Invariant(format!("2 private routes asked for, {} answered", read.len()))),
                },
                Err(e) if e.aws_kind() == Some(AwsErrorKind::NotFound) => each().await,
                Err(e) => Err(e),
            }
        };
        let (groups, routes) = tokio::join!(self.lb.target_groups(&arns), route_reads);
        let groups = groups.map_err(missing(format!("one of the target groups of binding {}", b.side_label())))?;
        let (production, test) = routes?;
        checked_preflight(b, &groups, production, test, t)
    }

    /// [`Self::preflight`] of every private side and, alongside, the state table check: what a hook runs
    /// before it changes anything. The reconciler and the flip's slow path use the preflight alone: keeping the
    /// private side in lockstep never waits on a record, and the two hooks before the flip have checked the table
    /// already. Returns each side with its preflight, in order, and the binding's record as the check read it.
    pub(super) async fn preflight_and_state(
        &self,
        b: &Binding,
        t: &Tracker,
    ) -> Result<(Vec<(Binding, Preflight)>, Option<BindingRecord>)> {
        let (pre, state) = tokio::join!(self.preflight_sides(b, t), self.state_table_usable(b, t));
        let pre = pre?;
        Ok((pre, state?))
    }

    /// [`Self::preflight`] of every private side: together (see [`Self::preflight_together`]), or each on its
    /// own when the reads together found something missing, so that the error says which side and what.
    pub(super) async fn preflight_sides(&self, b: &Binding, t: &Tracker) -> Result<Vec<(Binding, Preflight)>> {
        let sides = b.sides();
        if let Some(pres) = self.preflight_together(&sides, t).await? {
            return sides.into_iter().zip(pres).map(|(side, pre)| Ok((side, pre?))).collect();
        }
        let pres = futures_util::future::try_join_all(sides.iter().map(|side| self.preflight(side, t))).await?;
        Ok(sides.into_iter().zip(pres).collect())
    }

    /// A [`SidesPass`] over every side of `b`: the sides' preflights read together; a side whose preflight fails
    /// fails alone.
    pub(super) async fn sides_pass(&self, b: &Binding, t: &Tracker) -> Result<SidesPass<'_, super::Shadow<L>>> {
        let together = self.preflight_together(&b.sides(), t).await?;
        Ok(SidesPass {
            reads: ReadOnce::new(&self.lb),
            preflights: std::sync::Mutex::new(together.unwrap_or_default().into_iter().map(Some).collect()),
        })
    }

    /// The preflight read with the other sides', or this side's own when there was none.
    pub(super) async fn preflight_or_own(
        &self,
        b: &Binding,
        read: Option<Result<Preflight>>,
        t: &Tracker,
    ) -> Result<Preflight> {
        match read {
            Some(pre) => pre,
            None => self.preflight(b, t).await,
        }
    }

    /// Every side's preflight from one read of them all, when there is more than one side: every side's groups in
    /// one `DescribeTargetGroups` (the public ones are every side's) and every side's private routes in one read
    /// per kind, instead of a round of reads per side. Each side's own outcome, in order; `None` when there is one
    /// side, or when the read found something missing (a read of many ARNs does not say which one), for each
    /// side's own preflight to name it. Any other failed read fails them all: reading again per side would only
    /// spend more of a throttled budget.
    pub(super) async fn preflight_together(
        &self,
        sides: &[Binding],
        t: &Tracker,
    ) -> Result<Option<Vec<Result<Preflight>>>> {
        if sides.len() < 2 {
            return Ok(None);
        }
        Ok(self.read_together(sides, &[], t).await?.map(|(pres, _)| pres))
    }

    /// The sides' preflights, as [`Self::preflight_together`] reads them for any number of sides (of one binding or
    /// of many), and the routes `also` in the same reads. `None` when something was missing.
    pub(super) async fn read_together(
        &self,
        sides: &[Binding],
        also: &[RouteRef],
        t: &Tracker,
    ) -> Result<Option<(Vec<Result<Preflight>>, Vec<Route>)>> {
        let mut arns: Vec<&str> =
            sides.iter().flat_map(|s| s.public_target_groups().into_iter().chain(s.private_target_groups())).collect();
        arns.sort_unstable();
        arns.dedup();
        let refs: Vec<RouteRef> = sides
            .iter()
            .flat_map(|s| std::iter::once(s.private_production_route.clone()).chain(s.private_test_route.clone()))
            .chain(also.iter().cloned())
            .collect();
        let (groups, routes) = tokio::join!(self.lb.target_groups(&arns), self.lb.routes(&refs));
        let (groups, routes) = match (groups, routes) {
            (Ok(groups), Ok(routes)) => (groups, routes),
            (Err(e), _) | (_, Err(e)) if e.aws_kind() != Some(AwsErrorKind::NotFound) => return Err(e),
            _ => return Ok(None),
        };
        let read = |r: &RouteRef| {
            refs.iter()
                .position(|x| x == r)
                .and_then(|i| routes.get(i))
                .cloned()
                .ok_or_else(|| Error::Invariant(format!("route {r} asked for and not answered")))
        };
        let pres = sides
            .iter()
            .map(|side| {
                let production = read(&side.private_production_route)?;
                let test = side.private_test_route.as_ref().map(&read).transpose()?;
                checked_preflight(side, &groups, production, test, t)
            })
            .collect();
        Ok(Some((pres, also.iter().map(read).collect::<Result<_>>()?)))
    }

    /// The state table must exist and be readable: records, the planned flip and the follower's lease live
    /// there. A missing table or a missing permission is configuration and fails; anything else (throttling
    /// that outlasted the retries, a 5xx, no answer within [`STATE_READ_BOUND`]) is noted, because a record is
    /// never the truth. The check reads the binding's record: returned (version 0 when there is none yet), or
    /// `None` when it could not be read.
    pub(super) async fn state_table_usable(&self, b: &Binding, t: &Tracker) -> Result<Option<BindingRecord>> {
        let read = tokio::time::timeout(STATE_READ_BOUND, self.state.binding(&b.application, &b.deployment_group));
        let e = match read.await {
            Ok(Ok(rec)) => {
                return Ok(Some(rec.unwrap_or_else(|| BindingRecord::new(&b.application, &b.deployment_group))))
            }
            Ok(Err(e)) => e,
            Err(_) => {
                t.note(format!(
                    "warning: state table {} did not answer within {} ms",
                    self.config.table,
                    STATE_READ_BOUND.as_millis()
                ));
                return Ok(None);
            }
        };
        match e.aws_kind() {
            Some(AwsErrorKind::NotFound) => Err(Error::Misconfigured(format!(
                "the state table {} does not exist: create it (infra/template.yaml does) or set \
                 BLUEGREEN_MIRROR_TABLE to the table's name ({e})",
                self.config.table
            ))),
            Some(AwsErrorKind::AccessDenied) => Err(e),
            _ => {
                t.note(format!("warning: state table {} not readable now: {e}", self.config.table));
                Ok(None)
            }
        }
    }
}

/// Notes (and logs) a warning for each NLB side of `b` whose deployment group terminates the original tasks before
/// the NLB's traffic may have left them ([`crate::domain::nlb_termination_warning`]): a setting of the deployment
/// group, read with it at no extra call, that only its owner can change.
pub(crate) fn warn_nlb_timing(b: &Binding, termination_wait: Option<std::time::Duration>, t: &Tracker) {
    for side in b.sides() {
        if crate::domain::arn::load_balancer_kind(side.private_production_route.arn()) != Some("net") {
            continue;
        }
        let label = side.side_label();
        if let Some(w) =
            crate::domain::nlb_termination_warning(&label, &b.application, &b.deployment_group, termination_wait)
        {
            tracing::warn!(binding = %label, "{w}");
            t.note(w);
        }
    }
}

/// The preflight's rules over what was read for side `b`: `groups` holds (at least) its four target groups.
fn checked_preflight(
    b: &Binding,
    groups: &[crate::ports::TargetGroupFacts],
    production: Route,
    test: Option<Route>,
    t: &Tracker,
) -> Result<Preflight> {
    let lb_arn = b.private_load_balancer().unwrap_or_default();
    let find = |a: &str| {
        groups.iter().find(|g| g.arn == a).ok_or_else(|| {
            Error::Misconfigured(format!("target group {a} of binding {} does not exist", b.side_label()))
        })
    };
    for p in &b.pairs {
        let (public, private) = (find(&p.public_target_group)?, find(&p.private_target_group)?);
        for g in [public, private] {
            if g.target_type != "ip" {
                return Err(Error::Misconfigured(format!(
                    "target group {} is of type `{}`; task IPs can only be mirrored between target groups of type `ip`",
                    g.name, g.target_type
                )));
            }
        }
        let (public_shape, private_shape) = (shape(public), shape(private));
        if let Some(problem) = compat::incompatibility(&public_shape, &private_shape) {
            return Err(Error::Misconfigured(format!("binding {}: {problem}", b.side_label())));
        }
        if let Some(other) = private.load_balancers.iter().find(|l| **l != lb_arn) {
            return Err(Error::Misconfigured(format!(
                "private target group {} is attached to load balancer {other}, not (only) to the binding's private \
                 load balancer {lb_arn}: a mirror must belong to the private load balancer alone",
                private.name
            )));
        }
        for warning in compat::weaker_health_checks(&public_shape, &private_shape) {
            t.note(warning);
        }
    }
    let privates = b.private_target_groups();
    let check = |what: &str, route: &Route| -> Result<()> {
        for w in &route.target_groups {
            if !privates.contains(&w.target_group.as_str()) {
                return Err(Error::Misconfigured(format!(
                    "the {what} forwards to target group {}, which binding {} does not name; \
                     point it at the binding's private target groups",
                    name(&w.target_group),
                    b.side_label()
                )));
            }
        }
        Ok(())
    };
    check("private production route", &production)?;
    if let Some(test) = &test {
        check("private test route", test)?;
    }
    Ok(Preflight { production, test })
}

/// What the compatibility rule reads of a target group.
fn shape(g: &crate::ports::TargetGroupFacts) -> GroupShape<'_> {
    GroupShape { arn: &g.arn, name: &g.name, protocol: g.protocol.as_deref(), port: g.port, health: &g.health_check }
}

/// Refuses a deployment group whose target groups the binding does not name as public ones.
pub(super) fn uses_only_bound_groups(b: &Binding, target_group_names: &[String]) -> Result<()> {
    match target_group_names.iter().find(|n| b.public_named(n).is_none()) {
        Some(tg) => Err(Error::Misconfigured(format!(
            "deployment group {} uses target group {tg}, which binding {} does not name as a public target group: \
             fix the binding's pairs",
            b.deployment_group,
            b.label()
        ))),
        None => Ok(()),
    }
}
