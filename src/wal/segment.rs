//! Segment files: `NNNNNNNNNNNNNNNN.log` in the data directory, each starting with a 16-byte
//! header (magic, format version) so a stray or foreign file is refused, not misread.

use std::path::{Path, PathBuf};

use super::storage::{Disk, SegmentFile, Storage};

use super::WalError;

pub const MAGIC: &[u8; 8] = b"STOCKDLG";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 16;

pub fn header() -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Checks a segment's header; `Err` carries the reason.
pub fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!(
            "header is {} bytes, expected {HEADER_BYTES}",
            bytes.len()
        ));
    }
    if &bytes[0..8] != MAGIC {
        return Err("bad magic: not a stockd log segment".into());
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "segment format version {version}, this build reads version {FORMAT_VERSION}"
        ));
    }
    // Reserved for later versions; anything but zeros here is damage, not data to ignore.
    if bytes[12..HEADER_BYTES] != [0u8; 4] {
        return Err("reserved header bytes are not zero".into());
    }
    Ok(())
}

pub fn file_name(index: u64) -> String {
    format!("{index:016}.log")
}

/// Segments in the directory, in index order. Other files are ignored.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| WalError::io("cannot read data directory", dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("cannot read data directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() != 16 {
            continue;
        }
        if let Ok(index) = stem.parse::<u64>() {
            segments.push((index, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Creates a new segment with its header, syncs it and the directory (so the new name
/// itself survives a crash), and returns it open for writing.
pub fn create(
    storage: &dyn Storage,
    dir: &Path,
    index: u64,
) -> Result<(Box<dyn SegmentFile>, PathBuf), WalError> {
    let path = dir.join(file_name(index));
    let mut file = storage
        .create(&path)
        .map_err(|e| WalError::io("cannot create log segment", &path, e))?;
    file.write_all_at(&header(), 0)
        .map_err(|e| WalError::io("cannot write log segment header", &path, e))?;
    file.sync_data()
        .map_err(|e| WalError::io("cannot fsync log segment", &path, e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("cannot fsync data directory", dir, e))?;
    Ok((file, path))
}

pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    Disk.sync_dir(dir)
        .map_err(|e| WalError::io("cannot fsync data directory", dir, e))
}
