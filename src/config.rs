//! Configuration: every capacity is explicit, with units in the name. Defaults are embedded so
//! `stockd` runs with no arguments; each can be set by flag or `STOCKD_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, clap::Args)]
pub struct EngineConfig {
    /// Directory of the log segments.
    #[arg(long, env = "STOCKD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// A log segment is closed and the next one started at this size.
    #[arg(long, env = "STOCKD_SEGMENT_SIZE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub segment_size_bytes: u64,
    /// Records that may wait for the log writer; beyond it writes answer 503.
    #[arg(long, env = "STOCKD_LOG_CHANNEL_CAPACITY", default_value_t = 65_536)]
    pub log_channel_capacity: usize,
    /// Bytes that may wait for the log writer, and so the bound of one group-commit batch
    /// (one write, one fdatasync); beyond it writes answer 503.
    #[arg(long, env = "STOCKD_LOG_BATCH_MAX_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub log_batch_max_bytes: usize,
    /// Messages a product actor's mailbox holds; a full mailbox answers 503 overloaded.
    #[arg(long, env = "STOCKD_MAILBOX_CAPACITY", default_value_t = 4096)]
    pub mailbox_capacity: usize,
    /// Requests one actor may park while multi-item operations settle.
    #[arg(long, env = "STOCKD_DEFERRED_CAPACITY", default_value_t = 4096)]
    pub deferred_capacity: usize,
    /// A product actor idle this long with nothing held passivates into a few bytes and is
    /// revived by its next request (0: never).
    #[arg(long, env = "STOCKD_PASSIVATE_AFTER_MS", default_value_t = 30_000)]
    pub passivate_after_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("data"),
            segment_size_bytes: 64 * 1024 * 1024,
            log_channel_capacity: 65_536,
            log_batch_max_bytes: 4 * 1024 * 1024,
            mailbox_capacity: 4096,
            deferred_capacity: 4096,
            passivate_after_ms: 30_000,
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct ServerConfig {
    /// Address to listen on. Without tokens configured only loopback addresses are allowed.
    #[arg(long, env = "STOCKD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Requests being served at once; beyond it the server answers 503 with Retry-After.
    #[arg(long, env = "STOCKD_MAX_CONCURRENT_REQUESTS", default_value_t = 8192)]
    pub max_concurrent_requests: usize,
    /// Time allowed to receive a request body, and to answer a read. Mutations are not cut
    /// short once received: a timeout answer would claim nothing changed about a change that
    /// may still commit.
    #[arg(long, env = "STOCKD_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Client connections open at once; a connection past it is answered 503 with
    /// Retry-After and closed. The file descriptor limit is raised to fit it where allowed.
    #[arg(long, env = "STOCKD_MAX_CONNECTIONS", default_value_t = 16_384,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Time a client has to send a request's head (line and headers), counted from when the
    /// connection opened or its previous answer was sent; a connection idle this long between
    /// requests is closed too.
    #[arg(long, env = "STOCKD_HEADER_READ_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=3_600_000))]
    pub header_read_timeout_ms: u64,
    /// Async runtime threads. 1 runs one event-loop thread (beside the log writer's own);
    /// 0 picks: one thread on machines of up to 2 cores, one per core above that. At most 1024.
    #[arg(long, env = "STOCKD_WORKER_THREADS", default_value_t = 0,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1024))]
    pub worker_threads: usize,
    /// File of tokens, one `name role secret` a line (roles: admin, checkout, read). Tokens may
    /// also be given as STOCKD_TOKENS="name:role:secret,...". None: no auth, loopback only.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineConfig,
}
