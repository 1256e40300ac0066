//! What the library takes from the running process and shares between the
//! reader, the writer and the broker client: the clock and progress callbacks.

use std::time::{SystemTime, UNIX_EPOCH};

/// A progress callback: receives byte counts as work is done.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// The loader's clock in unix seconds (SPEC §3.1 `created`, `expires`; the
/// policy input's `time`). A clock before 1970 reads as 0, which no expiry
/// is before.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
