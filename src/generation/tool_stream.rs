//! Reading a tools request's output while it streams, so tool-call arguments (and a
//! `{"response": ...}` reply) reach the client token by token, as OpenAI streams them.
//!
//! The output has the generic format of [`tools`](crate::generation::tools), enforced by
//! the grammar: `{"tool_calls": [{"name": N, "arguments": A}, ...]}` or `{"response": S}`.
//! [`ToolStreamReader`] is fed the text as it comes and yields [`ToolDelta`]s: a call's
//! start (its name) once the name is complete, then its arguments' JSON text as it
//! grows, or a reply's text, unescaped. Whitespace between tokens is allowed (external
//! engines lay JSON out their own way). Anything else (another key order, say) stops the
//! reader before it yields anything, and the whole output is read at its end instead.

/// What the client is told as the output grows.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolDelta {
    /// Reply text.
    Content(String),
    /// Call `index` starts: its function's name.
    CallStart { index: usize, name: String },
    /// More of call `index`'s arguments (JSON text).
    Arguments { index: usize, text: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first key.
    Start,
    /// Inside the reply string.
    Response,
    /// Between calls: `[`, `,` or `]` next.
    BetweenCalls,
    /// In a call object, before its `"arguments":` value.
    CallHead,
    /// In a call's arguments value: nesting depth, inside a string, after a backslash.
    Arguments { depth: u32, in_string: bool, escaped: bool },
    /// After a call's arguments: its closing `}` next.
    CallTail,
    /// The output is complete.
    Done,
    /// Not the expected layout: read at the end instead.
    Unreadable,
}

/// See the module docs.
#[derive(Debug)]
pub struct ToolStreamReader {
    text: String,
    /// Bytes of `text` read so far.
    at: usize,
    state: State,
    calls: usize,
    /// Whether anything was yielded (a reader that yielded cannot fall back).
    yielded: bool,
}

impl Default for ToolStreamReader {
    fn default() -> Self {
        Self { text: String::new(), at: 0, state: State::Start, calls: 0, yielded: false }
    }
}

impl ToolStreamReader {
    /// Reads `piece`; returns what it adds.
    pub fn push(&mut self, piece: &str) -> Vec<ToolDelta> {
        self.text.push_str(piece);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        self.yielded |= !out.is_empty();
        if self.state == State::Unreadable && self.yielded {
            // Once something was yielded the layout is the grammar's: stop quietly.
            self.state = State::Done;
        }
        out
    }

    /// Whether the output could not be read as it streamed (nothing was yielded): the
    /// caller reads the whole output at its end.
    pub fn unreadable(&self) -> bool {
        self.state == State::Unreadable
    }

    /// Calls read whole so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Whether anything was yielded.
    pub fn yielded(&self) -> bool {
        self.yielded
    }

    /// The whole output so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    /// Consumes `literal` after optional whitespace: `Some(true)` done, `Some(false)` not
    /// yet known (too little text), `None` something else is there.
    fn expect(&mut self, literal: &str) -> Option<bool> {
        self.skip_whitespace();
        let rest = self.rest();
        if rest.starts_with(literal) {
            self.at += literal.len();
            Some(true)
        } else if literal.starts_with(rest) {
            Some(false)
        } else {
            None
        }
    }

