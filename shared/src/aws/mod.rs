//! AWS adapters: the only module that imports `aws_sdk_*`. Each adapter implements one or two ports and maps
//! SDK errors onto [`crate::Error`] with a coarse kind. Clients are built once per process (at cold start) with
//! bounded timeouts; endpoints come from the standard `AWS_ENDPOINT_URL*` variables, so the same binaries run
//! against AWS or an emulator.

mod codedeploy;
mod dynamodb;
mod elbv2;
mod errors;
mod lambda;
mod spend;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_smithy_http_client::tls;

pub use codedeploy::CodeDeploy;
pub use dynamodb::{DynamoState, ReadLane};
pub use elbv2::{Elb, ReadBurst};
pub use errors::classify_code;
pub use lambda::{LambdaFollowers, FOLLOW_KEY};
pub use spend::ElbCounter;

use crate::config::Config;

/// Attempts per AWS call (the first and five retries).
pub const MAX_ATTEMPTS: u32 = 6;

/// The first retry's backoff ceiling; it doubles per attempt up to 5 s (100, 200, 400, 800, 1600 ms).
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// The SDK retry every client gets unless `AWS_MAX_ATTEMPTS` says otherwise.
///
/// A hook that gives up on a throttled call fails a deployment: it retries harder than the SDK's default of 3
/// attempts, with backoff capped well inside the budget. The first backoff is short ([`INITIAL_BACKOFF`],
/// jittered, doubling): the SDK's default of about 1 s let a throttled reconcile fall behind a target group's
/// deregistration delay, so a replaced task could stop while its private mirror still received traffic.
pub(crate) fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(Duration::from_secs(5))
}

fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(30))
        .build()
}

/// One HTTPS client for every SDK client, rustls on ring.
fn https() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// The adapters of one function, built from one shared SDK configuration.
#[derive(Debug, Clone)]
pub struct Aws {
    pub elb: Elb,
    pub codedeploy: CodeDeploy,
    pub state: DynamoState,
    /// What the ELB client spends of the account's budget.
    pub elb_spend: ElbCounter,
    /// Kept for the clients only some functions build ([`Aws::followers`]).
    sdk: aws_config::SdkConfig,
}

impl Aws {
    /// The clients as the operator CLI builds them: the SDK's standard credential and region chain (profiles,
    /// SSO, the environment...), with [`Aws::from_sdk`]'s timeouts and retries.
    pub async fn load(config: &Config) -> Self {
        Self::load_for_operator(config, None, None).await
    }

