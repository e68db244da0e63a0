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

/// The chunks (as JSON, without their ids) and ids an encoder gives for `events`.
fn encoded(encoder: &mut StreamEncoder, events: &[RequestEvent]) -> Vec<(serde_json::Value, Option<u64>)> {
    events
        .iter()
        .flat_map(|event| encoder.on_event(0, event.clone()))
        .filter_map(|item| match item {
            crate::generation::stream_encoder::StreamItem::Chunk(chunk, id) => Some((serde_json::to_value(chunk).unwrap(), id)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_tools_stream_resumes_with_exactly_the_rest_at_every_event_id() {
    use crate::generation::stream_encoder::tests::meta;
    use crate::generation::tool_format::ToolFormat;
    let pieces: [(&str, &str); 2] = [
        // The generic format: calls stream token by token.
        ("generic", r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "f", "arguments": {}}]}"#),
        // Hermes: text, then calls told once whole (events in between tell nothing).
        ("hermes", "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"),
    ];
    for (name, output) in pieces {
        let format = if name == "hermes" { ToolFormat::Hermes } else { ToolFormat::Generic };
        let response = ResponseMeta { tools: Some(format), ..meta(GenerationKind::Chat, false, false) };
        let mut events = vec![RequestEvent::Started { replica: "r".into() }];
        // Five characters a token.
        let chars: Vec<char> = output.chars().collect();
        for (i, piece) in chars.chunks(5).enumerate() {
            events.push(RequestEvent::Tokens { text: piece.iter().collect(), token_ids: vec![i as u32], logprobs: None });
        }
        let count = events.len() as u32 - 1;
        events.push(RequestEvent::Finished {
            reason: FinishReason::Stop,
            usage: Usage { prompt_tokens: 2, completion_tokens: count },
        });
        let whole = encoded(&mut StreamEncoder::new(response.clone(), &[prompt(None)]), &events);
        assert!(whole.iter().all(|(_, id)| id.is_some()), "{name}: every chunk has an event id");
        assert!(whole.iter().any(|(chunk, _)| chunk["choices"][0]["delta"]["tool_calls"].is_array()), "{name}: {whole:?}");
        // Each chunk but the finish has its own id (the finish repeats the last one: a
        // client resuming there gets the finish).
        let ids: Vec<u64> = whole.iter().map(|(_, id)| id.unwrap()).collect();
        assert!(ids[..ids.len() - 1].windows(2).all(|w| w[0] < w[1]), "{name}: {ids:?}");
        for (at, &after) in ids[..ids.len() - 1].iter().enumerate() {
            let resumed = encoded(&mut StreamEncoder::resumed(response.clone(), after), &events);
            // Event id 0 (the role's chunk) is the start: the whole stream again.
            let rest = if after == 0 { whole.clone() } else { whole[at + 1..].to_vec() };
            assert_eq!(resumed, rest, "{name}: resumed after {after}");
        }
    }
}
