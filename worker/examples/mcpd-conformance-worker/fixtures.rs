//! The `conformance` tool set: the fixtures the official MCP conformance suite
//! (`@modelcontextprotocol/conformance`) expects, implemented as ordinary worker tools and a
//! provider, so the suite exercises the real broker → IPC → worker path (policy decisions,
//! audit, progress and log relay, client requests). Enabled only by `--toolset conformance`;
//! it replaces every other tool and provider, and is never part of a default policy.
//!
//! Values follow the suite's documented fixtures (docs/research/conformance-scenarios.md §6).

use std::time::Duration;

use mcpd_ipc::{
    CallError, ClientReplyOutcome, ClientRequestKind, Content, LogLevel, ResourceBody, ToolAccess,
    ToolAnnotations, ToolDescriptor, ToolResult,
};
use serde_json::{json, Map, Value};

use mcpd_worker::tools::{
    error_result, input_required, invalid_args, task_input_required, text_result, Provider,
    Registry, Tool, ToolContext,
};

/// 1×1 red PNG.
pub const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A tiny WAV file.
pub const WAV_B64: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

/// How long a fixture waits for the client to answer a sampling or elicitation request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

/// Register the fixtures, replacing whatever the registry held.
pub fn register(r: &mut Registry) {
    *r = Registry::new();
    for kind in [
        Kind::SimpleText,
        Kind::Image,
        Kind::Audio,
        Kind::EmbeddedResource,
        Kind::Mixed,
        Kind::Logging,
        Kind::Progress,
        Kind::Error,
        Kind::Sampling,
        Kind::Elicitation,
        Kind::ElicitationDefaults,
        Kind::ElicitationEnums,
        Kind::JsonSchema2020,
        Kind::Reconnection,
        Kind::MissingCapability,
        Kind::StreamingElicitation,
        Kind::LoggingTool,
        Kind::CustomHeader,
        Kind::TriggerToolChange,
        Kind::TriggerPromptChange,
    ] {
        r.register(Fixture(kind));
    }
    register_mrtr(r);
    register_tasks(r);
    r.add_provider(Fixtures);
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    SimpleText,
    Image,
    Audio,
    EmbeddedResource,
    Mixed,
    Logging,
    Progress,
    Error,
    Sampling,
    Elicitation,
    ElicitationDefaults,
    ElicitationEnums,
    JsonSchema2020,
    Reconnection,
    MissingCapability,
    StreamingElicitation,
    LoggingTool,
    CustomHeader,
    TriggerToolChange,
    TriggerPromptChange,
}

#[derive(Debug)]
struct Fixture(Kind);

fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

