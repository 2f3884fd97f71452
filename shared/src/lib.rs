//! bluegreen-mirror: keeps a second, private load balancer in lockstep with what CodeDeploy does to the public
//! one during an ECS blue/green deployment.
//!
//! Layout: [`domain`] is pure and synchronous (target keys, mirror plans, route plans, ARNs, records);
//! [`config`] is the typed configuration read once at cold start; [`clock`] reads the wall clock; [`ports`] are the few domain-shaped async
//! traits the use cases talk through; [`reads`] scopes an invocation's read policy over its work; [`usecase`] holds what each hook decides; [`harness`] guarantees that
//! every invocation reports exactly once; [`metrics`] turns an invocation's outcome into CloudWatch metrics; [`aws`] is the only module that speaks to the AWS SDK.

pub mod aws;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod harness;
pub mod metrics;
pub mod ports;
pub mod reads;
pub mod usecase;

pub use error::{AwsErrorKind, Error, Result};
