use swell_actors::request::RequestEvent;
use swell_cluster::{FinishReason, Usage};

use super::*;
use crate::generation::stream_encoder::tests::prompt;
use crate::generation::validate::EchoPrompt;

fn tokens(ids: &[u32]) -> RequestEvent {
    RequestEvent::Tokens { text: format!("t{}", ids.len()), token_ids: ids.to_vec(), logprobs: None }
}

fn finished(completion_tokens: u32) -> RequestEvent {
    RequestEvent::Finished { reason: FinishReason::Length, usage: Usage { prompt_tokens: 2, completion_tokens } }
}

fn passed(filter: &mut ResumeFilter, events: Vec<RequestEvent>) -> Vec<RequestEvent> {
    events.into_iter().filter(|event| filter.passes(event).unwrap()).collect()
}

#[test]
fn the_filter_drops_exactly_the_tokens_the_client_had() {
    let started = RequestEvent::Started { replica: "r".into() };
    let stream = vec![started.clone(), tokens(&[1]), tokens(&[2, 3]), tokens(&[4]), tokens(&[5]), finished(5)];
    for after in [0u64, 1, 3, 4, 5] {
        let mut filter = ResumeFilter::new(after);
        let rest = passed(&mut filter, stream.clone());
        let ids: Vec<u32> = rest
            .iter()
            .flat_map(|event| match event {
                RequestEvent::Tokens { token_ids, .. } => token_ids.clone(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(ids, ((after as u32 + 1)..=5).collect::<Vec<_>>(), "after {after}");
        assert_eq!(rest.first(), Some(&started), "the start is passed on");
        assert_eq!(rest.last(), Some(&finished(5)), "the end is passed on");
    }
}

#[test]
fn an_id_inside_an_event_or_past_the_end_is_refused() {
    let mut inside = ResumeFilter::new(2);
    assert!(!inside.passes(&tokens(&[1])).unwrap());
    let error = inside.passes(&tokens(&[2, 3])).unwrap_err();
    assert_eq!(error.param(), Some("Last-Event-ID"));
    let mut past = ResumeFilter::new(9);
    assert!(!past.passes(&tokens(&[1])).unwrap());
    assert!(past.passes(&finished(1)).is_err());
}

#[test]
fn failures_and_waiting_pass_while_skipping() {
    let mut filter = ResumeFilter::new(3);
    let waiting = RequestEvent::Waiting { position: Some(1), starting: false, ready_in: None, eta: None };
    assert!(filter.passes(&waiting).unwrap());
    let failed = RequestEvent::Failed { code: "cancelled".into(), message: "gone".into() };
    assert!(filter.passes(&failed).unwrap());
    assert!(!filter.passes(&RequestEvent::PromptLogprobs(vec![])).unwrap());
}

#[test]
fn streams_are_named_by_request_or_chunk_id() {
    assert_eq!(job_id_of("req-abc123").as_deref(), Some("req-abc123"));
    assert_eq!(job_id_of("chatcmpl-abc123").as_deref(), Some("req-abc123"));
    assert_eq!(job_id_of("cmpl-abc123").as_deref(), Some("req-abc123"));
    for bad in ["abc", "req-", "chatcmpl-a/b", "req-a b", "other-abc"] {
        assert_eq!(job_id_of(bad), None, "{bad}");
    }
}

#[test]
fn last_event_id_is_a_token_count() {
    assert_eq!(parse_last_event_id(None).unwrap(), 0);
    assert_eq!(parse_last_event_id(Some("")).unwrap(), 0);
    assert_eq!(parse_last_event_id(Some(" 17 ")).unwrap(), 17);
    assert_eq!(parse_last_event_id(Some("x")).unwrap_err().code(), "invalid_value");
    assert!(parse_last_event_id(Some("-1")).is_err());
}

fn validated(prompts: Vec<crate::generation::validate::PreparedPrompt>) -> ValidatedRequest {
    ValidatedRequest {
        kind: GenerationKind::Chat,
        prompts,
        params: SamplingParams::default(),
        stream: true,
        include_usage: true,
        logprobs: false,
        session: None,
        tools: None,
    }
}

#[test]
fn only_a_single_choice_without_echo_is_resumable() {
    let meta = StreamMeta::of(&validated(vec![prompt(None)]), 42).expect("resumable");
    let back = StreamMeta::from_json(&meta.to_json()).unwrap();
    assert_eq!(back, meta);
    let response = back.response_meta("req-abc", "m").unwrap();
    assert_eq!(response.id, "chatcmpl-abc");
    assert_eq!((response.created, response.include_usage, response.model.as_str()), (42, true, "m"));
    assert!(StreamMeta::of(&validated(vec![prompt(None), prompt(None)]), 1).is_none());
    let echo = EchoPrompt { text: "a".into(), token_texts: vec![] };
    assert!(StreamMeta::of(&validated(vec![prompt(Some(echo))]), 1).is_none());
}
