//! Lambda adapter: starts the follower (the reconciler in follow mode) with an asynchronous invocation.

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use aws_sdk_lambda::Client;

use super::errors::aws_error;
use crate::ports::{FollowRequest, Followers};
use crate::{Error, Result};

/// The payload key by which the reconciler recognises a follow request.
pub const FOLLOW_KEY: &str = "bluegreen_mirror_follow";

/// [`Followers`] over Lambda `Invoke` (`InvocationType=Event`).
#[derive(Debug, Clone)]
pub struct LambdaFollowers {
    client: Client,
    function: Option<String>,
}

impl LambdaFollowers {
    pub fn new(client: Client, function: Option<String>) -> Self {
        Self { client, function }
    }
}

impl Followers for LambdaFollowers {
    async fn start(&self, request: &FollowRequest) -> Result<bool> {
        let Some(function) = &self.function else { return Ok(false) };
        let payload = serde_json::to_vec(&serde_json::json!({ FOLLOW_KEY: request }))
            .map_err(|source| Error::Decode { what: "follow request".into(), source })?;
        self.client
            .invoke()
            .function_name(function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| aws_error("lambda", "InvokeFunction", &format!("function {function}"), e))?;
        Ok(true)
    }
}
