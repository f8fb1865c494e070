//! Mapping of diesel and pool errors onto the port's [`StoreError`].

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use dispatcher_core::ports::StoreError;

pub(crate) fn query(e: DieselError) -> StoreError {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
        | DieselError::BrokenTransactionManager => StoreError::Unavailable(Box::new(e)),
        other => StoreError::Query(Box::new(other)),
    }
}

pub(crate) fn pool(e: diesel_async::pooled_connection::deadpool::PoolError) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// Errors of the leader's own connection: if it is gone, so is the lock.
pub(crate) fn leader(e: DieselError) -> StoreError {
    match query(e) {
        StoreError::Unavailable(_) => StoreError::LostLeadership,
        other => other,
    }
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
    fn nul_is_replaced() {
        assert_eq!(super::storable("a\0b"), "a\u{FFFD}b");
    }
}
