//! The scheduled sweep's first reads, made for all the bindings of its run at once: their target groups, private
//! routes and public listeners in calls of many ARNs each (`DescribeTargetGroups`, `DescribeListeners` and
//! `DescribeRules` take lists), so that checking one more idle binding costs its four target groups' health and
//! a fraction of a call, not a preflight of its own. A binding whose look finds anything to change reconciles
//! from reads of its own: what was read ahead only ever says "nothing to do". A look's routes are as of its run's
//! start, up to a schedule's period before its health is read: a route that moves after that is the next look's to
//! see (and meanwhile the hooks', the follower's and the deployment's events').

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::preflight::{Preflight, SidesPass};
use super::{Engine, ReadOnce, Tracker};
use crate::config::{Binding, RouteRef};
use crate::domain::ARNS_PER_CALL;
use crate::ports::{Coordination, DeploymentGroupFacts, Deployments, Followers, LoadBalancers, StateStore};
use crate::Result;

/// How many bindings one read ahead covers: each names two public listeners and two private routes, so ten fill
/// one call of each kind (and their forty target groups two).
const BINDINGS_PER_READ: usize = ARNS_PER_CALL / 2;

/// One binding's reads ahead: each side's preflight, in order, and its public routes as read with them.
struct Looked {
    preflights: Vec<Option<Result<Preflight>>>,
    public: Vec<RouteRef>,
    public_read: Vec<crate::domain::Route>,
}

/// A run's reads ahead, by binding label; each is taken once, by that binding's check.
#[derive(Default)]
pub(super) struct Ahead(Mutex<HashMap<String, Looked>>);

impl Ahead {
    /// The first pass of binding `b`'s check, when it was read ahead.
    pub(super) fn pass<'l, L: LoadBalancers>(&self, lb: &'l L, b: &Binding) -> Option<SidesPass<'l, L>> {
        let looked = self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&b.label())?;
        Some(SidesPass::of(ReadOnce::knowing(lb, &looked.public, looked.public_read), looked.preflights))
    }
}

/// The public routes a check reads of a binding's group: its production and test listeners, in that order.
pub(super) fn public_routes(group: &DeploymentGroupFacts) -> (Option<RouteRef>, Option<RouteRef>) {
    (
        group.production_listeners.first().map(|l| RouteRef::Listener(l.clone())),
        group.test_listeners.first().map(|l| RouteRef::Listener(l.clone())),
    )
}

impl<L: LoadBalancers, D: Deployments, S: StateStore + Coordination, F: Followers> Engine<L, D, S, F> {
    /// Reads ahead for `bindings`, [`BINDINGS_PER_READ`] at a time, one read after the other. A read that finds
    /// something missing leaves its bindings out, for each one's own preflight to name it; any other failed read
    /// (a turn in the lane that comes too late, throttling) is the run's error: reading each binding instead would
    /// spend more of the same budget.
    pub(super) async fn read_ahead(
        &self,
        bindings: &[(&Binding, &DeploymentGroupFacts)],
        t: &Tracker,
    ) -> Result<Ahead> {
        let ahead = Ahead::default();
        for chunk in bindings.chunks(BINDINGS_PER_READ) {
            let sides: Vec<Binding> = chunk.iter().flat_map(|(b, _)| b.sides()).collect();
            let publics: Vec<Vec<RouteRef>> = chunk
                .iter()
                .map(|(_, g)| {
                    let (prod, test) = public_routes(g);
                    prod.into_iter().chain(test).collect()
                })
                .collect();
            let also: Vec<RouteRef> = publics.iter().flatten().cloned().collect();
            // One check's reads: the first waits its turn in the lane, the rest are counted.
            let _check = crate::reads::check();
            let Some((pres, public_read)) = self.read_together(&sides, &also, t).await? else { continue };
            let (mut pres, mut public_read) = (pres.into_iter(), public_read.into_iter());
            let mut map = ahead.0.lock().unwrap_or_else(PoisonError::into_inner);
            for ((b, _), public) in chunk.iter().zip(publics) {
                let preflights = pres.by_ref().take(b.sides().len()).map(Some).collect();
                let public_read = public_read.by_ref().take(public.len()).collect();
                map.insert(b.label(), Looked { preflights, public, public_read });
            }
        }
        Ok(ahead)
    }
}
