//! The write-ahead log: the only durable state, and the audit trail.
//!
//! Records are postcard-encoded, framed with length + CRC32C, appended to numbered segment
//! files by a single writer thread that batches everything waiting into one write and one
//! `fdatasync` (group commit). Replay reads the segments back in order at start.

pub mod frame;
pub mod lock;
pub mod record;
pub mod replay;
pub mod segment;
pub mod storage;
pub mod writer;

pub use record::{Event, Record};
pub use writer::{AppendError, Durability, Log, LogConfig, Lsn};

use std::path::PathBuf;

/// Log failures that stop the server (or `verify`) with a message naming where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "corrupt log: {path} at byte offset {offset}: {reason}. The log cannot be trusted past this \
         point; restore the data directory from a backup or move the damaged segment aside \
         after inspecting it with `stockd verify`"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "data directory {} is in use by another stockd{}: two servers on one log would corrupt \
         it. Stop the other server first, or give this one its own --data-dir",
        .dir.display(),
        .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse {
        dir: PathBuf,
        /// The holder's pid, as it wrote it into the lock file.
        holder: Option<u32>,
    },
}

impl WalError {
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WalError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}
