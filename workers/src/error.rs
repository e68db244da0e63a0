//! The error type of engines and tokenizers.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The model or its files could not be loaded.
    #[error("model load failed: {0}")]
    Load(String),
    /// The prompt could not be tokenized or the chat template could not be rendered.
    #[error("invalid prompt: {0}")]
    InvalidPrompt(String),
    /// The engine's configuration is wrong (names the key).
    #[error("invalid engine config: {0}")]
    Config(String),
    /// A forward pass failed.
    #[error("engine failure: {0}")]
    Step(String),
}

impl EngineError {
    /// Stable code, used as the API error code and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Load(_) => "model_load_failed",
            EngineError::InvalidPrompt(_) => "invalid_prompt",
            EngineError::Config(_) => "invalid_engine_config",
            EngineError::Step(_) => "engine_failure",
        }
    }
}