    /// A complete JSON string at the cursor (after whitespace): its value and length.
    fn string(&self) -> Option<Result<(String, usize), ()>> {
        let rest = self.rest();
        let lead = rest.len() - rest.trim_start().len();
        let body = &rest[lead..];
        if body.is_empty() {
            return None;
        }
        if !body.starts_with('"') {
            return Some(Err(()));
        }
        let mut escaped = false;
        for (i, c) in body.char_indices().skip(1) {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    let value = serde_json::from_str::<String>(&body[..=i]).map_err(|_| ());
                    return Some(value.map(|v| (v, lead + i + 1)));
                }
                _ => {}
            }
        }
        None
    }

    fn fail(&mut self) -> bool {
        self.state = State::Unreadable;
        false
    }

    /// One move; `false` when it needs more text (or is done).
    fn step(&mut self, out: &mut Vec<ToolDelta>) -> bool {
        match self.state {
            State::Done | State::Unreadable => false,
            State::Start => {
                let at = self.at;
                match self.expect("{") {
                    Some(true) => {}
                    Some(false) => return false,
                    None => return self.fail(),
                }
                let key = match self.string() {
                    None => {
                        self.at = at;
                        return false;
                    }
                    Some(Err(())) => return self.fail(),
                    Some(Ok((key, len))) => {
                        self.at += len;
                        key
                    }
                };
                let opener = match key.as_str() {
                    "response" => "\"",
                    "tool_calls" => "[",
                    _ => return self.fail(),
                };
                match (self.expect(":"), self.expect(opener)) {
                    (Some(true), Some(true)) => {
                        self.state = if key == "response" { State::Response } else { State::BetweenCalls };
                        true
                    }
                    (Some(_), Some(false)) | (Some(false), _) => {
                        self.at = at;
                        false
                    }
                    _ => self.fail(),
                }
            }
            State::Response => {
                // Unescape what is complete; keep a cut escape for later.
                let rest = self.rest();
                let mut end = 0;
                let mut done = false;
                let mut chars = rest.char_indices().peekable();
                while let Some((i, c)) = chars.next() {
                    if c == '"' {
                        done = true;
                        break;
                    }
                    if c == '\\' {
                        let need = if rest[i..].starts_with("\\u") { 6 } else { 2 };
                        if rest.len() < i + need {
                            break;
                        }
                        // A high surrogate needs its low half too.
                        let surrogate = need == 6 && rest[i + 2..i + 6].to_ascii_lowercase().starts_with('d');
                        let need = if surrogate { 12 } else { need };
                        if rest.len() < i + need {
                            break;
                        }
                        end = i + need;
                        while chars.peek().is_some_and(|&(j, _)| j < end) {
                            chars.next();
                        }
                        continue;
                    }
                    end = i + c.len_utf8();
                }
                let Ok(text) = serde_json::from_str::<String>(&format!("\"{}\"", &rest[..end])) else { return self.fail() };
                self.at += end;
                if !text.is_empty() {
                    out.push(ToolDelta::Content(text));
                }
                if done {
                    self.state = State::Done;
                }
                false
            }
            State::BetweenCalls => {
                let at = self.at;
                self.skip_whitespace();
                match self.rest().chars().next() {
                    None => false,
                    Some(']') => {
                        self.state = State::Done;
                        false
                    }
                    Some(',') if self.calls > 0 => {
                        self.at += 1;
                        true
                    }
                    Some('{') => {
                        self.at += 1;
                        match (self.expect("\"name\""), self.expect(":")) {
                            (Some(true), Some(true)) => {}
                            (Some(_), Some(false)) | (Some(false), _) => {
                                self.at = at;
                                return false;
                            }
                            _ => return self.fail(),
                        }
                        match self.string() {
                            None => {
                                self.at = at;
                                false
                            }
                            Some(Err(())) => self.fail(),
                            Some(Ok((name, len))) => {
                                self.at += len;
                                out.push(ToolDelta::CallStart { index: self.calls, name });
                                self.state = State::CallHead;
                                true
                            }
                        }
                    }
                    Some(_) => self.fail(),
                }
            }
            State::CallHead => {
                let at = self.at;
                match (self.expect(","), self.expect("\"arguments\""), self.expect(":")) {
                    (Some(true), Some(true), Some(true)) => {
                        self.skip_whitespace();
                        self.state = State::Arguments { depth: 0, in_string: false, escaped: false };
                        true
                    }
                    (Some(false), _, _) | (Some(true), Some(false), _) | (Some(true), Some(true), Some(false)) => {
                        self.at = at;
                        false
                    }
                    _ => self.fail(),
                }
            }
            State::Arguments { mut depth, mut in_string, mut escaped } => {
                if depth == 0 {
                    self.skip_whitespace();
                }
                let rest = self.rest();
                if rest.is_empty() {
                    return false;
                }
                if depth == 0 && !rest.starts_with('{') {
                    // Arguments are objects (a function's parameters).
                    return self.fail();
                }
                let mut end = rest.len();
                let mut closed = false;
                for (i, c) in rest.char_indices() {
                    match (in_string, escaped, c) {
                        (true, true, _) => escaped = false,
                        (true, false, '\\') => escaped = true,
                        (true, false, '"') => in_string = false,
                        (false, _, '"') => in_string = true,
                        (false, _, '{' | '[') => depth += 1,
                        (false, _, '}' | ']') => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                closed = true;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let text = rest[..end].to_string();
                self.at += end;
                out.push(ToolDelta::Arguments { index: self.calls, text });
                self.state = if closed { State::CallTail } else { State::Arguments { depth, in_string, escaped } };
                closed
            }
            State::CallTail => match self.expect("}") {
                Some(true) => {
                    self.calls += 1;
                    self.state = State::BetweenCalls;
                    true
                }
                Some(false) => false,
                None => self.fail(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `size` bytes (at char boundaries) and joins the deltas.
    fn read(text: &str, size: usize) -> (Vec<ToolDelta>, ToolStreamReader) {
        let mut reader = ToolStreamReader::default();
        let mut deltas: Vec<ToolDelta> = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(size) {
            for delta in reader.push(&piece.iter().collect::<String>()) {
                match (deltas.last_mut(), delta) {
                    (Some(ToolDelta::Arguments { index: a, text }), ToolDelta::Arguments { index: b, text: more }) if *a == b => text.push_str(&more),
                    (Some(ToolDelta::Content(text)), ToolDelta::Content(more)) => text.push_str(&more),
                    (_, delta) => deltas.push(delta),
                }
            }
        }
        (deltas, reader)
    }

    #[test]
    fn calls_stream_their_names_then_arguments_in_any_pieces() {
        let text = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Pa\"}ris", "days": [1, 2]}}, {"name": "f", "arguments": {}}]}"#;
        for size in [1, 2, 3, 7, 500] {
            let (deltas, reader) = read(text, size);
            assert_eq!(
                deltas,
                vec![
                    ToolDelta::CallStart { index: 0, name: "get_weather".into() },
                    ToolDelta::Arguments { index: 0, text: r#"{"city": "Pa\"}ris", "days": [1, 2]}"#.into() },
                    ToolDelta::CallStart { index: 1, name: "f".into() },
                    ToolDelta::Arguments { index: 1, text: "{}".into() },
                ],
                "pieces of {size}"
            );
            assert_eq!((reader.calls(), reader.unreadable()), (2, false));
        }
    }

    #[test]
    fn a_reply_streams_unescaped_and_whitespace_is_allowed() {
        let text = "{ \"response\" :  \"Say \\\"hi\\\" \\u00e9 \\ud83d\\ude00 done\"}";
        for size in [1, 4, 500] {
            let (deltas, reader) = read(text, size);
            assert_eq!(deltas, vec![ToolDelta::Content("Say \"hi\" é 😀 done".into())], "pieces of {size}");
            assert_eq!(reader.calls(), 0);
        }
        let (deltas, _) = read("{\n  \"tool_calls\": [\n {\"name\": \"f\",\n \"arguments\": {\"a\": 1}\n }\n]}", 3);
        assert_eq!(deltas[0], ToolDelta::CallStart { index: 0, name: "f".into() });
        assert_eq!(deltas[1], ToolDelta::Arguments { index: 0, text: "{\"a\": 1}".into() });
    }

    #[test]
    fn another_layout_is_left_to_the_end() {
        for text in [r#"{"tool_calls": [{"arguments": {}, "name": "f"}]}"#, r#"{"other": 1}"#, "plain text"] {
            let (deltas, reader) = read(text, 2);
            assert!(deltas.is_empty() && reader.unreadable(), "{text}: {deltas:?}");
            assert_eq!(reader.text(), text);
        }
    }
}
