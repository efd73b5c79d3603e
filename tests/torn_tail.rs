//! Torn and corrupt logs: a cut anywhere inside the final record is recovered (all earlier
//! records kept); zeros or garbage at the tail too; a flipped byte in the middle, or damage
//! in an earlier segment, refuses to start naming the file and offset.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use stockd::wal::frame::{read_frame, Frame};
use stockd::wal::segment::HEADER_BYTES;

/// Start offsets of every frame in a segment.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = HEADER_BYTES;
    while let Frame::Valid { next, .. } = read_frame(bytes, at) {
        offsets.push(at);
        at = next;
    }
    assert_eq!(at, bytes.len(), "a clean segment is all frames");
    offsets
}

/// A data directory whose log holds: create T (on_hand 0), then restocks of 1, 2, ..., n.
async fn make_log(dir: &Path, n: u64, extra: &[&str]) -> PathBuf {
    let data = dir.join("original");
    let mut s = try_start_with(&data, extra).expect("start");
    s.product("T", 0).await;
    for q in 1..=n {
        let (st, _) = s
            .post("/v1/products/T/restock", serde_json::json!({"quantity": q}))
            .await;
        assert!(st.is_success());
    }
    assert!(s.terminate().success());
    data
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn on_hand_after(n: u64) -> u64 {
    n * (n + 1) / 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cut_inside_the_final_record_keeps_all_earlier_records() {
    let dir = tempfile::tempdir().unwrap();
    let n = 6;
    let original = make_log(dir.path(), n, &[]).await;
    let segment = segments(&original).pop().unwrap();
    let name = segment.file_name().unwrap().to_owned();
    let bytes = std::fs::read(&segment).unwrap();
    let last = *frame_offsets(&bytes).last().unwrap();
    let mut cuts = 0;
    for cut in last + 1..bytes.len() {
        let data = dir.path().join(format!("cut-{cut}"));
        copy_dir(&original, &data);
        std::fs::write(data.join(&name), &bytes[..cut]).unwrap();
        let s = try_start(&data).unwrap_or_else(|e| panic!("cut at {cut}: did not start: {e}"));
        let p = s.product_state("T").await;
        assert_eq!(
            p["on_hand"].as_u64(),
            Some(on_hand_after(n - 1)),
            "cut at {cut}"
        );
        assert_eq!(
            p["version"].as_u64(),
            Some(n),
            "cut at {cut}: the last restock is gone, the rest kept"
        );
        assert_eq!(
            std::fs::metadata(data.join(&name)).unwrap().len() as usize,
            last,
            "torn tail cut off"
        );
        drop(s);
        std::fs::remove_dir_all(&data).unwrap();
        cuts += 1;
    }
    assert!(cuts > 20, "the final record should be tens of bytes long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_and_garbage_at_the_tail_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let original = make_log(dir.path(), 3, &[]).await;
    let segment = segments(&original).pop().unwrap();
    let name = segment.file_name().unwrap().to_owned();
    let bytes = std::fs::read(&segment).unwrap();
    let garbage: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (label, tail) in [("zeros", vec![0u8; 4096]), ("garbage", garbage)] {
        let data = dir.path().join(label);
        copy_dir(&original, &data);
        let mut damaged = bytes.clone();
        damaged.extend_from_slice(&tail);
        std::fs::write(data.join(&name), &damaged).unwrap();
        let verify = run_cli(&["verify"], &data);
        assert!(
            verify.status.success(),
            "{label}: verify calls a torn tail recoverable"
        );
        assert!(
            String::from_utf8_lossy(&verify.stdout).contains("torn tail"),
            "{label}"
        );
        let s = try_start(&data).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(
            s.product_state("T").await["on_hand"].as_u64(),
            Some(on_hand_after(3)),
            "{label}"
        );
        assert_eq!(
            std::fs::metadata(data.join(&name)).unwrap().len() as usize,
            bytes.len(),
            "{label}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_middle_refuses_to_start_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let original = make_log(dir.path(), 6, &[]).await;
    let segment = segments(&original).pop().unwrap();
    let name = segment.file_name().unwrap().to_str().unwrap().to_string();
    let bytes = std::fs::read(&segment).unwrap();
    let offsets = frame_offsets(&bytes);
    // Payload middle, and the length field, of a record in the middle of the log.
    for (what, at, record) in [
        ("payload", offsets[3] + 20, offsets[3]),
        ("length", offsets[2] + 1, offsets[2]),
    ] {
        let data = dir.path().join(what);
        copy_dir(&original, &data);
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        std::fs::write(data.join(&name), &damaged).unwrap();
        let err = try_start(&data)
            .err()
            .unwrap_or_else(|| panic!("{what}: started on a corrupt log"));
        assert!(
            err.contains(&name) && err.contains(&format!("offset {record}")),
            "{what}: {err}"
        );
        let verify = run_cli(&["verify"], &data);
        assert!(!verify.status.success());
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert!(
            stderr.contains(&name) && stderr.contains(&format!("offset {record}")),
            "{what}: {stderr}"
        );
        assert_eq!(
            std::fs::read(data.join(&name)).unwrap(),
            damaged,
            "{what}: a refused log is left as it was"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_an_earlier_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let original = make_log(dir.path(), 20, &["--segment-size-bytes", "300"]).await;
    let files = segments(&original);
    assert!(files.len() >= 3, "small segments rotate: {files:?}");
    let first = files[0].file_name().unwrap().to_str().unwrap().to_string();
    let data = dir.path().join("damaged");
    copy_dir(&original, &data);
    let bytes = std::fs::read(data.join(&first)).unwrap();
    std::fs::write(data.join(&first), &bytes[..bytes.len() - 3]).unwrap();
    let err = try_start(&data).err().expect("must refuse");
    assert!(err.contains(&first) && err.contains("corrupt log"), "{err}");
    // The intact copy replays across every segment.
    let s = try_start(&original).unwrap();
    assert_eq!(
        s.product_state("T").await["on_hand"].as_u64(),
        Some(on_hand_after(20))
    );
    drop(s);
    let out = run_cli(&["verify"], &original);
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("21 records"), "{summary}");
}

#[test]
fn dump_writes_the_audit_trail_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = rt.block_on(make_log(dir.path(), 2, &[]));
    let out = run_cli(&["dump"], &data);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["event"], "product_put");
    assert_eq!(
        (
            lines[2]["event"].as_str(),
            lines[2]["data"]["quantity"].as_u64()
        ),
        (Some("restocked"), Some(2))
    );
    assert_eq!(lines[1]["actor"], "anonymous");
    let filtered = run_cli(&["dump", "--sku", "OTHER"], &data);
    assert!(filtered.status.success() && filtered.stdout.is_empty());
}

/// The writer keeps zeros written ahead of its records (so an fdatasync has no file-size
/// change to flush); a kill -9 leaves them, and the restart cuts them without calling it
/// damage; a clean stop leaves none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_written_ahead_are_cut_after_a_crash_and_left_by_no_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = start(&data);
    s.product("T", 0).await;
    for q in 1..=3u64 {
        s.post("/v1/products/T/restock", serde_json::json!({"quantity": q}))
            .await;
    }
    let segment = segments(&data).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    let mut end = HEADER_BYTES;
    while let Frame::Valid { next, .. } = read_frame(&bytes, end) {
        end = next;
    }
    assert!(bytes.len() > end, "no zeros written ahead of the records");
    assert!(bytes[end..].iter().all(|b| *b == 0));

    s.kill9();
    let mut s = start(&data);
    assert_eq!(s.product_state("T").await["on_hand"], on_hand_after(3));
    assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, end);
    assert!(
        !s.stderr().contains("WARN"),
        "zeros after the last record are not damage: {}",
        s.stderr()
    );
    s.post("/v1/products/T/restock", serde_json::json!({"quantity": 4}))
        .await;
    assert!(s.terminate().success());
    let bytes = std::fs::read(&segment).unwrap();
    frame_offsets(&bytes); // a cleanly stopped segment is all frames
}
