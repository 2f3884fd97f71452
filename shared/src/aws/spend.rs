//! Counts what a process spends of the account's ELB budget: every attempt that reaches ELB, and those ELB
//! refuses as throttled, as an SDK interceptor sees them (retries included: each attempt costs a token); and how
//! long its reads waited in the installation's read lane, as the ELB adapter tells it. The
//! functions publish the counts per invocation as metrics (`crate::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::domain::ElbSpend;

/// The counters, shared by the ELB client's interceptor and whoever reads them.
#[derive(Debug, Clone, Default)]
pub struct ElbCounter(Arc<[AtomicU64; 3]>);

impl ElbCounter {
    /// What was spent since the last call (a function takes it once per invocation).
    pub fn take(&self) -> ElbSpend {
        ElbSpend {
            calls: self.0[0].swap(0, Ordering::Relaxed),
            throttles: self.0[1].swap(0, Ordering::Relaxed),
            lane_wait_ms: self.0[2].swap(0, Ordering::Relaxed),
        }
    }

    /// A read waited this long for its turn in the installation's read lane.
    pub(crate) fn waited(&self, wait: std::time::Duration) {
        self.0[2].fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
    }

    fn count(&self, throttled: bool) {
        self.0[0].fetch_add(1, Ordering::Relaxed);
        if throttled {
            self.0[1].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether an ELB response body is a throttling refusal (ELB answers `400` with `<Code>Throttling</Code>`).
pub(crate) fn is_throttling(status: u16, body: &[u8]) -> bool {
    if status != 400 && status != 429 && status != 503 {
        return false;
    }
    let text = String::from_utf8_lossy(body);
    let code = text.split("<Code>").nth(1).and_then(|rest| rest.split("</Code>").next()).unwrap_or("");
    super::classify_code(code) == crate::AwsErrorKind::Throttled
}

impl Intercept for ElbCounter {
    fn name(&self) -> &'static str {
        "ElbCounter"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let throttled = context
            .response()
            .is_some_and(|r| is_throttling(r.status().as_u16(), r.body().bytes().unwrap_or_default()));
        self.count(throttled);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_elbs_code_on_a_refusal() {
        let body = b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>";
        assert!(is_throttling(400, body));
        assert!(!is_throttling(200, body));
        assert!(!is_throttling(400, b"<ErrorResponse><Error><Code>TargetGroupNotFound</Code></Error></ErrorResponse>"));
        assert!(!is_throttling(400, b""));
    }

    #[test]
    fn take_gives_what_was_spent_since_the_last_take() {
        let c = ElbCounter::default();
        c.count(false);
        c.count(true);
        c.waited(std::time::Duration::from_millis(1500));
        assert_eq!(c.take(), ElbSpend { calls: 2, throttles: 1, lane_wait_ms: 1500 });
        assert_eq!(c.take(), ElbSpend::default());
    }
}
