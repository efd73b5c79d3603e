//! The `stockd` binary: parse the command line and hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stockd::config::ServerConfig;

/// mimalloc: measured faster than glibc malloc for this server's many small, short-lived
/// allocations (see README, Benchmarks), called through [`stockd::memory::Allocator`].
#[global_allocator]
static ALLOCATOR: stockd::memory::Allocator = stockd::memory::Allocator;

#[derive(Parser)]
#[command(
    name = "stockd",
    version,
    about = "Stock server for flash-sale checkout"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Options of `serve`, also accepted without the subcommand.
    #[command(flatten)]
    serve: ServerConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServerConfig),
    /// Check every record of the log without starting the server.
    Verify {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
    /// Write the audit trail as JSON lines.
    Dump {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Only records that touch this SKU.
        #[arg(long)]
        sku: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    stockd::memory::prefer_small_pages();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(config)) => serve(config),
        Some(Command::Verify { data_dir }) => match stockd::cli::verify(&data_dir) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("verify failed: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Dump { data_dir, sku }) => {
            match stockd::cli::dump(&data_dir, sku.as_deref(), &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dump failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: ServerConfig) -> ExitCode {
    let (runtime, workers, cores) = match stockd::server::runtime(config.worker_threads) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("stockd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!("runtime: {workers} thread(s) on {cores} cores (one thread is a single event loop; --worker-threads to change)");
    match runtime.block_on(stockd::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stockd: {e}");
            ExitCode::FAILURE
        }
    }
}
