//! Log capture for the engine's tests, shared by both runs of them
//! (`tests` and `incremental_tests`): one global subscriber per test binary.

thread_local! {
    /// This thread's log output (see [`logged`]).
    static LOG_LINES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes into the calling thread's [`LOG_LINES`].
struct ThreadSink;

impl std::io::Write for ThreadSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG_LINES.with(|lines| lines.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON log lines written while `f` runs (on this thread).
///
/// One global subscriber for the whole test binary, writing per thread: a
/// scoped subscriber (`with_default`) raced tracing's per-callsite interest
/// cache when other tests ran beside it, and lost lines now and then.
pub(super) fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| ThreadSink)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    LOG_LINES.with(|lines| lines.borrow_mut().clear());
    f();
    let bytes = LOG_LINES.with(|lines| std::mem::take(&mut *lines.borrow_mut()));
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
