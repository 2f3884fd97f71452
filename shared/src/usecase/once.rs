//! One pass's reads, shared by a binding's private sides. Every side mirrors the same public target groups and
//! the same public routes; when the sides of one pass (a reconcile, a membership read, a hook's step, one poll of
//! the gate) each read them, a binding of N sides spends N reads of each from the account's ELB budget where one
//! says the same. The first side to ask makes the read; the others wait for it and take its answer.
//!
//! A pass is short and its reads are all "as of now": a step that must see the public side anew (a reconcile's
//! next round, the gate's next poll) takes a new pass.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;
use tokio::time::{Duration, Instant};

use crate::config::RouteRef;
use crate::domain::{ObservedTarget, Route};
use crate::ports::LoadBalancers;
use crate::Result;

type Memo<T> = Mutex<HashMap<String, Arc<OnceCell<T>>>>;

/// The reads of one pass, by target group, by route ARN, and by the routes read together.
pub(crate) struct ReadOnce<'l, L> {
    lb: &'l L,
    targets: Memo<Vec<ObservedTarget>>,
    routes: Memo<Route>,
    together: Memo<Vec<Route>>,
    /// When each target group's read answered.
    answered: Mutex<HashMap<String, Instant>>,
}

impl<'l, L: LoadBalancers> ReadOnce<'l, L> {
    pub(crate) fn new(lb: &'l L) -> Self {
        Self {
            lb,
            targets: Memo::default(),
            routes: Memo::default(),
            together: Memo::default(),
            answered: Mutex::default(),
        }
    }

    /// A pass in which `refs` were read together already, as `read` (a sweep reads many bindings' routes at once).
    pub(crate) fn knowing(lb: &'l L, refs: &[RouteRef], read: Vec<Route>) -> Self {
        let pass = Self::new(lb);
        pass.together
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_of(refs), Arc::new(OnceCell::new_with(Some(read))));
        pass
    }

    /// A target group's targets, read once in this pass.
    pub(crate) async fn targets(&self, target_group: &str) -> Result<Vec<ObservedTarget>> {
        once(&self.targets, target_group, || async {
            let read = self.lb.targets(target_group).await;
            if read.is_ok() {
                self.answered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(target_group.into(), Instant::now());
            }
            read
        })
        .await
    }

    /// How long ago this pass's read of a target group answered, if it made one: the age a write standing on it
    /// is judged by ([`crate::domain::stale`]).
    pub(crate) fn age(&self, target_group: &str) -> Option<Duration> {
        self.answered.lock().unwrap_or_else(PoisonError::into_inner).get(target_group).map(Instant::elapsed)
    }

    /// A route, read once in this pass.
    pub(crate) async fn route(&self, route: &RouteRef) -> Result<Route> {
        once(&self.routes, route.arn(), || self.lb.route(route)).await
    }

    /// Routes read together (one call for the listeners, one for the rules), in the order asked, once in this
    /// pass for the same list.
    pub(crate) async fn routes(&self, routes: &[RouteRef]) -> Result<Vec<Route>> {
        once(&self.together, &key_of(routes), || self.lb.routes(routes)).await
    }
}

fn key_of(routes: &[RouteRef]) -> String {
    routes.iter().map(RouteRef::arn).collect::<Vec<_>>().join(" ")
}

/// The value under `key`, read by `read` when no one has yet. A read that fails is not kept: the next caller
/// (one that was waiting on it included) reads again, so an error is the failed caller's alone.
async fn once<T, F, Fut>(memo: &Memo<T>, key: &str, read: F) -> Result<T>
where
    T: Clone,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let cell = memo.lock().unwrap_or_else(PoisonError::into_inner).entry(key.to_string()).or_default().clone();
    cell.get_or_try_init(read).await.cloned()
}
