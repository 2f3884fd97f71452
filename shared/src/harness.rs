//! The hook harness: the one place that turns "whatever the use case did" into **exactly one**
//! `PutLifecycleEventHookExecutionStatus` per invocation. The use case runs under a time budget cut from the
//! Lambda deadline (a reserve is kept for the report), panics are caught, and the report is retried while time
//! remains. Nothing between receiving the event and the report can skip it: there is no `?` on that path.
//! What a use case leaves to do once its verdict is decided (its [`Epilogue`]: records, never the verdict) runs
//! beside the report, so that CodeDeploy is not kept waiting for a write that cannot change what it is told.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::RouteRef;
use crate::domain::{Phase, Route};
use crate::ports::{HookReporter, HookStatus, Reported};
use crate::{Error, Result};

/// Time kept back from the Lambda deadline to send the report.
pub const REPORT_RESERVE: Duration = Duration::from_secs(5);

/// The time a use case may spend. Waits stop at the deadline and fail with a message.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
}

impl Budget {
    pub fn until(deadline: Instant) -> Self {
        Self { deadline }
    }

    pub fn after(d: Duration) -> Self {
        Self { deadline: Instant::now() + d }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The budget of an invocation whose Lambda deadline is `deadline`: up to it, less the reserve kept to report
    /// ([`REPORT_RESERVE`], at most a quarter of the time left). Returns the budget and the reserve.
    pub fn before(deadline: SystemTime) -> (Self, Duration) {
        let total = crate::clock::left_until(deadline);
        let reserve = REPORT_RESERVE.min(total / 4);
        (Self::after(total.saturating_sub(reserve)), reserve)
    }

    /// The earlier of this budget and `now + limit`.
    pub fn capped(&self, limit: Duration) -> Self {
        Self { deadline: self.deadline.min(Instant::now() + limit) }
    }
}

/// What a use case leaves to do once its verdict is decided: writes that record what happened and can change
/// nothing CodeDeploy is told (AfterAllowTraffic's records after its flip). Its type keeps it so: it yields
/// nothing, so it cannot fail the hook, and it runs after the use case, so it cannot put a route back.
pub struct Epilogue<'a>(Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>);

impl<'a> Epilogue<'a> {
    pub fn none() -> Self {
        Self(None)
    }

    pub fn of(work: impl Future<Output = ()> + Send + 'a) -> Self {
        Self(Some(Box::pin(work)))
    }
}

impl From<()> for Epilogue<'_> {
    fn from((): ()) -> Self {
        Self::none()
    }
}

impl std::fmt::Debug for Epilogue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Epilogue(pending)" } else { "Epilogue(none)" })
    }
}

/// What one invocation did, for its single structured log line and its response.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub binding: Option<String>,
    #[serde(skip)]
    pub application: Option<String>,
    #[serde(skip)]
    pub deployment_group: Option<String>,
    /// AfterAllowTraffic: how long after the hook began (CodeDeploy invokes it as production traffic has
    /// moved) the last private production route was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flip_skew_ms: Option<u64>,
    /// The follower: for each public move it mirrored, how long after the read that had not yet seen the move
    /// the private route was written (the most the private weights can have lagged).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weight_lag_ms: Vec<u64>,
    pub registered: usize,
    pub deregistered: usize,
    pub route_before: Option<String>,
    pub route_after: Option<String>,
    pub notes: Vec<String>,
    /// The reconciler: its reads stepped aside from the busy read lane, reading nothing, and its check was left to
    /// the next sweep.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stepped_aside: bool,
    /// The binding observes (shadow mode): nothing was written to its private side, and a failure is reported
    /// to CodeDeploy as a success, the would-be failure kept in `would_be_failure`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub observed: bool,
    /// What would have been written to the private side (shadow mode), in the order it was found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_be: Vec<crate::domain::WouldBe>,
    /// What an enforcing function would have failed with (shadow mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_be_failure: Option<String>,
    /// The public production route as a follower of an observed binding read each move (ms since the epoch), so
    /// that the record can draw the would-be private route beside it.
    #[serde(skip)]
    pub public_moves: Vec<(u64, Route)>,
    /// The routes to put back (one per private side) if the invocation fails after changing them.
    #[serde(skip)]
    pub undo: Vec<(RouteRef, Route)>,
}

/// A handle through which a use case fills in the summary as it goes, so that even a use case that fails or
/// times out half-way leaves a record of what it had done.
/// The second field is when the invocation began.
#[derive(Debug, Clone)]
pub struct Tracker(Arc<Mutex<Summary>>, std::time::Instant);

impl Default for Tracker {
    fn default() -> Self {
        Self(Arc::default(), std::time::Instant::now())
    }
}