impl Fixture {
    fn meta(&self) -> (&'static str, &'static str, Value) {
        match self.0 {
            Kind::SimpleText => (
                "test_simple_text",
                "Returns a simple text response",
                empty_schema(),
            ),
            Kind::Image => ("test_image_content", "Returns an image", empty_schema()),
            Kind::Audio => ("test_audio_content", "Returns audio", empty_schema()),
            Kind::EmbeddedResource => (
                "test_embedded_resource",
                "Returns an embedded resource",
                empty_schema(),
            ),
            Kind::Mixed => (
                "test_multiple_content_types",
                "Returns text, an image and a resource",
                empty_schema(),
            ),
            Kind::Logging => (
                "test_tool_with_logging",
                "Logs three messages while it runs",
                empty_schema(),
            ),
            Kind::Progress => (
                "test_tool_with_progress",
                "Reports progress three times",
                empty_schema(),
            ),
            Kind::Error => (
                "test_error_handling",
                "Always returns a tool error",
                empty_schema(),
            ),
            Kind::Sampling => (
                "test_sampling",
                "Asks the client's model for a completion",
                json!({"type": "object", "properties": {"prompt": {"type": "string", "description": "The prompt"}}, "required": ["prompt"]}),
            ),
            Kind::Elicitation => (
                "test_elicitation",
                "Asks the user for information",
                json!({"type": "object", "properties": {"message": {"type": "string", "description": "What to ask"}}, "required": ["message"]}),
            ),
            Kind::ElicitationDefaults => (
                "test_elicitation_sep1034_defaults",
                "Elicitation with default values",
                empty_schema(),
            ),
            Kind::ElicitationEnums => (
                "test_elicitation_sep1330_enums",
                "Elicitation with enum schemas",
                empty_schema(),
            ),
            Kind::JsonSchema2020 => (
                "json_schema_2020_12_tool",
                "Tool with JSON Schema 2020-12 features",
                json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "$defs": {"address": {"$anchor": "addressDef", "type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
                    "properties": {
                        "name": {"type": "string"},
                        "address": {"$ref": "#/$defs/address"},
                        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                        "phone": {"type": "string"},
                        "email": {"type": "string"}
                    },
                    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
                    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
                    "then": {"required": ["phone"]},
                    "else": {"required": ["email"]},
                    "additionalProperties": false
                }),
            ),
            Kind::Reconnection => (
                "test_reconnection",
                "Answers after a short pause (SSE reconnection test)",
                empty_schema(),
            ),
            Kind::MissingCapability => (
                "test_missing_capability",
                "Needs the client's sampling capability",
                empty_schema(),
            ),
            Kind::StreamingElicitation => (
                "test_streaming_elicitation",
                "Needs the client's elicitation capability; never sends a server request on the stream",
                empty_schema(),
            ),
            Kind::LoggingTool => (
                "test_logging_tool",
                "Logs at info level (delivered only at the request's log level)",
                empty_schema(),
            ),
            Kind::TriggerToolChange => (
                "test_trigger_tool_change",
                "Announces that the tool list changed",
                empty_schema(),
            ),
            Kind::TriggerPromptChange => (
                "test_trigger_prompt_change",
                "Announces that the prompt list changed",
                empty_schema(),
            ),
            Kind::CustomHeader => (
                "test_custom_header_tool",
                "Its region argument is mirrored in the Mcp-Param-Region header",
                json!({"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}, "required": ["region"]}),
            ),
        }
    }
}

fn elicit(ctx: &ToolContext, params: Value) -> Result<Value, String> {
    match ctx.ask_client(
        ClientRequestKind::Elicitation {
            params_json: params.to_string(),
        },
        CLIENT_TIMEOUT,
    ) {
        ClientReplyOutcome::Ok { result_json } => {
            serde_json::from_str(&result_json).map_err(|_| "invalid client answer".to_string())
        }
        ClientReplyOutcome::Err { message } => Err(message),
    }
}

impl Tool for Fixture {
    fn descriptor(&self) -> ToolDescriptor {
        let (name, description, schema) = self.meta();
        ToolDescriptor {
            name: name.into(),
            title: None,
            description: description.into(),
            input_schema_json: schema.to_string(),
            output_schema_json: None,
            annotations: ToolAnnotations {
                read_only: true,
                ..ToolAnnotations::default()
            },
            access: ToolAccess::None,
            path_args: vec![],
            exec_args: None,
            client_capabilities: match self.0 {
                Kind::MissingCapability => vec!["sampling".into()],
                Kind::StreamingElicitation => vec!["elicitation".into()],
                _ => vec![],
            },
            task_support: mcpd_ipc::TaskSupport::Forbidden,
        }
    }

    fn call(&self, ctx: &ToolContext, args: Value) -> Result<ToolResult, CallError> {
        let text = |t: &str| Content::Text { text: t.into() };
        let image = || Content::Image {
            data: b64(PNG_B64),
            mime_type: "image/png".into(),
        };
        let ok = |content: Vec<Content>| ToolResult {
            content,
            structured_json: None,
            is_error: false,
            input_required: None,
        };
        Ok(match self.0 {
            Kind::SimpleText => text_result("This is a simple text response for testing."),
            Kind::Image => ok(vec![image()]),
            Kind::Audio => ok(vec![Content::Audio {
                data: b64(WAV_B64),
                mime_type: "audio/wav".into(),
            }]),
            Kind::EmbeddedResource => ok(vec![Content::Resource {
                uri: "test://embedded-resource".into(),
                mime_type: Some("text/plain".into()),
                body: ResourceBody::Text("This is an embedded resource content.".into()),
            }]),
            Kind::Mixed => ok(vec![
                text("Multiple content types test:"),
                image(),
                Content::Resource {
                    uri: "test://mixed-content-resource".into(),
                    mime_type: Some("application/json".into()),
                    body: ResourceBody::Text("{\"test\":\"data\",\"value\":123}".into()),
                },
            ]),
            Kind::Logging => {
                for (i, m) in [
                    "Tool execution started",
                    "Tool processing data",
                    "Tool execution completed",
                ]
                .iter()
                .enumerate()
                {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    ctx.log(LogLevel::Info, json!(m));
                }
                text_result("Tool with logging executed successfully")
            }
            Kind::Progress => {
                for (i, p) in [0.0, 50.0, 100.0].iter().enumerate() {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    ctx.progress(*p, Some(100.0), None);
                }
                text_result("Tool with progress executed successfully")
            }
            Kind::Error => error_result("This tool intentionally returns an error for testing"),
            Kind::Sampling => {
                let prompt = args
                    .get("prompt")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid_args("prompt must be a string"))?;
                let params = json!({"messages": [{"role": "user", "content": {"type": "text", "text": prompt}}], "maxTokens": 100});
                match ctx.ask_client(
                    ClientRequestKind::Sampling {
                        params_json: params.to_string(),
                    },
                    CLIENT_TIMEOUT,
                ) {
                    ClientReplyOutcome::Ok { result_json } => {
                        let v: Value = serde_json::from_str(&result_json).unwrap_or(Value::Null);
                        let answer = v["content"]["text"].as_str().unwrap_or("").to_string();
                        text_result(format!("LLM response: {answer}"))
                    }
                    ClientReplyOutcome::Err { message } => {
                        error_result(format!("Sampling failed: {message}"))
                    }
                }
            }
            Kind::Elicitation => {
                let message = args
                    .get("message")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid_args("message must be a string"))?;
                let params = json!({"message": message, "requestedSchema": {"type": "object", "properties": {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"}},
                    "required": ["username", "email"]}});
                match elicit(ctx, params) {
                    Ok(v) => text_result(format!(
                        "User response: action={}, content={}",
                        v["action"].as_str().unwrap_or("?"),
                        v.get("content").cloned().unwrap_or(Value::Null)
                    )),
                    Err(e) => error_result(format!("Elicitation failed: {e}")),
                }
            }
            Kind::ElicitationDefaults => {
                let params = json!({"message": "Provide your details (defaults shown)", "requestedSchema": {"type": "object", "properties": {
                    "name": {"type": "string", "default": "John Doe"},
                    "age": {"type": "integer", "default": 30},
                    "score": {"type": "number", "default": 95.5},
                    "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                    "verified": {"type": "boolean", "default": true}},
                    "required": []}});
                match elicit(ctx, params) {
                    Ok(v) => text_result(format!("Elicitation completed: {v}")),
                    Err(e) => error_result(format!("Elicitation failed: {e}")),
                }
            }
            Kind::ElicitationEnums => {
                let params = json!({"message": "Choose options", "requestedSchema": {"type": "object", "properties": {
                    "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                    "titledSingle": {"type": "string", "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"}]},
                    "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"], "enumNames": ["Option One", "Option Two", "Option Three"]},
                    "untitledMulti": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                    "titledMulti": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"anyOf": [
                        {"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"},
                        {"const": "value3", "title": "Third Choice"}]}}},
                    "required": []}});
                match elicit(ctx, params) {
                    Ok(v) => text_result(format!("Elicitation completed: {v}")),
                    Err(e) => error_result(format!("Elicitation failed: {e}")),
                }
            }
            Kind::JsonSchema2020 => text_result(format!(
                "Received: {}",
                Value::Object(args.as_object().cloned().unwrap_or_default())
            )),
            Kind::Reconnection => {
                std::thread::sleep(Duration::from_millis(200));
                text_result("Reconnection test completed")
            }
            Kind::MissingCapability => text_result("The client declared sampling"),
            Kind::StreamingElicitation => text_result("Elicitation is available; nothing to ask"),
            Kind::LoggingTool => {
                ctx.log(LogLevel::Info, json!("test_logging_tool ran"));
                text_result("Logged one message")
            }
            Kind::TriggerToolChange => {
                ctx.notify_changed(mcpd_ipc::Change::Tools);
                text_result("Tool list change announced")
            }
            Kind::TriggerPromptChange => {
                ctx.notify_changed(mcpd_ipc::Change::Prompts);
                text_result("Prompt list change announced")
            }
            Kind::CustomHeader => text_result(format!(
                "Region: {}",
                args.get("region").and_then(Value::as_str).unwrap_or("")
            )),
        })
    }
}

