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
    let context = aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
    let (kind, message) = match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("Unknown");
            let msg = se.err().message().unwrap_or("no message");
            let message = match credentials_refused(code) {
                true => format!(
                    "{code}: {msg} — the AWS credentials are expired or not valid: refresh them (a new session, \
                     `aws sso login`) and run again"
                ),
                false => format!("{code}: {msg}"),
            };
            (classify_code(code), message)
        }
        SdkError::TimeoutError(_) => (AwsErrorKind::Timeout, "request timed out".to_string()),
        SdkError::DispatchFailure(d) if d.is_timeout() => (AwsErrorKind::Timeout, "connection timed out".to_string()),
        // Credentials are resolved as the request goes out: their absence can surface as a dispatch failure.
        SdkError::DispatchFailure(_) if names_setup(&context) => (AwsErrorKind::Other, unsent(&context)),
        SdkError::DispatchFailure(_) => (
            AwsErrorKind::Other,
            format!(
                "could not reach {service}'s endpoint ({}): check the network, a proxy, or AWS_ENDPOINT_URL",
                last_cause(&context)
            ),
        ),
        SdkError::ResponseError(_) => (AwsErrorKind::Other, "unreadable response".to_string()),
        _ => (AwsErrorKind::Other, unsent(&context)),
    };
    let message = match kind {
        AwsErrorKind::AccessDenied if !message.contains("credentials are expired") => {
            format!("{message} — grant {service}:{operation} on {resource} to the function's role")
        }
        _ => message,
    };
    Error::Aws { service, operation, kind, message, source: Some(Box::new(err)) }
}

/// Codes with which AWS refuses the credentials themselves, not a permission: no grant helps.
fn credentials_refused(code: &str) -> bool {
    matches!(code, "ExpiredToken" | "ExpiredTokenException" | "InvalidClientTokenId" | "UnrecognizedClientException")
}

/// The innermost cause in the SDK's rendering of an error chain ("a: b: c" → "c").
fn last_cause(context: &str) -> &str {
    context.rsplit(": ").next().unwrap_or(context).trim()
}

/// Whether the SDK's rendering of an error names the caller's own setup (region, credentials) as the cause.
fn names_setup(context: &str) -> bool {
    let lower = context.to_ascii_lowercase();
    ["region", "credential", "imds"].iter().any(|w| lower.contains(w))
}

/// A request the SDK could not even build or sign, said as what a person can act on: the SDK's own words
/// ("missing signing region", "failed to load IMDS session token") name the mechanism, not the fix.
fn unsent(context: &str) -> String {
    let lower = context.to_ascii_lowercase();
    if lower.contains("region") {
        "no AWS region: set AWS_REGION (or pass --region)".to_string()
    } else if lower.contains("credential") || lower.contains("imds") || lower.contains("token") {
        "no AWS credentials found: set AWS_PROFILE (or pass --profile), or AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY, or run where a role provides them"
            .to_string()
    } else {
        format!("the request could not be made: {}", last_cause(context))
    }
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

    #[test]
    fn a_request_never_sent_says_what_to_set() {
        let region = unsent("failed to construct request: missing signing region");
        assert!(region.contains("set AWS_REGION"), "{region}");
        let creds = unsent("dispatch failure: other: failed to load IMDS session token: error sending request");
        assert!(creds.contains("no AWS credentials found") && creds.contains("AWS_PROFILE"), "{creds}");
        assert!(unsent("no credentials in the property bag").contains("AWS_ACCESS_KEY_ID"));
        assert_eq!(last_cause("dispatch failure: io error: Connection refused"), "Connection refused");
        assert!(credentials_refused("ExpiredToken") && !credentials_refused("AccessDenied"));
    }
}
