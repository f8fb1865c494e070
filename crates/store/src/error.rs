//! Mapping of diesel and pool errors onto the port's [`StoreError`].

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use dispatcher_core::ports::StoreError;

pub(crate) fn query(e: DieselError) -> StoreError {
    if is_connection_lost(&e) {
        StoreError::Unavailable(Box::new(e))
    } else if matches!(
        e,
        DieselError::DeserializationError(_) | DieselError::SerializationError(_)
    ) {
        // diesel names only the field; the cause (say, an unknown state) is
        // what an operator needs to see in the log line.
        StoreError::Query(Box::new(WithCauses(e)))
    } else {
        StoreError::Query(Box::new(e))
    }
}

/// A diesel error displayed with its chain of causes.
#[derive(Debug)]
struct WithCauses(DieselError);

impl std::fmt::Display for WithCauses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(&self.0);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl std::error::Error for WithCauses {}

/// Errors that certainly mean the connection is gone. diesel-async reports
/// driver errors without an SQLSTATE (socket closed, I/O, background task
/// ended) as `UnableToSendCommand`. A server's FATAL message (say, after
/// `pg_terminate_backend`) carries a code and looks like any other error:
/// the leader session probes its connection for those.
pub(crate) fn is_connection_lost(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _
        ) | DieselError::BrokenTransactionManager
    )
}

pub(crate) fn pool(e: diesel_async::pooled_connection::deadpool::PoolError) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// Text as PostgreSQL `text` accepts it: no NUL characters (an EventListener
/// or proxy error body can carry them, and one unwritable outcome must not
/// stop the engine).
pub(crate) fn storable(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn deserialization_errors_name_their_cause() {
        let e = super::DieselError::DeserializationError("unknown DispatchState 'x'".into());
        let shown = super::query(e).to_string();
        assert!(shown.contains("unknown DispatchState 'x'"), "{shown}");
    }

    #[test]
    fn nul_is_replaced() {
        assert_eq!(super::storable("a\0b"), "a\u{FFFD}b");
    }
}