/// The fixture resources, templates, prompts and completions.
#[derive(Debug)]
struct Fixtures;

fn not_found(uri: &str) -> CallError {
    invalid_args(format!(
        "Resource not found: {}",
        uri.chars().take(256).collect::<String>()
    ))
}

impl Provider for Fixtures {
    fn list_resources(&self, _ctx: &ToolContext) -> Vec<Value> {
        vec![
            json!({"uri": "test://static-text", "name": "static-text", "description": "A static text resource", "mimeType": "text/plain"}),
            json!({"uri": "test://static-binary", "name": "static-binary", "description": "A static binary resource (PNG)", "mimeType": "image/png"}),
            json!({"uri": "test://watched-resource", "name": "watched-resource", "description": "A resource that can be subscribed to", "mimeType": "text/plain"}),
        ]
    }

    fn resource_templates(&self) -> Vec<Value> {
        vec![
            json!({"uriTemplate": "test://template/{id}/data", "name": "template", "description": "Data for an id", "mimeType": "application/json"}),
        ]
    }

    fn read_resource(&self, _ctx: &ToolContext, uri: &str) -> Option<Result<Value, CallError>> {
        let contents = match uri {
            "test://static-text" => {
                json!({"uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."})
            }
            "test://static-binary" => json!({"uri": uri, "mimeType": "image/png", "blob": PNG_B64}),
            "test://watched-resource" => {
                json!({"uri": uri, "mimeType": "text/plain", "text": "Watched resource content"})
            }
            _ => {
                let id = uri
                    .strip_prefix("test://template/")
                    .and_then(|r| r.strip_suffix("/data"))
                    .filter(|id| !id.is_empty() && !id.contains('/') && id.len() <= 128);
                match id {
                    Some(id) => json!({"uri": uri, "mimeType": "application/json",
                        "text": json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string()}),
                    None => return Some(Err(not_found(uri))),
                }
            }
        };
        Some(Ok(json!({"contents": [contents]})))
    }

