//! The `uniapi` binary: command line, configuration loading, logging and wiring.

mod demo;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use uniapi_core::config::{Config, ProcessEnv};
use uniapi_core::server::{Gateway, local_addr, shutdown_signal};

/// mimalloc instead of glibc's allocator: callgrind put malloc/free at ~18% of the instructions of a
/// relayed request, and glibc's per-thread arenas hold on to freed memory (RSS).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "uniapi",
    version,
    about = "A unified AI API gateway: one API and one key in front of many providers."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML configuration file (product.md §3); every key can also be set as UNIAPI_<SECTION>__<KEY>.
        #[arg(long, short)]
        config: Option<String>,
        /// Start an in-process sandbox upstream and a demo user and key: the whole API works offline.
        #[arg(long)]
        demo: bool,
        /// Listen address (overrides server.listen); port 0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the sandbox upstream on its own: a deterministic simulation of the OpenAI API.
    Sandbox {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// Accepted upstream key (repeatable).
        #[arg(long = "key", default_value = "sk-sandbox")]
        keys: Vec<String>,
        /// Delay before every response head, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Content chunks in a streamed answer.
        #[arg(long, default_value_t = 8)]
        stream_chunks: usize,
        /// Delay between streamed chunks, in milliseconds.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("UNIAPI_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,hyper=warn,reqwest=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve {
            config,
            demo,
            listen,
        } => serve(config, demo, listen).await,
        Command::Sandbox {
            listen,
            keys,
            latency_ms,
            stream_chunks,
            chunk_delay_ms,
        } => {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let config = uniapi_sandbox::SandboxConfig {
                keys,
                latency_ms,
                stream_chunks,
                chunk_delay_ms,
                ..Default::default()
            };
            println!(
                "uniapi sandbox listening on http://{}",
                local_addr(&listener)
            );
            tokio::select! {
                result = uniapi_sandbox::serve(listener, config) => result.context("sandbox server failed")?,
                _ = shutdown_signal() => {}
            }
            Ok(())
        }
    }
}

async fn serve(
    config_path: Option<String>,
    demo: bool,
    listen: Option<String>,
) -> anyhow::Result<()> {
    let mut config = match Config::load(config_path.as_deref(), &ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("uniapi: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    if let Some(listen) = listen {
        listen
            .parse::<SocketAddr>()
            .with_context(|| format!("--listen {listen} is not an address"))?;
        config.server.listen = listen;
    }
    let demo_setup = if demo {
        Some(demo::prepare(&mut config).await?)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(config.listen_addr())
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = local_addr(&listener);
    let gateway = Gateway::start(config)
        .await
        .context("starting the gateway failed")?;
    println!(
        "uniapi {} listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    for line in &gateway.announcements {
        println!("{line}");
    }
    if let Some(setup) = demo_setup {
        demo::announce(&setup, addr);
    }
    gateway
        .serve(listener, shutdown_signal())
        .await
        .context("server failed")?;
    println!("uniapi stopped");
    Ok(())
}
