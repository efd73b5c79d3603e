//! `stockd verify` and `stockd dump`: read the log without starting the server.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::domain::Sku;
use crate::ledger::views::rfc3339_ms;
use crate::ledger::Ledger;
use crate::wal::replay::{replay, Mode};
use crate::wal::{Event, WalError};

/// Checks every record (checksums, decoding, and that each applies to the state before it),
/// then the invariants. Prints a summary; `Err` names file and offset of any corruption.
pub fn verify(data_dir: &Path) -> Result<String, String> {
    if !data_dir.is_dir() {
        return Err(format!("{} is not a directory", data_dir.display()));
    }
    let (ledger, outcome) = Ledger::replay(data_dir, Mode::ReadOnly).map_err(|e| e.to_string())?;
    ledger
        .check_invariants()
        .map_err(|e| format!("the log replays to a state that breaks an invariant: {e}"))?;
    let mut summary = format!(
        "ok: {} segments, {} records, {} bytes, {} products, {} active reservations; replayed in {:.2} s ({} records/s)",
        outcome.segments,
        outcome.records,
        outcome.bytes,
        ledger.product_count(),
        ledger.active_reservations(),
        outcome.elapsed_ms as f64 / 1000.0,
        outcome.records_per_second()
    );
    if let Some(torn) = outcome.torn_tail {
        summary.push_str(&format!(
            "\nnote: torn tail in {} at offset {} ({} bytes, {}): the server cuts it at start; nothing acknowledged is lost",
            torn.path.display(),
            torn.offset,
            torn.dropped_bytes,
            torn.reason
        ));
    }
    Ok(summary)
}

/// Writes the audit trail as JSON lines: one line per record, with its position.
pub fn dump(data_dir: &Path, sku: Option<&str>, out: &mut dyn Write) -> Result<(), String> {
    let filter = match sku {
        Some(s) => Some(Sku::parse(s).map_err(|e| format!("--sku: {e}"))?),
        None => None,
    };
    let mut ledger = Ledger::new();
    let mut seq = 0u64;
    let mut write_error: Option<std::io::Error> = None;
    let result = replay(data_dir, Mode::ReadOnly, |record, position| {
        seq += 1;
        let touches = match &filter {
            None => true,
            Some(sku) => touched_skus(&ledger, &record.event)
                .iter()
                .any(|s| s == sku),
        };
        // The line is built before the record is applied (which consumes it).
        let line = (touches && write_error.is_none()).then(|| {
            let mut event = serde_json::to_value(&record.event).unwrap_or_default();
            let data = event
                .as_object_mut()
                .and_then(|o| o.values_mut().next())
                .map(std::mem::take)
                .unwrap_or_default();
            json!({
                "record": seq,
                "segment": position.path.file_name().and_then(|n| n.to_str()),
                "offset": position.offset,
                "at": rfc3339_ms(record.at_ms),
                "actor": record.actor,
                "op_id": record.op_id,
                "event": record.event.kind(),
                "data": data,
            })
        });
        ledger.apply(record)?;
        if let Some(line) = line {
            if let Err(e) = writeln!(out, "{line}") {
                write_error = Some(e);
            }
        }
        Ok(())
    });
    if let Some(e) = write_error {
        return Err(format!("cannot write output: {e}"));
    }
    result.map(|_| ()).map_err(|e: WalError| e.to_string())
}

fn touched_skus(ledger: &Ledger, event: &Event) -> Vec<Sku> {
    match event {
        Event::ProductPut { sku, .. }
        | Event::Restocked { sku, .. }
        | Event::Adjusted { sku, .. }
        | Event::Returned { sku, .. } => vec![sku.clone()],
        Event::Sold { items, .. } | Event::Reserved { items, .. } => {
            items.iter().map(|i| i.sku.clone()).collect()
        }
        Event::Completed { reservation_id, .. }
        | Event::Released { reservation_id, .. }
        | Event::Extended { reservation_id, .. } => ledger
            .reservation(reservation_id)
            .map(|r| r.held().map(|(sku, _)| sku.clone()).collect())
            .unwrap_or_default(),
    }
}