    fn prompts(&self) -> Vec<Value> {
        vec![
            json!({"name": "test_simple_prompt", "description": "A simple prompt without arguments"}),
            json!({"name": "test_prompt_with_arguments", "description": "A prompt with two arguments",
                   "arguments": [{"name": "arg1", "description": "First argument", "required": true},
                                 {"name": "arg2", "description": "Second argument", "required": true}]}),
            json!({"name": "test_prompt_with_embedded_resource", "description": "A prompt with an embedded resource",
                   "arguments": [{"name": "resourceUri", "description": "URI of the resource to embed", "required": true}]}),
            json!({"name": "test_prompt_with_image", "description": "A prompt with an image"}),
            json!({"name": "test_input_required_result_prompt", "description": "A prompt that first asks the client for context (stateless era)"}),
        ]
    }

    fn get_prompt(
        &self,
        ctx: &ToolContext,
        name: &str,
        args: &Map<String, Value>,
    ) -> Option<Result<Value, CallError>> {
        if name == "test_input_required_result_prompt" {
            let a = ctx.input_responses();
            return Some(Ok(
                match accepted(&a, "user_context", "context").and_then(Value::as_str) {
                    Some(c) => {
                        json!({"messages": [{"role": "user", "content": {"type": "text", "text": format!("Use this context: {c}")}}]})
                    }
                    None => {
                        json!({"inputRequests": {"user_context": elicit_req("What context should the prompt use?", "context", "string")}})
                    }
                },
            ));
        }
        let arg = |k: &str| -> Result<String, CallError> {
            args.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| invalid_args(format!("missing required argument {k}")))
        };
        let user_text = |t: String| json!({"role": "user", "content": {"type": "text", "text": t}});
        let r = match name {
            "test_simple_prompt" => Ok(json!({"messages": [user_text("This is a simple prompt for testing.".into())]})),
            "test_prompt_with_arguments" => (|| {
                let (a1, a2) = (arg("arg1")?, arg("arg2")?);
                Ok(json!({"messages": [user_text(format!("Prompt with arguments: arg1='{a1}', arg2='{a2}'"))]}))
            })(),
            "test_prompt_with_embedded_resource" => arg("resourceUri").map(|uri| {
                json!({"messages": [
                    {"role": "user", "content": {"type": "resource", "resource": {"uri": uri, "mimeType": "text/plain", "text": "Embedded resource content for testing."}}},
                    user_text("Please process the embedded resource above.".into())]})
            }),
            "test_prompt_with_image" => Ok(json!({"messages": [
                {"role": "user", "content": {"type": "image", "data": PNG_B64, "mimeType": "image/png"}},
                user_text("Please analyze the image above.".into())]})),
            _ => return None,
        };
        Some(r)
    }

    fn complete(
        &self,
        _ctx: &ToolContext,
        reference: &Value,
        argument: &Value,
    ) -> Option<Vec<String>> {
        let prefix = argument["value"].as_str().unwrap_or("");
        let candidates: &[&str] = match (
            reference["type"].as_str(),
            reference["name"].as_str(),
            reference["uri"].as_str(),
        ) {
            (Some("ref/prompt"), Some("test_prompt_with_arguments"), _) => {
                &["testValue1", "testValue2", "test"]
            }
            (Some("ref/resource"), _, Some("test://template/{id}/data")) => &["1", "2", "3", "123"],
            _ => return None,
        };
        Some(
            candidates
                .iter()
                .filter(|c| c.starts_with(prefix))
                .map(|c| c.to_string())
                .collect(),
        )
    }
}

