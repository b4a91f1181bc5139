//! Runs the node agent standalone, as `kinit agent` will: `cargo run -p kinit-agent --example
//! agent -- --config FILE --kubeconfig FILE`. `RUST_LOG` sets the log filter.

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    agent: kinit_agent::AgentArgs,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kinit_agent=info".into()),
        )
        .init();
    if let Err(e) = kinit_agent::run(Cli::parse().agent).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
