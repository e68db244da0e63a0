//! Placeholders in an engine's command line: `{model}` becomes the model path, and so
//! on. Every placeholder is known ([`PLACEHOLDERS`]); a config naming another is refused
//! when the deployment is created, not when a replica starts.

use std::collections::BTreeMap;

/// The placeholders an argument may hold.
pub const PLACEHOLDERS: &[&str] = &[
    "model",
    "model_name",
    "host",
    "port",
    "slots",
    "context",
    "context_total",
    "threads",
    "gpus",
    "gpu_count",
    "replica",
];

/// Values for one replica's placeholders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values(BTreeMap<&'static str, String>);

impl Values {
    pub fn set(&mut self, name: &'static str, value: impl Into<String>) {
        debug_assert!(PLACEHOLDERS.contains(&name), "unknown placeholder {name}");
        self.0.insert(name, value.into());
    }

    /// `arg` with every `{name}` replaced; `{{` and `}}` stand for braces.
    pub fn render(&self, arg: &str) -> Result<String, String> {
        let mut out = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(at) = rest.find(['{', '}']) {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{{") {
                out.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                out.push('}');
                rest = after;
            } else if tail.starts_with('}') {
                return Err(format!("`{arg}`: a lone `}}` (write `}}}}` for a brace)"));
            } else {
                let end = tail.find('}').ok_or_else(|| format!("`{arg}`: `{{` is not closed"))?;
                let name = &tail[1..end];
                if !PLACEHOLDERS.contains(&name) {
                    return Err(format!(
                        "`{arg}`: unknown placeholder `{{{name}}}`; known: {}",
                        PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
                    ));
                }
                let value = self.0.get(name).ok_or_else(|| format!("`{arg}`: `{{{name}}}` has no value here"))?;
                out.push_str(value);
                rest = &tail[end + 1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Values for every placeholder, for checking a template before any replica runs.
    pub fn sample() -> Values {
        let mut values = Values::default();
        for name in PLACEHOLDERS {
            values.set(name, "x");
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_braces_escaped() {
        let mut values = Values::default();
        values.set("port", "8080");
        values.set("model", "/m/a.gguf");
        assert_eq!(values.render("--port={port}").unwrap(), "--port=8080");
        assert_eq!(values.render("{model}").unwrap(), "/m/a.gguf");
        assert_eq!(values.render("{{\"json\": {port}}}").unwrap(), "{\"json\": 8080}");
        assert_eq!(values.render("plain").unwrap(), "plain");
    }

    #[test]
    fn unknown_unclosed_and_unset_placeholders_are_errors() {
        let values = Values::default();
        assert!(values.render("{nope}").unwrap_err().contains("unknown placeholder `{nope}`"));
        assert!(values.render("{port").unwrap_err().contains("not closed"));
        assert!(values.render("a}b").unwrap_err().contains("lone"));
        assert!(values.render("{port}").unwrap_err().contains("no value"));
        assert_eq!(Values::sample().render("{gpus}:{threads}").unwrap(), "x:x");
    }
}
