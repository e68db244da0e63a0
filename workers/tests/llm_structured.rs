//! Structured outputs in the `llm` engine on the real model (SmolLM2-135M-Instruct):
//! sampled outputs constrained by a JSON object, a JSON schema, a regex and a choice
//! always fit; a constrained sequence in a batch leaves the others' outputs unchanged; a
//! resumed constrained sequence continues exactly; a bad constraint fails cleanly.
//!
//! Needs the model: `scripts/fetch-model` (or `SWELL_MODEL_PATH`).

mod common;

use common::*;
use serde_json::{json, Value};
use swell_protocol::{Constraint, FinishReason, SamplingParams};
use swell_workers::Sequence;

fn sampled(max_tokens: u32, seed: u64, constraint: Option<Constraint>) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.8,
        seed: Some(seed),
        constraint,
        ..SamplingParams::default()
    }
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "role": {"enum": ["admin", "user", "guest"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
                "required": ["city", "zip"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "role", "tags", "address"],
        "additionalProperties": false
    })
}

/// The checks of [`person_schema`], written out.
fn fits_person(value: &Value) -> Result<(), String> {
    let object = value.as_object().ok_or("not an object")?;
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    if keys != ["name", "age", "role", "tags", "address"] {
        return Err(format!("keys {keys:?}"));
    }
    object["name"].as_str().ok_or("name")?;
    object["age"].as_i64().ok_or("age")?;
    if !["admin", "user", "guest"].contains(&object["role"].as_str().ok_or("role")?) {
        return Err("role".into());
    }
    if !object["tags"]
        .as_array()
        .ok_or("tags")?
        .iter()
        .all(Value::is_string)
    {
        return Err("tags".into());
    }
    let address = object["address"].as_object().ok_or("address")?;
    address.get("city").and_then(Value::as_str).ok_or("city")?;
    let zip = address.get("zip").ok_or("zip")?;
    if !(zip.is_string() || zip.is_null()) || address.len() != 2 {
        return Err("zip".into());
    }
    Ok(())
}

#[test]
fn sampled_outputs_fit_their_constraint() {
    let (f, mut e) = engine(config());
    let prompt = chat_ids(
        &f,
        "Describe a user of a web shop as JSON: name, age, role, tags and address.",
    );
    let schema = Constraint::JsonSchema(person_schema().to_string());
    let seqs: Vec<Sequence> = (0..8)
        .map(|k| {
            seq(
                &format!("schema-{k}"),
                prompt.clone(),
                sampled(300, 100 + k, Some(schema.clone())),
            )
        })
        .chain((0..4).map(|k| {
            seq(
                &format!("object-{k}"),
                prompt.clone(),
                sampled(300, 200 + k, Some(Constraint::JsonObject)),
            )
        }))
        .chain((0..4).map(|k| {
            let regex = Constraint::Regex("[0-9]{3}-[0-9]{4}".into());
            seq(
                &format!("regex-{k}"),
                chat_ids(&f, "Give me a phone number."),
                sampled(20, 300 + k, Some(regex)),
            )
        }))
        .chain((0..4).map(|k| {
            let choice = Constraint::Choice(vec!["yes".into(), "no".into(), "maybe later".into()]);
            seq(
                &format!("choice-{k}"),
                chat_ids(&f, "Is the sky green?"),
                sampled(20, 400 + k, Some(choice)),
            )
        }))
        .collect();
    let got = run(&mut e, seqs);
    let mut stopped = 0;
    for (id, c) in &got {
        assert_eq!(c.failed, None, "{id}");
        let (reason, _) = c.finish.expect("finished");
        if reason == FinishReason::Length {
            // Cut short by max_tokens: left as it is (never the short kinds).
            assert!(
                id.starts_with("schema") || id.starts_with("object"),
                "{id} ran out of tokens: {:?}",
                c.text
            );
            continue;
        }
        stopped += 1;
        if id.starts_with("schema") {
            let value: Value =
                serde_json::from_str(&c.text).unwrap_or_else(|e| panic!("{id}: {e}: {}", c.text));
            fits_person(&value).unwrap_or_else(|e| panic!("{id}: {e}: {}", c.text));
        } else if id.starts_with("object") {
            let value: Value =
                serde_json::from_str(&c.text).unwrap_or_else(|e| panic!("{id}: {e}: {}", c.text));
            assert!(value.is_object(), "{id}: {}", c.text);
        } else if id.starts_with("regex") {
            let digits: Vec<usize> = c
                .text
                .split('-')
                .map(|part| part.chars().filter(char::is_ascii_digit).count())
                .collect();
            assert_eq!(
                (digits, c.text.len()),
                (vec![3, 4], 8),
                "{id}: {:?}",
                c.text
            );
        } else {
            assert!(
                ["yes", "no", "maybe later"].contains(&c.text.as_str()),
                "{id}: {:?}",
                c.text
            );
        }
    }
    assert!(
        stopped >= 16,
        "most outputs complete within max_tokens ({stopped} of 20)"
    );
}

#[test]
fn a_constrained_neighbour_changes_nothing_and_a_resumed_one_continues() {
    let (f, mut e) = engine(config());
    let prompt = chat_ids(&f, "Describe a user of a web shop as JSON.");
    let free = seq("free", prompt.clone(), sampled(40, 7, None));
    let alone = run(&mut e, vec![free.clone()]).remove("free").unwrap();
    let schema = Some(Constraint::JsonSchema(person_schema().to_string()));
    let together = run(
        &mut e,
        vec![
            free,
            seq("json", prompt.clone(), sampled(120, 9, schema.clone())),
        ],
    );
    assert_eq!(
        together["free"].ids, alone.ids,
        "the constrained sequence's mask stays its own"
    );
    let whole = &together["json"];
    assert_eq!(whole.failed, None);

    // A new attempt that resumes after 10 delivered tokens draws the same rest.
    let resumed = Sequence {
        id: "resumed".into(),
        prompt_tokens: prompt,
        resume_tokens: whole.ids[..10].to_vec(),
        params: sampled(120, 9, schema),
    };
    let rest = run(&mut e, vec![resumed]).remove("resumed").unwrap();
    assert_eq!(rest.ids, whole.ids[10..], "resumed output");
    assert_eq!(rest.finish.map(|f| f.0), whole.finish.map(|f| f.0));
}

#[test]
fn a_bad_constraint_fails_the_sequence_cleanly() {
    let (f, mut e) = engine(config());
    let prompt = chat_ids(&f, "Hi");
    let got = run(
        &mut e,
        vec![
            seq(
                "bad",
                prompt.clone(),
                sampled(10, 1, Some(Constraint::Regex("(unclosed".into()))),
            ),
            seq("good", prompt, sampled(10, 1, None)),
        ],
    );
    assert!(
        got["bad"]
            .failed
            .as_deref()
            .unwrap()
            .starts_with("invalid_constraint"),
        "{:?}",
        got["bad"].failed
    );
    assert!(got["good"].finish.is_some());
}
