use std::process::ExitCode;

use clap::Parser;
use resources_ingester::{app, config::Config, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    telemetry::init(config.log_format);
    match app::run(config, CancellationToken::new()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("resources-ingester: {e:#}");
            ExitCode::FAILURE
        }
    }
}
