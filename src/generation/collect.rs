//! `ResponseCollector`: gathers a non-streaming request's events (one job per choice)
//! into one OpenAI response (`chat.completion` or `text_completion`).

use swell_actors::request::RequestEvent;
use swell_cluster::{FinishReason, Usage};

use crate::generation::error::GenerationError;
use crate::generation::openai_types::{
    ChatChoice, ChatCompletion, ChatLogprobs, ChatTokenLogprob,
    CompletedResponse, CompletionLogprobs, TextChoice, TextCompletion, UsageBody, CHAT_COMPLETION, TEXT_COMPLETION,
};
use crate::generation::stream_encoder::ResponseMeta;
use crate::generation::tools::chat_message;
use crate::generation::validate::{EchoPrompt, GenerationKind, PreparedPrompt};

#[derive(Debug, Default)]
struct CollectedChoice {
    /// Whether this choice's usage counts its prompt (the first of `n` choices does).
    counts_prompt: bool,
    text: String,
    echo: Option<EchoPrompt>,
    chat_logprobs: Vec<ChatTokenLogprob>,
    completion_logprobs: CompletionLogprobs,
    offset: u32,
    finished: Option<(FinishReason, Usage)>,
}

/// Collects events until every choice finished, then builds the response.
#[derive(Debug)]
pub struct ResponseCollector {
    meta: ResponseMeta,
    choices: Vec<CollectedChoice>,
}

/// Where collection stands after an event.
#[derive(Debug, PartialEq)]
pub enum Collected {
    /// More events are needed.
    Pending,
    /// Every choice finished: the response body.
    Complete(CompletedResponse),
}

impl ResponseCollector {
    pub fn new(meta: ResponseMeta, prompts: &[PreparedPrompt]) -> Self {
        let choices = prompts
            .iter()
            .map(|prompt| CollectedChoice {
                echo: prompt.echo.clone(),
                counts_prompt: prompt.choice == 0,
                ..CollectedChoice::default()
            })
            .collect();
        Self { meta, choices }
    }

    /// Takes one event of choice `index`. A failure of any choice fails the response.
    pub fn on_event(&mut self, index: usize, event: RequestEvent) -> Result<Collected, GenerationError> {
        let Some(choice) = self.choices.get_mut(index) else { return Ok(Collected::Pending) };
        match event {
            RequestEvent::Waiting { .. } | RequestEvent::Started { .. } => {}
            RequestEvent::PromptLogprobs(logprobs) => {
                if let Some(echo) = choice.echo.take() {
                    if self.meta.logprobs {
                        for (position, token_text) in echo.token_texts.iter().enumerate() {
                            let logprob = logprobs.get(position).and_then(Option::as_ref);
                            choice.completion_logprobs.push(token_text, logprob, &mut choice.offset);
                        }
                    }
                    choice.offset = echo.text.chars().count() as u32;
                    choice.text.push_str(&echo.text);
                }
            }
            RequestEvent::Tokens { text, token_ids: _, logprobs } => {
                Self::take_echo(choice);
                if let Some(tokens) = logprobs.filter(|_| self.meta.logprobs) {
                    match self.meta.kind {
                        GenerationKind::Chat => {
                            choice.chat_logprobs.extend(ChatLogprobs::from_tokens(&tokens).content);
                        }
                        GenerationKind::Completion => {
                            let mut offset = choice.offset;
                            for token in &tokens {
                                choice.completion_logprobs.push(&token.token, Some(token), &mut offset);
                            }
                        }
                    }
                }
                choice.offset += text.chars().count() as u32;
                choice.text.push_str(&text);
            }
            RequestEvent::Finished { reason, usage } => {
                Self::take_echo(choice);
                choice.finished = Some((reason, usage));
                if self.choices.iter().all(|choice| choice.finished.is_some()) {
                    return Ok(Collected::Complete(self.build()));
                }
            }
            RequestEvent::Failed { code, message } => {
                return Err(GenerationError::Failed { code, message });
            }
        }
        Ok(Collected::Pending)
    }

    /// The event streams ended before every choice finished.
    pub fn incomplete() -> GenerationError {
        GenerationError::Failed {
            code: "stream_incomplete".into(),
            message: "the request's output ended before it finished".into(),
        }
    }