// ------------------------------------------------------------------------------------------
// Stateless era (2026-07-28): input-required rounds (SEP-2322). These tools never ask the
// client directly; they return `input_required` and are run again with the answers.

#[derive(Debug, Clone, Copy)]
enum Mrtr {
    Elicitation,
    Sampling,
    ListRoots,
    RequestState,
    MultipleInputs,
    MultiRound,
    TamperedState,
    Capabilities,
}

#[derive(Debug)]
struct MrtrFixture(Mrtr);

fn elicit_req(message: &str, field: &str, ty: &str) -> Value {
    json!({"method": "elicitation/create", "params": {"message": message,
        "requestedSchema": {"type": "object", "properties": {field: {"type": ty}}, "required": [field]}}})
}

fn sampling_req(text: &str, max_tokens: u32) -> Value {
    json!({"method": "sampling/createMessage", "params": {
        "messages": [{"role": "user", "content": {"type": "text", "text": text}}], "maxTokens": max_tokens}})
}

fn roots_req() -> Value {
    json!({"method": "roots/list", "params": {}})
}

/// The accepted value of `field` in an elicitation answer.
fn accepted<'a>(answers: &'a Map<String, Value>, key: &str, field: &str) -> Option<&'a Value> {
    let a = answers.get(key)?;
    (a.get("action").and_then(Value::as_str) == Some("accept"))
        .then(|| a.get("content")?.get(field))
        .flatten()
}

fn sampled(answers: &Map<String, Value>, key: &str) -> Option<String> {
    let c = answers.get(key)?.get("content")?;
    Some(
        c.get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    )
}

fn rooted(answers: &Map<String, Value>, key: &str) -> Option<usize> {
    answers.get(key)?.get("roots")?.as_array().map(Vec::len)
}

