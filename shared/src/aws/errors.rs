//! SDK errors → [`Error`]: one classification for every service, from the error code the service returned.

use std::error::Error as StdError;
use std::fmt::Debug;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::{AwsErrorKind, Error};

/// The kind of an AWS error code (the same codes across ELB, CodeDeploy and DynamoDB).
pub fn classify_code(code: &str) -> AwsErrorKind {
    match code {
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "ProvisionedThroughputExceededException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "SlowDown" => AwsErrorKind::Throttled,
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException" => AwsErrorKind::AccessDenied,
        "ConditionalCheckFailedException" => AwsErrorKind::ConditionFailed,
        "LifecycleEventAlreadyCompletedException" => AwsErrorKind::AlreadyCompleted,
        c if c.ends_with("NotFound") || c.ends_with("NotFoundException") || c.ends_with("DoesNotExistException") => {
            AwsErrorKind::NotFound
        }
        c if c.starts_with("Invalid") || c.starts_with("Validation") || c.ends_with("RequiredException") => {
            AwsErrorKind::Invalid
        }
        _ => AwsErrorKind::Other,
    }
}

/// Maps an SDK error of `service`'s `operation` on `resource` (an ARN, or a description where IAM scopes by
/// something the adapter does not know; `*` for actions IAM cannot scope), keeping it as the source.
pub(crate) fn aws_error<E, R>(
    service: &'static str,
    operation: &'static str,
    resource: &str,
    err: SdkError<E, R>,
) -> Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    let (kind, message) = match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown");
            let msg = se.err().message().unwrap_or("no message");
            (classify_code(code), format!("{code}: {msg}"))
        }
        SdkError::TimeoutError(_) => (AwsErrorKind::Timeout, "request timed out".to_string()),
        SdkError::DispatchFailure(d) if d.is_timeout() => (AwsErrorKind::Timeout, "connection timed out".to_string()),
        SdkError::DispatchFailure(_) => (AwsErrorKind::Other, "could not send the request".to_string()),
        SdkError::ResponseError(_) => (AwsErrorKind::Other, "unreadable response".to_string()),
        _ => (AwsErrorKind::Other, "request failed".to_string()),
    };
    let message = match kind {
        AwsErrorKind::AccessDenied => {
            format!("{message} — grant {service}:{operation} on {resource} to the function's role")
        }
        _ => message,
    };
    Error::Aws { service, operation, kind, message, source: Some(Box::new(err)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        use AwsErrorKind::*;
        for (code, kind) in [
            ("Throttling", Throttled),
            ("ThrottlingException", Throttled),
            ("ProvisionedThroughputExceededException", Throttled),
            ("TargetGroupNotFound", NotFound),
            ("ListenerNotFound", NotFound),
            ("RuleNotFound", NotFound),
            ("DeploymentDoesNotExistException", NotFound),
            ("ResourceNotFoundException", NotFound),
            ("AccessDenied", AccessDenied),
            ("AccessDeniedException", AccessDenied),
            ("ConditionalCheckFailedException", ConditionFailed),
            ("LifecycleEventAlreadyCompletedException", AlreadyCompleted),
            ("ValidationError", Invalid),
            ("InvalidDeploymentIdException", Invalid),
            ("InternalFailure", Other),
        ] {
            assert_eq!(classify_code(code), kind, "{code}");
        }
    }
}
