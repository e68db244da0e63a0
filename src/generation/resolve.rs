//! Which deployment serves a request (the `model` of its body), and the request
//! validated and tokenized against that deployment.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::deployments::{DeploymentHandle, ModelLimits};
use crate::generation::error::GenerationError;
use crate::generation::openai_types::{ChatCompletionRequest, CompletionRequest};
use crate::generation::validate::{validate_chat, validate_completion, ValidatedRequest};
use crate::state::AppState;

/// Bodies larger than this are validated (tokenized) off the async threads.
const INLINE_VALIDATION_BYTES: usize = 64 * 1024;

pub fn find_deployment(state: &AppState, model: &str) -> Result<Arc<DeploymentHandle>, GenerationError> {
    state.deployments.get(model).ok_or_else(|| GenerationError::ModelNotFound(model.to_string()))
}

/// A request body that names its deployment.
pub trait ModelRequest: DeserializeOwned + Send + 'static {
    fn model(&self) -> &str;
    fn validate(&self, limits: &ModelLimits, tokenizer: &dyn swell_workers::Tokenizer) -> Result<ValidatedRequest, GenerationError>;
}

impl ModelRequest for ChatCompletionRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn validate(&self, limits: &ModelLimits, tokenizer: &dyn swell_workers::Tokenizer) -> Result<ValidatedRequest, GenerationError> {
        validate_chat(self, limits, tokenizer)
    }
}

impl ModelRequest for CompletionRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn validate(&self, limits: &ModelLimits, tokenizer: &dyn swell_workers::Tokenizer) -> Result<ValidatedRequest, GenerationError> {
        validate_completion(self, limits, tokenizer)
    }
}

/// Finds the deployment of a request and validates it against that deployment. Large
/// bodies are tokenized on the blocking pool so no async thread stalls on them.
pub async fn resolve<R: ModelRequest>(
    state: &AppState,
    body: R,
    body_bytes: usize,
) -> Result<(Arc<DeploymentHandle>, ValidatedRequest), GenerationError> {
    let deployment = find_deployment(state, body.model())?;
    let validated = if body_bytes <= INLINE_VALIDATION_BYTES {
        body.validate(&deployment.limits, deployment.tokenizer.as_ref())?
    } else {
        let limits = deployment.limits;
        let tokenizer = deployment.tokenizer.clone();
        tokio::task::spawn_blocking(move || body.validate(&limits, tokenizer.as_ref()))
            .await
            .map_err(|error| GenerationError::Internal(format!("validation did not complete: {error}")))??
    };
    Ok((deployment, validated))
}

