//! The `stockd` binary: parse the command line and hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stockd::config::ServerConfig;

/// mimalloc: measured faster than glibc malloc for this server's many small, short-lived
/// allocations (see README, Benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Machines with up to this many cores get a single-threaded event loop by default.
const SINGLE_LOOP_MAX_CORES: usize = 2;

fn serve(config: ServerConfig) -> ExitCode {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match config.worker_threads {
        0 if cores <= SINGLE_LOOP_MAX_CORES => 1,
        0 => cores,
        n => n,
    };
    // One worker: a current-thread runtime, so every connection and actor shares one core's
    // caches and no task is stolen or woken across cores; the log writer has a thread of its
    // own anyway. Measured on 2 cores: faster up to a few hundred connections, slower beyond
    // (README, "Runtime threads").
    tracing::info!("runtime: {workers} thread(s) on {cores} cores, one being a single event loop (--worker-threads to change)");
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stockd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(stockd::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stockd: {e}");
            ExitCode::FAILURE
        }
    }
}