impl MrtrFixture {
    fn name(&self) -> &'static str {
        match self.0 {
            Mrtr::Elicitation => "test_input_required_result_elicitation",
            Mrtr::Sampling => "test_input_required_result_sampling",
            Mrtr::ListRoots => "test_input_required_result_list_roots",
            Mrtr::RequestState => "test_input_required_result_request_state",
            Mrtr::MultipleInputs => "test_input_required_result_multiple_inputs",
            Mrtr::MultiRound => "test_input_required_result_multi_round",
            Mrtr::TamperedState => "test_input_required_result_tampered_state",
            Mrtr::Capabilities => "test_input_required_result_capabilities",
        }
    }
}

impl Tool for MrtrFixture {
    fn descriptor(&self) -> ToolDescriptor {
        ToolDescriptor {
            name: self.name().into(),
            title: None,
            description: "Asks the client for input with an InputRequiredResult (stateless era)"
                .into(),
            input_schema_json: empty_schema().to_string(),
            output_schema_json: None,
            annotations: ToolAnnotations {
                read_only: true,
                ..ToolAnnotations::default()
            },
            access: ToolAccess::None,
            path_args: vec![],
            exec_args: None,
            client_capabilities: vec![],
            task_support: mcpd_ipc::TaskSupport::Forbidden,
        }
    }

    fn call(&self, ctx: &ToolContext, _args: Value) -> Result<ToolResult, CallError> {
        if !ctx.is_stateless() {
            return Ok(error_result(
                "This tool demonstrates input-required results of the 2026-07-28 protocol",
            ));
        }
        let a = ctx.input_responses();
        let state = ctx.request_state();
        Ok(match self.0 {
            Mrtr::Elicitation => match accepted(&a, "user_name", "name").and_then(Value::as_str) {
                Some(name) => text_result(format!("Hello, {name}!")),
                None => input_required(
                    json!({"user_name": elicit_req("What is your name?", "name", "string")}),
                    None,
                ),
            },
            Mrtr::Sampling => match sampled(&a, "capital_question") {
                Some(t) => text_result(format!("The model answered: {t}")),
                None => input_required(
                    json!({"capital_question": sampling_req("What is the capital of France?", 100)}),
                    None,
                ),
            },
            Mrtr::ListRoots => match rooted(&a, "client_roots") {
                Some(n) => text_result(format!("The client has {n} root(s)")),
                None => input_required(json!({"client_roots": roots_req()}), None),
            },
            Mrtr::RequestState | Mrtr::TamperedState => {
                let tag: &[u8] = if matches!(self.0, Mrtr::RequestState) {
                    b"confirm-v1"
                } else {
                    b"tamper-check-v1"
                };
                match (state, accepted(&a, "confirm", "ok")) {
                    (Some(s), Some(ok)) if s == tag => {
                        text_result(format!("state-ok (confirmed: {ok})"))
                    }
                    _ => input_required(
                        json!({"confirm": elicit_req("Please confirm", "ok", "boolean")}),
                        Some(tag.to_vec()),
                    ),
                }
            }
            Mrtr::MultipleInputs => {
                let name = accepted(&a, "user_name", "name").and_then(Value::as_str);
                let greeting = sampled(&a, "greeting");
                let roots = rooted(&a, "client_roots");
                match (state, name, greeting, roots) {
                    (Some(b"multi-v1"), Some(n), Some(g), Some(r)) => {
                        text_result(format!("{g} {n} ({r} root(s))"))
                    }
                    _ => input_required(
                        json!({
                            "user_name": elicit_req("What is your name?", "name", "string"),
                            "greeting": sampling_req("Generate a greeting", 50),
                            "client_roots": roots_req()
                        }),
                        Some(b"multi-v1".to_vec()),
                    ),
                }
            }
            Mrtr::MultiRound => {
                let round2 = state.and_then(|s| s.strip_prefix(b"round2:"));
                match (state, round2) {
                    (_, Some(name)) => match accepted(&a, "step2", "color").and_then(Value::as_str)
                    {
                        Some(color) => text_result(format!(
                            "Hello {}, your favorite color is {color}",
                            String::from_utf8_lossy(name)
                        )),
                        None => input_required(
                            json!({"step2": elicit_req("Step 2: What is your favorite color?", "color", "string")}),
                            state.map(<[u8]>::to_vec),
                        ),
                    },
                    (Some(b"round1"), None) => {
                        match accepted(&a, "step1", "name").and_then(Value::as_str) {
                            Some(name) => input_required(
                                json!({"step2": elicit_req("Step 2: What is your favorite color?", "color", "string")}),
                                Some([b"round2:".as_slice(), name.as_bytes()].concat()),
                            ),
                            None => input_required(
                                json!({"step1": elicit_req("Step 1: What is your name?", "name", "string")}),
                                Some(b"round1".to_vec()),
                            ),
                        }
                    }
                    _ => input_required(
                        json!({"step1": elicit_req("Step 1: What is your name?", "name", "string")}),
                        Some(b"round1".to_vec()),
                    ),
                }
            }
            Mrtr::Capabilities => {
                // Ask only for what the client declared it can do.
                let mut req = Map::new();
                let mut done = true;
                if ctx.client_has("elicitation") {
                    req.insert(
                        "user_name".into(),
                        elicit_req("What is your name?", "name", "string"),
                    );
                    done &= accepted(&a, "user_name", "name").is_some();
                }
                if ctx.client_has("sampling") {
                    req.insert(
                        "capital_question".into(),
                        sampling_req("What is the capital of France?", 100),
                    );
                    done &= sampled(&a, "capital_question").is_some();
                }
                if ctx.client_has("roots") {
                    req.insert("client_roots".into(), roots_req());
                    done &= rooted(&a, "client_roots").is_some();
                }
                if req.is_empty() || done {
                    text_result("Everything the client can provide was provided")
                } else {
                    input_required(Value::Object(req), None)
                }
            }
        })
    }
}