    /// [`Aws::load`] with the operator's `--region` and `--profile` chosen over the chain's.
    pub async fn load_for_operator(config: &Config, region: Option<&str>, profile: Option<&str>) -> Self {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).http_client(https()).timeout_config(timeouts());
        if std::env::var_os("AWS_MAX_ATTEMPTS").is_none() {
            loader = loader.retry_config(retry_config());
        }
        if let Some(profile) = profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.to_string()));
        }
        Self::from_sdk(loader.load().await, config)
    }

    /// The region the clients were built for, when the chain found one.
    pub fn region(&self) -> Option<String> {
        self.sdk.region().map(|r| r.to_string())
    }

    /// The clients as a Lambda function builds them, from what Lambda puts in its environment alone: the region
    /// (`AWS_REGION`), the execution role's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`), and `AWS_ENDPOINT_URL` (or a service's `AWS_ENDPOINT_URL_<SERVICE>`) when set. The SDK's default chain (profiles, SSO, IMDS, STS)
    /// is never used by a function and would be a tenth of its binary. Without a region the function stops at cold
    /// start, saying so.
    pub fn for_function(config: &Config) -> crate::Result<Self> {
        Ok(Self::from_sdk(Self::function_sdk()?, config))
    }

    /// The CodeDeploy client alone, as a function builds it: what a hook whose configuration is invalid still
    /// needs, to report `Failed` rather than leave CodeDeploy waiting for the hook's timeout.
    pub fn codedeploy_for_function() -> crate::Result<CodeDeploy> {
        let mut codedeploy = aws_sdk_codedeploy::config::Builder::from(&Self::function_sdk()?);
        if let Some(url) = service_endpoint("CODEDEPLOY") {
            codedeploy.set_endpoint_url(Some(url));
        }
        Ok(CodeDeploy::new(aws_sdk_codedeploy::Client::from_conf(codedeploy.build())))
    }

    /// The SDK configuration of a function, from Lambda's environment alone.
    fn function_sdk() -> crate::Result<aws_config::SdkConfig> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).ok_or_else(|| {
            crate::Error::Misconfigured(
                "AWS_REGION is not set: Lambda sets it; outside Lambda, set it to the deployment's region".into(),
            )
        })?;
        let attempts = match env("AWS_MAX_ATTEMPTS") {
            None => MAX_ATTEMPTS,
            Some(v) => v.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                crate::Error::Misconfigured(format!("AWS_MAX_ATTEMPTS={v:?} is not a positive number of attempts"))
            })?,
        };
        let credentials = aws_config::environment::EnvironmentVariableCredentialsProvider::new();
        let mut sdk = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new(region))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(credentials))
            .http_client(https())
            .timeout_config(timeouts())
            .retry_config(retry_config().with_max_attempts(attempts))
            .sleep_impl(aws_smithy_async::rt::sleep::default_async_sleep().ok_or_else(|| {
                crate::Error::Misconfigured("no async sleep implementation (the tokio runtime is missing)".into())
            })?)
            .time_source(aws_smithy_async::time::SystemTimeSource::new());
        if let Some(url) = env("AWS_ENDPOINT_URL") {
            sdk = sdk.endpoint_url(url);
        }
        Ok(sdk.build())
    }

    /// The adapters over one SDK configuration. Per-attempt timeouts keep one slow call from eating a hook's
    /// whole budget; the SDK's standard retry ([`MAX_ATTEMPTS`] attempts, `AWS_MAX_ATTEMPTS` overrides) absorbs
    /// throttling, 5xx and dropped connections, except for ELB's `Describe*` calls, which get one quick retry and
    /// then pause the process's reads when throttled ([`Elb`]).
    fn from_sdk(sdk: aws_config::SdkConfig, config: &Config) -> Self {
        let elb_spend = ElbCounter::default();
        let mut elb = aws_sdk_elasticloadbalancingv2::config::Builder::from(&sdk).interceptor(elb_spend.clone());
        let mut codedeploy = aws_sdk_codedeploy::config::Builder::from(&sdk);
        let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(&sdk);
        if let Some(url) = service_endpoint("ELASTIC_LOAD_BALANCING_V2") {
            elb.set_endpoint_url(Some(url));
        }
        if let Some(url) = service_endpoint("CODEDEPLOY") {
            codedeploy.set_endpoint_url(Some(url));
        }
        if let Some(url) = service_endpoint("DYNAMODB") {
            dynamodb.set_endpoint_url(Some(url));
        }
        Self {
            elb: Elb::new(aws_sdk_elasticloadbalancingv2::Client::from_conf(elb.build())).counting(elb_spend.clone()),
            elb_spend,
            codedeploy: CodeDeploy::new(aws_sdk_codedeploy::Client::from_conf(codedeploy.build())),
            state: DynamoState::new(aws_sdk_dynamodb::Client::from_conf(dynamodb.build()), config.table.clone()),
            sdk,
        }
    }

    /// The Lambda client that starts followers, built only by the functions that start them (BeforeAllowTraffic,
    /// the reconciler, the CLI): the others link no Lambda client at all.
    pub fn followers(&self, config: &Config) -> LambdaFollowers {
        let mut lambda = aws_sdk_lambda::config::Builder::from(&self.sdk);
        if let Some(url) = service_endpoint("LAMBDA") {
            lambda.set_endpoint_url(Some(url));
        }
        LambdaFollowers::new(aws_sdk_lambda::Client::from_conf(lambda.build()), config.follower_function.clone())
    }
}

/// A service's own endpoint, `AWS_ENDPOINT_URL_<SERVICE>` (the SDKs' standard variable), over `AWS_ENDPOINT_URL`:
/// an emulator may answer each service at an address of its own, as AWS does.
fn service_endpoint(service: &str) -> Option<String> {
    std::env::var(format!("AWS_ENDPOINT_URL_{service}")).ok().filter(|v| !v.trim().is_empty())
}
