//! The request each API gets and the events each sends, checked against the formats the
//! engines document (llama.cpp's are also exercised live by the llama-server tests).

use super::*;

fn params() -> SamplingParams {
    SamplingParams { max_tokens: 10, temperature: 0.0, seed: Some(7), logprobs: Some(2), ..SamplingParams::default() }
}

fn generate<'a>(p: &'a SamplingParams, context: &'a [u32]) -> Generate<'a> {
    Generate { context, context_text: Some("<|im_start|>user\nhi"), max_new_tokens: 6, params: p, model: "m" }
}

#[test]
fn llama_cpp_requests_take_token_ids_and_turn_its_own_sampling_defaults_off() {
    let p = params();
    let r = request(Api::LlamaCpp, &generate(&p, &[1, 2, 3]));
    assert_eq!(r.path, "/completion");
    assert_eq!(r.body["prompt"], json!([1, 2, 3]));
    assert_eq!(r.body["n_predict"], 6);
    assert_eq!(r.body["return_tokens"], true);
    assert_eq!(r.body["min_p"], 0.0);
    assert_eq!(r.body["top_k"], 0);
    assert_eq!(r.body["repeat_penalty"], 1.0);
    assert_eq!(r.body["n_probs"], 2);
    assert_eq!(r.body["seed"], 7);
}

#[test]
fn llama_cpp_events_give_ids_logprobs_and_the_stop_type() {
    let mut parser = ChunkParser::new(Api::LlamaCpp);
    let partial = r#"{"index":0,"content":" Hi","tokens":[28120],"stop":false,"id_slot":0,"tokens_predicted":1,
        "completion_probabilities":[{"id":28120,"token":" Hi","bytes":[32,72,105],"logprob":-0.5,
        "top_logprobs":[{"id":28120,"token":" Hi","bytes":[],"logprob":-0.5},{"id":9,"token":"x","bytes":[],"logprob":-1.5}]}]}"#;
    let chunk = parser.parse(partial).unwrap().unwrap();
    assert_eq!(chunk.token_ids, vec![28120]);
    assert_eq!(chunk.logprobs[0].logprob, -0.5);
    assert_eq!(chunk.logprobs[0].top[1], TopLogprob { token: "x".into(), logprob: -1.5 });
    assert_eq!(chunk.finish, None);
    let last = r#"{"index":0,"content":"","tokens":[],"stop":true,"stop_type":"eos","tokens_predicted":3}"#;
    assert_eq!(parser.parse(last).unwrap().unwrap().finish, Some(EngineFinish::Eos));
    let limit = r#"{"content":"","tokens":[5],"stop":true,"stop_type":"limit"}"#;
    assert_eq!(parser.parse(limit).unwrap().unwrap(), Chunk { token_ids: vec![5], logprobs: vec![], finish: Some(EngineFinish::Length) });
    // Progress reports and empty partials carry nothing.
    assert_eq!(parser.parse(r#"{"content":"","tokens":[],"stop":false}"#).unwrap(), None);
    assert_eq!(parser.parse("[DONE]").unwrap(), None);
    assert!(parser.parse(r#"{"content":"no ids","stop":false}"#).unwrap_err().contains("return_tokens"));
    let error = r#"{"error":{"code":400,"message":"the request exceeds the available context size","type":"exceed_context_size_error"}}"#;
    assert!(parser.parse(error).unwrap_err().contains("exceeds the available context size"));
    assert!(parser.parse("not json").unwrap_err().contains("not JSON"));
}

#[test]
fn vllm_requests_ask_for_token_ids_and_events_carry_them_in_logprobs() {
    let p = SamplingParams { logprobs: None, ..params() };
    let r = request(Api::VllmCompletions, &generate(&p, &[4, 5]));
    assert_eq!(r.path, "/v1/completions");
    assert_eq!(r.body["return_tokens_as_token_ids"], true);
    assert_eq!(r.body["logprobs"], 1, "one logprob is the least that carries the ids");
    assert_eq!(r.body["top_k"], -1);
    assert_eq!(r.body["model"], "m");
    let mut parser = ChunkParser::new(Api::VllmCompletions);
    let event = r#"{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" world",
        "logprobs":{"text_offset":[0],"token_logprobs":[-0.25],"tokens":["token_id:1917"],"top_logprobs":[{"token_id:1917":-0.25}]},
        "finish_reason":null}]}"#;
    let chunk = parser.parse(event).unwrap().unwrap();
    assert_eq!(chunk.token_ids, vec![1917]);
    assert_eq!(chunk.logprobs[0].logprob, -0.25);
    let last = r#"{"choices":[{"index":0,"text":"","logprobs":{"tokens":["token_id:2"],"token_logprobs":[-0.1],"top_logprobs":[{}]},"finish_reason":"stop"}]}"#;
    assert_eq!(parser.parse(last).unwrap().unwrap().finish, Some(EngineFinish::Eos));
    let bad = r#"{"choices":[{"index":0,"text":"x","logprobs":{"tokens":["x"],"token_logprobs":[-0.1]},"finish_reason":null}]}"#;
    assert!(parser.parse(bad).unwrap_err().contains("return_tokens_as_token_ids"));
}

