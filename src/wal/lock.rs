//! One server per data directory: an exclusive lock on `<data dir>/LOCK`, taken before replay
//! and held while the log may be written.
//!
//! Why: a second server started on a directory in use (a deploy that starts the new process
//! before the old one stops, a copy-pasted unit file) would take the first one's zeros ahead
//! of its records for a torn tail and cut them, then both would append at offsets of their
//! own: acknowledged records overwritten, a log that no longer replays.
//!
//! The lock is `flock` (std's `File::try_lock`), not the file's existence: the kernel drops
//! it when the process ends however it ends, `kill -9` included, so a crash never leaves a
//! stale lock to remove by hand. The holder writes its pid into the file so that a refused
//! start can name it. `verify` and `dump` only read, and take no lock.
//!
//! Within one process (tests, benches, an embedding program) an engine can be dropped and
//! the directory opened again; the dropped engine's log thread lets go of the lock when it
//! has finished, shortly after. So a holder with this process's own pid is waited for, up to
//! [`OWN_HOLDER_WAIT_MS`]; another process is refused at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

use super::WalError;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// How long an open waits for this same process's previous holder (a log thread closing).
pub const OWN_HOLDER_WAIT_MS: u64 = 10_000;
/// Between looks at the lock while waiting for this process's previous holder.
const OWN_HOLDER_POLL_MS: u64 = 5;

/// Held for as long as the directory's log may be written; dropping it unlocks.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Locks `dir` for this process, or says who holds it.
pub fn lock(dir: &Path) -> Result<DirLock, WalError> {
    lock_waiting(dir, OWN_HOLDER_WAIT_MS)
}

/// [`lock`], waiting up to `own_holder_wait_ms` for a holder in this process.
fn lock_waiting(dir: &Path, own_holder_wait_ms: u64) -> Result<DirLock, WalError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| WalError::io("cannot open the data directory's lock file", &path, e))?;
    let pid = std::process::id();
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let holder: Option<u32> = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                let waited_ms = started.elapsed().as_millis();
                if holder != Some(pid) || waited_ms >= u128::from(own_holder_wait_ms) {
                    return Err(WalError::InUse {
                        dir: dir.to_path_buf(),
                        holder,
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(OWN_HOLDER_POLL_MS));
            }
            Err(TryLockError::Error(e)) => {
                return Err(WalError::io("cannot lock the data directory at", &path, e));
            }
        }
    }
    // Only informational (the lock is the flock), so a failure here does not stop the start.
    if let Err(e) = file.set_len(0).and_then(|()| writeln!(file, "{pid}")) {
        tracing::warn!("could not write the pid into {}: {e}", path.display());
    }
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_held_in_this_process_is_waited_for_then_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock(dir.path()).expect("the first lock");
        // Held all along: refused once the wait is over, naming this process.
        match lock_waiting(dir.path(), 200) {
            Err(WalError::InUse { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("a second lock while the first is held: {other:?}"),
        }
        // Let go of during the wait (as a closing log thread does): the second lock gets it,
        // which it could not without waiting, since the first is still held when it starts.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(first);
        });
        lock(dir.path()).expect("locked once the first is dropped");
        releaser.join().expect("releaser");
    }
}
