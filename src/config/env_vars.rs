//! Environment variables in config values: `${NAME}` in any string value of a config
//! file is replaced by the variable's value when the file is read (`$$` writes a `$`).
//! A variable that is not set is an error naming the key and the variable, never an
//! empty string. Only config files are expanded: admin API bodies are taken literally
//! (a client must not read the server's environment).

use toml::Value;

/// Expand every string in `value`; `path` names the key in errors.
pub fn expand_all(value: &mut Value, path: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    match value {
        Value::String(text) if text.contains('$') => {
            *text = expand(text, lookup).map_err(|why| format!("{path}: {why}"))?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_all(item, &format!("{path}[{i}]"), lookup)?;
            }
        }
        Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                expand_all(item, &path, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `text` with `${NAME}` replaced and `$$` made `$`; any other `$` is kept.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| format!("`{text}`: `${{` is not closed"))?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`{text}`: `${{{name}}}` is not a variable name"));
            }
            let value = lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "MODEL" => Some("/models/a.gguf".into()),
            "BIN" => Some("/opt/llama-server".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_expanded_in_strings_and_dollars_escaped() {
        assert_eq!(expand("${MODEL}", &env).unwrap(), "/models/a.gguf");
        assert_eq!(expand("x=${BIN} $$5 $HOME", &env).unwrap(), "x=/opt/llama-server $5 $HOME");
        assert!(expand("${NOPE}", &env).unwrap_err().contains("`NOPE` is not set"));
        assert!(expand("${MODEL", &env).unwrap_err().contains("not closed"));
        assert!(expand("${a b}", &env).unwrap_err().contains("not a variable name"));
    }

    #[test]
    fn every_string_of_a_document_is_expanded_and_errors_name_the_key() {
        let mut doc: Value = toml::from_str(
            "[deployments.d.external]\nmodel = \"${MODEL}\"\nextra_args = [\"--x\", \"${BIN}\"]\nslots = 2\n",
        )
        .unwrap();
        expand_all(&mut doc, "", &env).unwrap();
        assert_eq!(doc["deployments"]["d"]["external"]["model"].as_str(), Some("/models/a.gguf"));
        assert_eq!(doc["deployments"]["d"]["external"]["extra_args"][1].as_str(), Some("/opt/llama-server"));
        let mut bad: Value = toml::from_str("[server]\nbind = \"${NOPE}\"\n").unwrap();
        let error = expand_all(&mut bad, "", &env).unwrap_err();
        assert_eq!(error, "server.bind: environment variable `NOPE` is not set");
    }
}