/// Register the input-required fixtures.
fn register_mrtr(r: &mut Registry) {
    for k in [
        Mrtr::Elicitation,
        Mrtr::Sampling,
        Mrtr::ListRoots,
        Mrtr::RequestState,
        Mrtr::MultipleInputs,
        Mrtr::MultiRound,
        Mrtr::TamperedState,
        Mrtr::Capabilities,
    ] {
        r.register(MrtrFixture(k));
    }
}

// ------------------------------------------------------------------------------------------
// Tasks extension (`io.modelcontextprotocol/tasks`) fixtures. The broker decides whether a call
// runs as a task (the tool's task support and the request's capabilities); the tools only do
// their work, ask for input, honour cancellation.

#[derive(Debug, Clone, Copy)]
enum TaskKind {
    Greet,
    SlowCompute,
    FailingJob,
    ProtocolErrorJob,
    ConfirmDelete,
    MultiInput,
    ToolWithTask,
}

#[derive(Debug)]
struct TaskFixture(TaskKind);

fn elicit_bool(message: &str, field: &str) -> Value {
    elicit_req(message, field, "boolean")
}

impl Tool for TaskFixture {
    fn descriptor(&self) -> ToolDescriptor {
        use mcpd_ipc::TaskSupport::{Forbidden, Optional, Required};
        let (name, description, schema, support) = match self.0 {
            TaskKind::Greet => (
                "greet",
                "Greets by name (always synchronous)",
                json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}),
                Forbidden,
            ),
            TaskKind::SlowCompute => (
                "slow_compute",
                "Works for a number of seconds (a task when the client supports tasks)",
                json!({"type": "object", "properties": {"seconds": {"type": "number", "minimum": 0}, "label": {"type": "string"}}}),
                Optional,
            ),
            TaskKind::FailingJob => (
                "failing_job",
                "A task that ends with a tool error",
                empty_schema(),
                Required,
            ),
            TaskKind::ProtocolErrorJob => (
                "protocol_error_job",
                "A task that ends with a protocol error",
                empty_schema(),
                Required,
            ),
            TaskKind::ConfirmDelete => (
                "confirm_delete",
                "A task that asks for confirmation before it finishes",
                json!({"type": "object", "properties": {"filename": {"type": "string"}}}),
                Required,
            ),
            TaskKind::MultiInput => (
                "multi_input",
                "A task that asks two questions at once",
                empty_schema(),
                Required,
            ),
            TaskKind::ToolWithTask => (
                "test_tool_with_task",
                "Asks for a name, then works as a task",
                empty_schema(),
                Required,
            ),
        };
        ToolDescriptor {
            name: name.into(),
            title: None,
            description: description.into(),
            input_schema_json: schema.to_string(),
            output_schema_json: None,
            annotations: ToolAnnotations::default(),
            access: ToolAccess::None,
            path_args: vec![],
            exec_args: None,
            client_capabilities: vec![],
            task_support: support,
        }
    }

    fn call(&self, ctx: &ToolContext, args: Value) -> Result<ToolResult, CallError> {
        let a = ctx.input_responses();
        Ok(match self.0 {
            TaskKind::Greet => text_result(format!(
                "Hello, {}!",
                args.get("name").and_then(Value::as_str).unwrap_or("world")
            )),
            TaskKind::SlowCompute => {
                let secs = args
                    .get("seconds")
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0)
                    .clamp(0.0, 3600.0);
                let label = args.get("label").and_then(Value::as_str).unwrap_or("job");
                let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
                while std::time::Instant::now() < until {
                    if ctx.is_cancelled() {
                        return Ok(error_result("cancelled"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                text_result(format!("Computed {label} in {secs} s"))
            }
            TaskKind::FailingJob => {
                std::thread::sleep(Duration::from_millis(1000));
                error_result("The job failed (as designed)")
            }
            TaskKind::ProtocolErrorJob => {
                std::thread::sleep(Duration::from_millis(200));
                return Err(CallError {
                    kind: mcpd_ipc::CallErrorKind::Internal,
                    message: "the job hit a protocol error (as designed)".into(),
                });
            }
            TaskKind::ConfirmDelete => {
                let file = args
                    .get("filename")
                    .and_then(Value::as_str)
                    .unwrap_or("the file");
                match accepted(&a, "confirm", "confirm").and_then(Value::as_bool) {
                    Some(true) => text_result(format!(
                        "Deleted {file} (pretend: this fixture touches nothing)"
                    )),
                    Some(false) => text_result(format!("Kept {file}")),
                    None => task_input_required(
                        json!({"confirm": elicit_bool(&format!("Delete {file}?"), "confirm")}),
                        None,
                    ),
                }
            }
            TaskKind::MultiInput => {
                // Any answer counts (the content's shape is the client's business).
                let answer = |k: &str| {
                    a.get(k).map(|v| {
                        v.get("content")
                            .and_then(|c| c.get("answer"))
                            .and_then(Value::as_str)
                            .map_or_else(|| v.to_string(), str::to_string)
                    })
                };
                let (first, second) = (answer("first"), answer("second"));
                if let (Some(f), Some(s)) = (&first, &second) {
                    text_result(format!("Answers: {f}, {s}"))
                } else {
                    let mut req = Map::new();
                    if first.is_none() {
                        req.insert(
                            "first".into(),
                            elicit_req("First question?", "answer", "string"),
                        );
                    }
                    if second.is_none() {
                        req.insert(
                            "second".into(),
                            elicit_req("Second question?", "answer", "string"),
                        );
                    }
                    task_input_required(Value::Object(req), None)
                }
            }
            TaskKind::ToolWithTask => {
                match accepted(&a, "user_name", "name").and_then(Value::as_str) {
                    // The input round comes first (before any task exists), then the work.
                    None => input_required(
                        json!({"user_name": elicit_req("What is your name?", "name", "string")}),
                        None,
                    ),
                    Some(name) => {
                        std::thread::sleep(Duration::from_millis(300));
                        text_result(format!("Task finished for {name}"))
                    }
                }
            }
        })
    }
}

fn register_tasks(r: &mut Registry) {
    for k in [
        TaskKind::Greet,
        TaskKind::SlowCompute,
        TaskKind::FailingJob,
        TaskKind::ProtocolErrorJob,
        TaskKind::ConfirmDelete,
        TaskKind::MultiInput,
        TaskKind::ToolWithTask,
    ] {
        r.register(TaskFixture(k));
    }
}
