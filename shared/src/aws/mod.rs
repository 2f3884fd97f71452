//! AWS adapters: the only module that imports `aws_sdk_*`. Each adapter implements one or two ports and maps
//! SDK errors onto [`crate::Error`] with a coarse kind. Clients are built once per process (at cold start) with
//! bounded timeouts; endpoints come from the standard `AWS_ENDPOINT_URL*` variables, so the same binaries run
//! against AWS or an emulator.

mod codedeploy;
mod dynamodb;
mod elbv2;
mod errors;
mod lambda;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_smithy_http_client::tls;

pub use codedeploy::CodeDeploy;
pub use dynamodb::DynamoState;
pub use elbv2::{Elb, ReadBurst};
pub use errors::classify_code;
pub use lambda::{LambdaFollowers, FOLLOW_KEY};

use crate::config::Config;

/// Attempts per AWS call (the first and five retries).
pub const MAX_ATTEMPTS: u32 = 6;

/// The first retry's backoff ceiling; it doubles per attempt up to 5 s (100, 200, 400, 800, 1600 ms).
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// The SDK retry every client gets unless `AWS_MAX_ATTEMPTS` says otherwise.
pub(crate) fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(Duration::from_secs(5))
}

/// The adapters of one function, built from one shared SDK configuration.
#[derive(Debug, Clone)]
pub struct Aws {
    pub elb: Elb,
    pub codedeploy: CodeDeploy,
    pub state: DynamoState,
    pub followers: LambdaFollowers,
}

impl Aws {
    /// Loads the standard credential/region chain and builds the clients. Per-attempt timeouts keep one slow
    /// call from eating a hook's whole budget; the SDK's standard retry ([`MAX_ATTEMPTS`] attempts,
    /// `AWS_MAX_ATTEMPTS` overrides) absorbs throttling, 5xx and dropped connections, except for ELB's `Describe*`
    /// calls, which get one quick retry and then pause the process's reads when throttled ([`Elb`]).
    pub async fn load(config: &Config) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http).timeout_config(timeouts);
        // A hook that gives up on a throttled call fails a deployment: retry harder than the SDK's default of 3
        // attempts (unless the operator chose with AWS_MAX_ATTEMPTS), with backoff capped well inside the budget.
        // The first backoff is short ([`INITIAL_BACKOFF`], jittered, doubling): the SDK's default of about 1 s let
        // a throttled reconcile fall behind a target group's deregistration delay, so a replaced task could stop
        // while its private mirror still received traffic.
        if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
            loader = loader.retry_config(retry_config());
        }
        let sdk = loader.load().await;
        Self {
            elb: Elb::new(aws_sdk_elasticloadbalancingv2::Client::new(&sdk)),
            codedeploy: CodeDeploy::new(aws_sdk_codedeploy::Client::new(&sdk)),
            state: DynamoState::new(aws_sdk_dynamodb::Client::new(&sdk), config.table.clone()),
            followers: LambdaFollowers::new(aws_sdk_lambda::Client::new(&sdk), config.follower_function.clone()),
        }
    }
}