    /// An echo not yet emitted (no prompt logprobs were asked for) goes first.
    fn take_echo(choice: &mut CollectedChoice) {
        if let Some(echo) = choice.echo.take() {
            choice.offset = echo.text.chars().count() as u32;
            choice.text.insert_str(0, &echo.text);
        }
    }

    fn build(&mut self) -> CompletedResponse {
        let usage: UsageBody = self
            .choices
            .iter()
            .filter_map(|choice| choice.finished.map(|(_, usage)| (choice.counts_prompt, usage)))
            .fold(Usage::default(), |sum, (counts_prompt, usage)| Usage {
                prompt_tokens: sum.prompt_tokens + if counts_prompt { usage.prompt_tokens } else { 0 },
                completion_tokens: sum.completion_tokens + usage.completion_tokens,
            })
            .into();
        let choices = std::mem::take(&mut self.choices);
        let finish = |choice: &CollectedChoice| choice.finished.map(|(reason, _)| reason.as_str());
        match self.meta.kind {
            GenerationKind::Chat => CompletedResponse::Chat(ChatCompletion {
                id: self.meta.id.clone(),
                object: CHAT_COMPLETION,
                created: self.meta.created,
                model: self.meta.model.clone(),
                choices: choices
                    .into_iter()
                    .enumerate()
                    .map(|(index, choice)| {
                        let finish_reason = finish(&choice);
                        let (message, finish_reason) =
                            chat_message(&self.meta.id, index, choice.text, finish_reason, self.meta.tools);
                        ChatChoice {
                            index: index as u32,
                            finish_reason,
                            logprobs: self.meta.logprobs.then_some(ChatLogprobs { content: choice.chat_logprobs }),
                            message,
                        }
                    })
                    .collect(),
                usage,
            }),
            GenerationKind::Completion => CompletedResponse::Text(TextCompletion {
                id: self.meta.id.clone(),
                object: TEXT_COMPLETION,
                created: self.meta.created,
                model: self.meta.model.clone(),
                choices: choices
                    .into_iter()
                    .enumerate()
                    .map(|(index, choice)| TextChoice {
                        index: index as u32,
                        finish_reason: finish(&choice),
                        logprobs: self.meta.logprobs.then_some(choice.completion_logprobs),
                        text: choice.text,
                    })
                    .collect(),
                usage: Some(Some(usage)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::generation::stream_encoder::tests::{finished, meta, prompt, tokens};

    #[test]
    fn chat_responses_collect_text_and_usage() {
        let mut collector = ResponseCollector::new(meta(GenerationKind::Chat, false, false), &[prompt(None)]);
        assert_eq!(collector.on_event(0, RequestEvent::Started { replica: "r".into() }).unwrap(), Collected::Pending);
        collector.on_event(0, tokens("Hel")).unwrap();
        collector.on_event(0, tokens("lo")).unwrap();
        let Collected::Complete(body) = collector.on_event(0, finished(2)).unwrap() else {
            panic!("should be complete")
        };
        let body = serde_json::to_value(body).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"], json!({"role": "assistant", "content": "Hello"}));
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["choices"][0]["logprobs"], Value::Null);
        assert_eq!(body["usage"], json!({"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}));
    }

    #[test]
    fn completions_collect_each_choice_with_echo() {
        let echo = EchoPrompt { text: "Q:".into(), token_texts: vec![] };
        let mut collector = ResponseCollector::new(
            meta(GenerationKind::Completion, false, false),
            &[prompt(Some(echo)), prompt(None)],
        );
        collector.on_event(1, tokens("second")).unwrap();
        collector.on_event(0, tokens(" first")).unwrap();
        assert_eq!(collector.on_event(0, finished(1)).unwrap(), Collected::Pending);
        let Collected::Complete(body) = collector.on_event(1, finished(1)).unwrap() else {
            panic!("should be complete")
        };
        let body = serde_json::to_value(body).unwrap();
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "Q: first");
        assert_eq!(body["choices"][1]["text"], "second");
        assert_eq!(body["choices"][1]["index"], 1);
        assert_eq!(body["usage"]["total_tokens"], 6);
    }

    #[test]
    fn a_failed_choice_fails_the_response() {
        let mut collector = ResponseCollector::new(meta(GenerationKind::Chat, false, false), &[prompt(None)]);
        let error = collector
            .on_event(0, RequestEvent::Failed { code: "deadline_exceeded".into(), message: "late".into() })
            .unwrap_err();
        assert_eq!(error.code(), "deadline_exceeded");
    }
}
