//! One server per data directory: a second server started on a directory in use is refused
//! with a message naming the holder, and touches nothing in the log (without the lock it
//! would cut the first server's zeros ahead as a "torn tail" and write at its own offsets).
//! The lock is the kernel's, so it dies with its process, `kill -9` included.

mod common;

use common::*;
use reqwest::StatusCode;

fn log_bytes(data: &std::path::Path) -> Vec<Vec<u8>> {
    segments(data)
        .iter()
        .map(|p| std::fs::read(p).expect("read segment"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_directory_in_use_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = start(&data);
    first.product("L", 10).await;
    let (status, body) = first.reserve(&[("L", 2)], 600).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let before = log_bytes(&data);

    let refused = match try_start(&data) {
        Err(stderr) => stderr,
        Ok(second) => panic!("a second server started on {}", second.data_dir.display()),
    };
    assert!(refused.contains("in use by another stockd"), "{refused}");
    assert!(
        refused.contains(&format!("(pid {})", first.pid())),
        "{refused}"
    );
    let after = log_bytes(&data);
    assert_eq!(before.len(), after.len(), "segments before and after");
    for (b, a) in before.iter().zip(&after) {
        assert!(
            b == a,
            "the refused start changed the log ({} bytes before, {} after)",
            b.len(),
            a.len()
        );
    }

    // The first server goes on as before.
    let (status, body) = first.reserve(&[("L", 3)], 600).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Its lock goes with it, however it ends: a server starts after `kill -9` and has both.
    first.kill9();
    let next = start(&data);
    let product = next.product_state("L").await;
    assert_eq!(product["reserved"], 5, "{product}");
    assert_eq!(product["available"], 5, "{product}");
}
