//! `rmcp-bench-server`: one tool, `read_text_file {path}`, answered in-process by the official
//! Rust MCP SDK (rmcp), over Streamable HTTP (`--http ADDR`, session era with rmcp's stateful
//! sessions, TCP_NODELAY) or stdio (`--stdio`). The comparator of bench/http_bench.py: what an
//! MCP server costs without a broker, a worker process or a sandbox.
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_handler, tool_router, ErrorData, ServerHandler, ServiceExt};
use serde::Deserialize;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ReadArgs {
    /// The file to read.
    path: String,
}

#[derive(Clone)]
struct Files {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Files {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Read a text file")]
    async fn read_text_file(
        &self,
        Parameters(a): Parameters<ReadArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        match tokio::fs::read_to_string(&a.path).await {
            Ok(text) => Ok(CallToolResult::success(vec![ContentBlock::text(text)])),
            Err(e) => Err(ErrorData::invalid_params(e.to_string(), None)),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Files {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--stdio") => {
            let running = Files::new().serve(rmcp::transport::stdio()).await?;
            running.waiting().await?;
        }
        Some("--http") => {
            let addr = args.get(1).ok_or("--http ADDR")?;
            let mut cfg = StreamableHttpServerConfig::default();
            cfg.legacy_session_mode = true;
            cfg.sse_keep_alive = None;
            let service = StreamableHttpService::new(
                || Ok(Files::new()),
                Arc::new(LocalSessionManager::default()),
                cfg,
            );
            let router = axum::Router::new().nest_service("/mcp", service);
            let listener = tokio::net::TcpListener::bind(addr).await?;
            eprintln!("listening on http://{}/mcp", listener.local_addr()?);
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
        _ => return Err("usage: rmcp-bench-server --http ADDR | --stdio".into()),
    }
    Ok(())
}
