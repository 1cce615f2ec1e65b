//! Test helper: a zbus client of mcpd's D-Bus transport, so a test can call it as another uid
//! (started with `Command::uid`) and hold one connection (one unique name, one session) for as
//! long as it likes. Usage: `mcpd-dbus-client ADDRESS [NAME]` (NAME default org.mcpd.Server1).
//!
//! Prints JSON lines on stdout: first `{"unique_name": ":1.N"}`; then, for each line read on
//! stdin (a JSON-RPC message), a response (no `method`) goes out with `Reply` and any other
//! message with `Call`, one after the other (a line starting with `&` goes out without waiting
//! for its own answer: the next line is read at once; one starting with `!` goes out with `Reply`
//! whatever it is), and the outcome is
//! printed as `{"call": MESSAGE, "response": TEXT}` or `{"call": MESSAGE, "error": "NAME: TEXT"}`
//! (`"reply"` instead of `"call"` for `Reply`); every `Message` signal received is printed as
//! `{"signal": TEXT, "destination": NAME}`. On stdin EOF the connection is closed and the
//! process exits 0; a failed connection exits 2 with the error on stderr.
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

const PATH: &str = "/org/mcpd/Server1";
const IFACE: &str = "org.mcpd.Server1";

type Out = Arc<Mutex<tokio::io::Stdout>>;

async fn print(out: &Out, v: Value) {
    let mut o = out.lock().await;
    let mut line = v.to_string();
    line.push('\n');
    let _ = o.write_all(line.as_bytes()).await;
    let _ = o.flush().await;
}

fn describe(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, text, _) => {
            format!("{}: {}", name.as_str(), text.as_deref().unwrap_or(""))
        }
        other => format!("other: {other}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(address) = args.next() else {
        eprintln!("usage: mcpd-dbus-client ADDRESS [NAME]");
        std::process::exit(2);
    };
    let dest = args.next().unwrap_or_else(|| "org.mcpd.Server1".into());
    let conn = match zbus::connection::Builder::address(address.as_str()) {
        Ok(b) => b.build().await,
        Err(e) => Err(e),
    };
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect {address}: {e}");
            std::process::exit(2);
        }
    };
    let out: Out = Arc::new(Mutex::new(tokio::io::stdout()));
    let me = conn
        .unique_name()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut stream = zbus::MessageStream::from(&conn);
    let signals = {
        let out = out.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let h = m.header();
                if h.message_type() != zbus::message::Type::Signal
                    || h.member().map(|m| m.as_str()) != Some("Message")
                    || h.interface().map(|i| i.as_str()) != Some(IFACE)
                {
                    continue;
                }
                let dest = h.destination().map(|d| d.to_string());
                if let Ok(text) = m.body().deserialize::<String>() {
                    print(&out, json!({"signal": text, "destination": dest})).await;
                }
            }
        })
    };
    print(&out, json!({"unique_name": me})).await;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut calls = tokio::task::JoinSet::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let (line, overlap) = match line.strip_prefix('&') {
            Some(l) => (l.to_string(), true),
            None => (line, false),
        };
        let (line, force_reply) = match line.strip_prefix('!') {
            Some(l) => (l.to_string(), true),
            None => (line, false),
        };
        let msg: Value = serde_json::from_str(&line).unwrap_or(Value::String(line.clone()));
        let is_reply = force_reply
            || (msg.get("method").is_none()
                && (msg.get("result").is_some() || msg.get("error").is_some()));
        let (conn, out, dest) = (conn.clone(), out.clone(), dest.clone());
        let call = async move {
            let method = if is_reply { "Reply" } else { "Call" };
            let key = if is_reply { "reply" } else { "call" };
            let r = conn
                .call_method(
                    Some(dest.as_str()),
                    PATH,
                    Some(IFACE),
                    method,
                    &(line.as_str(),),
                )
                .await;
            let v = match r {
                Ok(_) if is_reply => json!({key: msg, "response": ""}),
                Ok(m) => {
                    json!({key: msg, "response": m.body().deserialize::<String>().unwrap_or_default()})
                }
                Err(e) => json!({key: msg, "error": describe(&e)}),
            };
            print(&out, v).await;
        };
        if overlap {
            calls.spawn(call);
        } else {
            call.await;
        }
    }
    while calls.join_next().await.is_some() {}
    signals.abort();
    drop(conn);
    std::process::exit(0);
}
