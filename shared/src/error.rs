//! The crate's one error type. Every variant says what went wrong in words an operator can act on; AWS failures
//! keep their source and a coarse kind so that policy (retry, treat as done, fail the hook) is decided in one
//! place instead of by matching on strings.

use std::error::Error as StdError;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed source error kept for the `source()` chain.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Coarse classes of AWS failures that the use cases and the harness treat differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// Request rate exceeded even after the SDK's own retries.
    Throttled,
    /// The named resource does not exist.
    NotFound,
    /// The caller lacks an IAM permission.
    AccessDenied,
    /// A DynamoDB condition (our version check) did not hold.
    ConditionFailed,
    /// CodeDeploy already has a status for this lifecycle hook execution.
    AlreadyCompleted,
    /// The request or the connection timed out.
    Timeout,
    /// The service rejected the request as invalid.
    Invalid,
    /// Anything else: 5xx, connection failure, unexpected response.
    Other,
}

/// Everything that can go wrong, one enum for the whole crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The function's environment is missing or malformed (found at cold start).
    #[error("configuration error: {0}")]
    Config(String),

    /// The invocation payload is not what the function accepts.
    #[error("malformed event: {0}")]
    Event(String),

    /// The deployment, a binding or an AWS resource is set up in a way the hooks refuse to work with.
    /// The message says what to fix.
    #[error("{0}")]
    Misconfigured(String),

    /// A call to AWS failed.
    #[error("{service} {operation} failed ({kind:?}): {message}")]
    Aws {
        service: &'static str,
        operation: &'static str,
        kind: AwsErrorKind,
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A wait ran out of time before its condition held.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The installation's read lane gives this read its turn only after the invocation would have ended: the
    /// read stepped aside, reading nothing (see [`crate::domain::lane`]).
    #[error("{0}")]
    LaneBusy(String),

    /// Mirrored targets did not become healthy on the private load balancer.
    #[error("{0}")]
    Unhealthy(String),

    /// A check after a change found the private side not in the state it must be in.
    #[error("invariant broken: {0}")]
    Invariant(String),

    /// Concurrent writers kept winning the version check.
    #[error("state conflict: {0}")]
    Conflict(String),

    /// A stored or received document did not (de)serialise.
    #[error("could not decode {what}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// The use case panicked; the harness caught it and reported `Failed`.
    #[error("internal error (panic): {0}")]
    Panic(String),
}

impl Error {
    /// The AWS error kind, when this is an AWS failure.
    pub fn aws_kind(&self) -> Option<AwsErrorKind> {
        match self {
            Error::Aws { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether trying the same thing again soon may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.aws_kind(), Some(AwsErrorKind::Throttled | AwsErrorKind::Timeout | AwsErrorKind::Other))
    }
}
