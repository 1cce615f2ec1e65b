//! Operator-defined prompts (`[prompts.NAME]`): text templates with `{argument}` placeholders,
//! listed to and rendered for the clients and roles the operator names (deny by default).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use toml::Spanned;

use crate::config::{ConfigError, Source};

/// `[prompts.NAME]`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrompt {
    /// Description shown to the user.
    pub description: String,
    /// Arguments.
    #[serde(default)]
    pub arguments: Vec<RawPromptArgument>,
    /// Messages: `{ role = "user" | "assistant", text = "... {arg} ..." }`.
    pub messages: Vec<RawPromptMessage>,
    /// Roles whose clients see the prompt.
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
    /// Clients that see the prompt.
    #[serde(default)]
    pub clients: Vec<Spanned<String>>,
}

/// One prompt argument.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawPromptArgument {
    /// Name (`[A-Za-z0-9_]`).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Must the client give it?
    #[serde(default)]
    pub required: bool,
    /// Suggested values (offered by `completion/complete`).
    #[serde(default)]
    pub values: Vec<String>,
}

/// One prompt message.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawPromptMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Text with `{argument}` placeholders (`{{`/`}}` for literal braces).
    pub text: String,
}

/// A validated prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Arguments.
    pub arguments: Vec<RawPromptArgument>,
    /// Messages.
    pub messages: Vec<RawPromptMessage>,
    /// Roles that see it.
    pub roles: BTreeSet<String>,
    /// Clients that see it.
    pub clients: BTreeSet<String>,
}

impl Prompt {
    /// The `prompts/list` entry.
    pub fn listing(&self) -> Value {
        let args: Vec<Value> = self
            .arguments
            .iter()
            .map(|a| {
                let mut v = json!({"name": a.name, "required": a.required});
                if let Some(d) = &a.description {
                    v["description"] = json!(d);
                }
                v
            })
            .collect();
        json!({"name": self.name, "description": self.description, "arguments": args})
    }

    /// Render for `prompts/get`; `Err` names a missing required argument or a non-string one.
    pub fn render(&self, args: &Map<String, Value>) -> Result<Value, String> {
        let mut values = Map::new();
        for a in &self.arguments {
            match args.get(&a.name) {
                Some(Value::String(s)) if s.len() <= 64 * 1024 => {
                    values.insert(a.name.clone(), json!(s));
                }
                Some(Value::Null) | None if !a.required => {}
                None | Some(Value::Null) => {
                    return Err(format!("missing required argument {}", a.name))
                }
                Some(_) => return Err(format!("argument {} must be a string", a.name)),
            }
        }
        let messages: Vec<Value> = self
            .messages
            .iter()
            .map(|m| {
                json!({"role": m.role, "content": {"type": "text", "text": fill(&m.text, &values)}})
            })
            .collect();
        Ok(json!({"description": self.description, "messages": messages}))
    }

    /// Completion values for an argument, by prefix.
    pub fn complete(&self, argument: &str, prefix: &str) -> Vec<String> {
        self.arguments
            .iter()
            .find(|a| a.name == argument)
            .map(|a| {
                a.values
                    .iter()
                    .filter(|v| v.starts_with(prefix))
                    .take(100)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Replace `{name}` by the value (absent optional arguments become empty); `{{`/`}}` are braces.
fn fill(text: &str, values: &Map<String, Value>) -> String {
    mcpd_ipc::text::fill_template(text, |name| {
        values
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    })
}

fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Validate one `[prompts.NAME]`.
pub(crate) fn prompt(
    src: &Source,
    name: &str,
    p: &Spanned<RawPrompt>,
) -> Result<Prompt, ConfigError> {
    let raw = p.get_ref();
    let at = |m: String| src.error(Some(p.span()), format!("prompts.{name}: {m}"));
    if !name_ok(name) {
        return Err(at("invalid prompt name".into()));
    }
    if raw.messages.is_empty() || raw.messages.len() > 64 {
        return Err(at("messages must have 1..64 entries".into()));
    }
    let mut seen = BTreeSet::new();
    for a in &raw.arguments {
        if !name_ok(&a.name) || !seen.insert(a.name.clone()) {
            return Err(at(format!("invalid or duplicate argument '{}'", a.name)));
        }
    }
    for m in &raw.messages {
        if m.role != "user" && m.role != "assistant" {
            return Err(at(format!(
                "message role must be user or assistant, not '{}'",
                m.role
            )));
        }
        let names = crate::exec::template_placeholders(&m.text).map_err(at)?;
        if let Some(unknown) = names.iter().find(|n| !seen.contains(*n)) {
            return Err(at(format!("placeholder {{{unknown}}} is not an argument")));
        }
    }
    if raw.roles.is_empty() && raw.clients.is_empty() {
        return Err(at("no roles or clients may use it (deny by default): add roles = [...] or clients = [...]".into()));
    }
    Ok(Prompt {
        name: name.to_string(),
        description: raw.description.clone(),
        arguments: raw.arguments.clone(),
        messages: raw.messages.clone(),
        roles: raw.roles.iter().map(|r| r.get_ref().clone()).collect(),
        clients: raw.clients.iter().map(|c| c.get_ref().clone()).collect(),
    })
}