#[test]
fn sglang_events_are_read_whether_output_ids_are_cumulative_or_incremental() {
    let p = params();
    let r = request(Api::SglangGenerate, &generate(&p, &[4, 5]));
    assert_eq!(r.path, "/generate");
    assert_eq!(r.body["input_ids"], json!([4, 5]));
    assert_eq!(r.body["sampling_params"]["max_new_tokens"], 6);
    assert_eq!(r.body["top_logprobs_num"], 2);
    let mut cumulative = ChunkParser::new(Api::SglangGenerate);
    let a = r#"{"text":"a","output_ids":[10],"meta_info":{"completion_tokens":1,"finish_reason":null}}"#;
    let b = r#"{"text":"ab","output_ids":[10,11,12],"meta_info":{"completion_tokens":3,"finish_reason":{"type":"length","length":3}}}"#;
    assert_eq!(cumulative.parse(a).unwrap().unwrap().token_ids, vec![10]);
    let chunk = cumulative.parse(b).unwrap().unwrap();
    assert_eq!(chunk.token_ids, vec![11, 12]);
    assert_eq!(chunk.finish, Some(EngineFinish::Length));
    let mut incremental = ChunkParser::new(Api::SglangGenerate);
    let a = r#"{"output_ids":[10],"meta_info":{"completion_tokens":1}}"#;
    let b = r#"{"output_ids":[11,12],"meta_info":{"completion_tokens":3,"finish_reason":{"type":"stop","matched":2}}}"#;
    assert_eq!(incremental.parse(a).unwrap().unwrap().token_ids, vec![10]);
    let chunk = incremental.parse(b).unwrap().unwrap();
    assert_eq!(chunk.token_ids, vec![11, 12]);
    assert_eq!(chunk.finish, Some(EngineFinish::Eos));
}

#[test]
fn tgi_takes_text_and_streams_one_token_per_event() {
    let p = SamplingParams { temperature: 0.7, top_k: 5, ..params() };
    let r = request(Api::TgiGenerateStream, &generate(&p, &[4, 5]));
    assert_eq!(r.path, "/generate_stream");
    assert_eq!(r.body["inputs"], "<|im_start|>user\nhi");
    assert_eq!(r.body["parameters"]["do_sample"], true);
    assert_eq!(r.body["parameters"]["top_k"], 5);
    assert!(!Api::TgiGenerateStream.takes_token_ids());
    let greedy = params();
    let r = request(Api::TgiGenerateStream, &generate(&greedy, &[4]));
    assert_eq!(r.body["parameters"]["do_sample"], false);
    assert!(r.body["parameters"].get("temperature").is_none(), "TGI refuses temperature 0");
    let mut parser = ChunkParser::new(Api::TgiGenerateStream);
    let event = r#"{"index":1,"token":{"id":42,"text":" a","logprob":-0.3,"special":false},"generated_text":null,"details":null}"#;
    let chunk = parser.parse(event).unwrap().unwrap();
    assert_eq!((chunk.token_ids, chunk.finish), (vec![42], None));
    let last = r#"{"index":2,"token":{"id":2,"text":"</s>","logprob":-0.1,"special":true},"generated_text":" a","details":{"finish_reason":"eos_token","generated_tokens":2,"seed":null}}"#;
    assert_eq!(parser.parse(last).unwrap().unwrap().finish, Some(EngineFinish::Eos));
}

#[test]
fn each_engine_gets_the_constraint_in_its_own_form() {
    let schema = r#"{"type": "object", "properties": {"a": {"type": "integer"}}}"#;
    let with = |constraint: Constraint| SamplingParams { constraint: Some(constraint), ..params() };
    let json_schema = with(Constraint::JsonSchema(schema.into()));
    let choice = with(Constraint::Choice(vec!["yes".into(), "no \"really\"".into()]));
    let regex = with(Constraint::Regex("[0-9]+".into()));
    let parsed: Value = serde_json::from_str(schema).unwrap();

    let llama = request(Api::LlamaCpp, &generate(&json_schema, &[1]));
    assert_eq!(llama.body["json_schema"], parsed);
    let llama = request(Api::LlamaCpp, &generate(&with(Constraint::JsonObject), &[1]));
    assert_eq!(llama.body["json_schema"], json!({"type": "object"}));
    let llama = request(Api::LlamaCpp, &generate(&choice, &[1]));
    assert_eq!(llama.body["grammar"], r#"root ::= "yes" | "no \"really\"""#);
    assert_eq!(unsupported_constraints(Api::LlamaCpp), ["guided_regex", "guided_grammar"]);
    assert_eq!(unsupported_constraints(Api::VllmCompletions), ["guided_grammar"]);

    let vllm = request(Api::VllmCompletions, &generate(&json_schema, &[1]));
    assert_eq!(vllm.body["structured_outputs"], json!({"json": parsed}));
    let vllm = request(Api::VllmCompletions, &generate(&choice, &[1]));
    assert_eq!(vllm.body["structured_outputs"], json!({"choice": ["yes", "no \"really\""]}));

    let sglang = request(Api::SglangGenerate, &generate(&json_schema, &[1]));
    assert_eq!(serde_json::from_str::<Value>(sglang.body["sampling_params"]["json_schema"].as_str().unwrap()).unwrap(), parsed);
    let sglang = request(Api::SglangGenerate, &generate(&regex, &[1]));
    assert_eq!(sglang.body["sampling_params"]["regex"], "[0-9]+");

    let tgi = request(Api::TgiGenerateStream, &generate(&choice, &[1]));
    assert_eq!(tgi.body["parameters"]["grammar"], json!({"type": "regex", "value": "(yes|no \"really\")"}));
    let tgi = request(Api::TgiGenerateStream, &generate(&json_schema, &[1]));
    assert_eq!(tgi.body["parameters"]["grammar"], json!({"type": "json", "value": parsed}));

    // Without a constraint, none of the fields.
    let plain = request(Api::LlamaCpp, &generate(&params(), &[1]));
    assert!(plain.body.get("json_schema").is_none() && plain.body.get("grammar").is_none());
}
