//! `ecs-emulator`: the local Volcengine ECS endpoint as a process (see the library docs).
//! The first stdout line is "emulator listening on http://ADDR"; logs go to stderr.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "ecs-emulator",
    version,
    about = "A local Volcengine ECS OpenAPI endpoint for tests and demos"
)]
struct Cli {
    #[command(flatten)]
    args: ecs_emulator::EmulatorArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match ecs_emulator::run(Cli::parse().args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: emulator: {e}");
            ExitCode::FAILURE
        }
    }
}
