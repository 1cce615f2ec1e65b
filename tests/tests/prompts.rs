//! Operator-defined prompts from the configuration: listed only to the clients and roles
//! named, rendered with their arguments, completed from their suggested values.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcpd_e2e::Server;
use serde_json::json;

fn start(cfg: &str) -> (tempfile::TempDir, Server) {
    let top = tempfile::tempdir().unwrap();
    let path = top.path().join("mcpd.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut s = Server::start(&["--config", path.to_str().unwrap()]);
    s.initialize();
    (top, s)
}

const CFG: &str = r#"
[stdio]
client = "dev"
[clients.dev]
roles = ["writers"]
[clients.other]
[roles.writers]

[prompts.review]
description = "Review a change"
roles = ["writers"]
arguments = [
  { name = "language", description = "Programming language", required = true, values = ["rust", "python", "ruby"] },
  { name = "focus", description = "What to look at" },
]
messages = [
  { role = "user", text = "Review this {language} change. Focus: {focus}. Literal braces: {{x}}." },
  { role = "assistant", text = "Send the diff." },
]

[prompts.secret_plan]
description = "Only for other"
clients = ["other"]
messages = [{ role = "user", text = "hidden" }]
"#;

#[test]
fn operator_prompts_are_listed_rendered_and_completed() {
    let (_t, mut s) = start(CFG);
    let list = s.result("prompts/list", json!({}));
    let names: Vec<&str> = list["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["review"],
        "deny by default: secret_plan is not dev's"
    );
    assert_eq!(list["prompts"][0]["arguments"][0]["required"], true);
    let got = s.result(
        "prompts/get",
        json!({"name": "review", "arguments": {"language": "rust", "focus": "unsafe blocks"}}),
    );
    assert_eq!(
        got["messages"][0]["content"]["text"],
        "Review this rust change. Focus: unsafe blocks. Literal braces: {x}."
    );
    assert_eq!(got["messages"][1]["role"], "assistant");
    let missing = s.request("prompts/get", json!({"name": "review", "arguments": {}}));
    assert_eq!(missing["error"]["code"], -32602);
    assert!(missing["error"]["message"]
        .as_str()
        .unwrap()
        .contains("language"));
    let hidden = s.request("prompts/get", json!({"name": "secret_plan"}));
    assert_eq!(hidden["error"]["code"], -32602);
    let c = s.result(
        "completion/complete",
        json!({"ref": {"type": "ref/prompt", "name": "review"}, "argument": {"name": "language", "value": "r"}}),
    );
    assert_eq!(c["completion"]["values"], json!(["rust", "ruby"]));
}

#[test]
fn prompt_config_errors_are_located() {
    let top = tempfile::tempdir().unwrap();
    let path = top.path().join("bad.toml");
    std::fs::write(
        &path,
        "[clients.c]\n[prompts.p]\ndescription = \"d\"\nclients = [\"c\"]\nmessages = [{ role = \"user\", text = \"{nope}\" }]\n",
    )
    .unwrap();
    let out = std::process::Command::new(mcpd_e2e::mcpd_bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:") && err.contains("placeholder {nope}"),
        "{err}"
    );
}