impl Tracker {
    fn with<R>(&self, f: impl FnOnce(&mut Summary) -> R) -> R {
        // A poisoned lock only means a panic elsewhere; the summary is still worth reporting.
        let mut guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// The deployment group CodeDeploy named, before (or without) a binding for it: a failure from here on is
    /// published under the group it concerns.
    pub fn deployment_group(&self, application: &str, group: &str) {
        self.with(|s| {
            s.application = Some(application.to_string());
            s.deployment_group = Some(group.to_string());
        });
    }

    pub fn binding(&self, b: &crate::config::Binding) {
        self.with(|s| {
            s.binding = Some(b.label());
            s.application = Some(b.application.clone());
            s.deployment_group = Some(b.deployment_group.clone());
        });
    }

    /// The private production route(s) are written: the flip's skew behind the public one, as the hook sees it.
    pub fn flipped(&self) {
        let ms = u64::try_from(self.1.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.with(|s| s.flip_skew_ms = Some(ms));
    }

    /// The follower mirrored a public move; `lag` is the most the private weights can have been behind.
    pub fn followed_move(&self, lag: std::time::Duration) {
        self.with(|s| s.weight_lag_ms.push(u64::try_from(lag.as_millis()).unwrap_or(u64::MAX)));
    }

    pub fn mirrored(&self, registered: usize, deregistered: usize) {
        self.with(|s| {
            s.registered += registered;
            s.deregistered += deregistered;
        });
    }

    pub fn route_change(&self, before: String, after: String) {
        self.with(|s| {
            s.route_before.get_or_insert(before);
            s.route_after = Some(after);
        });
    }

    pub fn note(&self, note: impl Into<String>) {
        let note = note.into();
        tracing::info!(%note);
        self.with(|s| s.notes.push(note));
    }

    /// The reconciler's reads stepped aside from the busy read lane (see [`Summary::stepped_aside`]), as `note`
    /// says.
    pub fn step_aside(&self, note: impl Into<String>) {
        self.note(note);
        self.with(|s| s.stepped_aside = true);
    }

    /// Whether the binding at hand observes (shadow mode); the last word counts (the installation's, then the
    /// binding's).
    pub fn observing(&self, on: bool) {
        self.with(|s| s.observed = on);
    }

    pub fn observes(&self) -> bool {
        self.with(|s| s.observed)
    }

    /// A public move a follower of an observed binding read (see [`Summary::public_moves`]).
    pub fn public_move(&self, at_ms: u64, route: Route) {
        self.with(|s| s.public_moves.push((at_ms, route)));
    }

    /// The public moves read since the last call, for the deployment's record.
    pub fn take_public_moves(&self) -> Vec<(u64, Route)> {
        self.with(|s| std::mem::take(&mut s.public_moves))
    }

    /// Would-be actions found (shadow mode), each also in the log.
    pub fn would_be(&self, found: &[crate::domain::WouldBe]) {
        for w in found {
            self.note(format!("would have: {}", w.action));
        }
        self.with(|s| s.would_be.extend(found.iter().cloned()));
    }

    /// Remembers how to undo a route change, should the invocation fail from here on: every route so
    /// remembered is put back together.
    pub fn undo_with(&self, which: RouteRef, before: Route) {
        self.with(|s| {
            s.undo.retain(|(w, _)| *w != which);
            s.undo.push((which, before));
        });
    }

    pub fn take_undo(&self) -> Vec<(RouteRef, Route)> {
        self.with(|s| std::mem::take(&mut s.undo))
    }

    pub fn snapshot(&self) -> Summary {
        self.with(|s| s.clone())
    }
}

/// One lifecycle hook invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub phase: Phase,
    pub deployment_id: String,
    pub execution_id: String,
    /// The Lambda deadline (`Context::deadline()`).
    pub deadline: SystemTime,
}

/// The result of one invocation, after its report.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub phase: Phase,
    pub deployment_id: String,
    pub status: HookStatus,
    pub message: Option<String>,
    /// `None` when the report could not be delivered (then the response is an error, and Lambda's retry of
    /// the asynchronous invocation runs the idempotent hook again).
    pub reported: Option<Reported>,
    pub report_error: Option<String>,
    pub duration_ms: u64,
    #[serde(flatten)]
    pub summary: Summary,
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_string())
}

/// Runs `work` until the budget's deadline, turning a panic or running out of time into an error. Used by every
/// function, with or without a CodeDeploy report.
pub async fn guard<T>(budget: Budget, what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(budget.remaining(), AssertUnwindSafe(work).catch_unwind()).await {
        Ok(Ok(r)) => r,
        Ok(Err(p)) => Err(Error::Panic(panic_message(p.as_ref()))),
        Err(_) => Err(Error::Timeout(format!(
            "{what} ran out of its time budget; raise the function timeout or lower health_timeout_seconds"
        ))),
    }
}

/// Runs `body` under the invocation's budget and reports its verdict exactly once, running what the body left to
/// do after its verdict (its epilogue) beside the report.
pub async fn run<'e, R, F, Fut>(reporter: &R, inv: &Invocation, tracker: &Tracker, body: F) -> Outcome
where
    R: HookReporter,
    F: FnOnce(Budget) -> Fut,
    Fut: Future<Output = Result<Epilogue<'e>>> + Send,
{
    let started = Instant::now();
    let (budget, reserve) = Budget::before(inv.deadline);
    let work = budget.remaining();

    let result: Result<Epilogue<'e>> = match std::panic::catch_unwind(AssertUnwindSafe(|| body(budget))) {
        Err(p) => Err(Error::Panic(panic_message(p.as_ref()))),
        // The use case stops itself at the budget (and undoes what it must); this outer limit only catches one
        // that does not, and still leaves half the reserve for the report.
        Ok(fut) => match tokio::time::timeout(work + reserve / 2, AssertUnwindSafe(fut).catch_unwind()).await {
            Ok(Ok(r)) => r,
            Ok(Err(p)) => Err(Error::Panic(panic_message(p.as_ref()))),
            Err(_) => Err(Error::Timeout(format!(
                "{} did not finish within its budget of {} ms (the Lambda timeout less {} ms kept to report); \
                 raise the function timeout or lower health_timeout_seconds",
                inv.phase,
                work.as_millis(),
                reserve.as_millis()
            ))),
        },
    };
    let (status, message, epilogue) = match result {
        Ok(epilogue) => (HookStatus::Succeeded, None, epilogue),
        // Shadow mode never fails a deployment: what would have failed it is kept beside the verdict.
        Err(e) if tracker.observes() => {
            let failure = error_chain(&e);
            tracker.note(format!("would have reported Failed: {failure}"));
            tracker.with(|s| s.would_be_failure = Some(failure));
            (HookStatus::Succeeded, None, Epilogue::none())
        }
        Err(e) => (HookStatus::Failed, Some(error_chain(&e)), Epilogue::none()),
    };

    let report_deadline = Instant::now() + crate::clock::left_until(inv.deadline);
    let (report, ()) = tokio::join!(
        report_until(reporter, inv, status, report_deadline),
        after_verdict(epilogue, tracker, report_deadline)
    );
    let (reported, report_error) = match report {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(error_chain(&e))),
    };
    let outcome = Outcome {
        phase: inv.phase,
        deployment_id: inv.deployment_id.clone(),
        status,
        message,
        reported,
        report_error,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        summary: tracker.snapshot(),
    };
    log_summary(&outcome);
    outcome
}

/// Runs an epilogue until the deadline. Whatever becomes of it is noted: the verdict is already on its way.
async fn after_verdict(epilogue: Epilogue<'_>, tracker: &Tracker, deadline: Instant) {
    let Some(work) = epilogue.0 else { return };
    match tokio::time::timeout_at(deadline, AssertUnwindSafe(work).catch_unwind()).await {
        Ok(Ok(())) => {}
        Ok(Err(p)) => tracker.note(format!("warning: after the verdict: panicked: {}", panic_message(p.as_ref()))),
        Err(_) => tracker.note("warning: after the verdict: not finished by the Lambda deadline".to_string()),
    }
}

/// Retries transient report failures (throttling, 5xx, timeouts) with backoff until the deadline.
async fn report_until<R: HookReporter>(
    reporter: &R,
    inv: &Invocation,
    status: HookStatus,
    deadline: Instant,
) -> Result<Reported> {
    let mut wait = Duration::from_millis(200);
    loop {
        match reporter.report(&inv.deployment_id, &inv.execution_id, status).await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_transient() && Instant::now() + wait < deadline => {
                tracing::warn!(error = %e, "report failed, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The error and its sources, one line.
pub fn error_chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let c = cause.to_string();
        // The SDK's service error: its code and message are already in ours; below it is only their Debug form.
        if c == "service error" {
            break;
        }
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

fn log_summary(o: &Outcome) {
    let summary = serde_json::to_string(o).unwrap_or_default();
    match o.status {
        HookStatus::Succeeded => tracing::info!(
            target: "bluegreen_mirror::summary",
            hook = %o.phase, deployment_id = %o.deployment_id, verdict = o.status.as_str(),
            registered = o.summary.registered, deregistered = o.summary.deregistered,
            route_before = o.summary.route_before.as_deref().unwrap_or("-"),
            route_after = o.summary.route_after.as_deref().unwrap_or("-"),
            duration_ms = o.duration_ms, %summary, "hook finished"
        ),
        HookStatus::Failed => tracing::error!(
            target: "bluegreen_mirror::summary",
            hook = %o.phase, deployment_id = %o.deployment_id, verdict = o.status.as_str(),
            registered = o.summary.registered, deregistered = o.summary.deregistered,
            route_before = o.summary.route_before.as_deref().unwrap_or("-"),
            route_after = o.summary.route_after.as_deref().unwrap_or("-"),
            duration_ms = o.duration_ms, %summary, "hook failed: {}", o.message.as_deref().unwrap_or("-")
        ),
    }
}
