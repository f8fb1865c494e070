//! Hand-written statements kept prepared on their connection.
//!
//! diesel never caches a raw `sql_query` (it cannot know whether the text was
//! built at run time), so every pass parsed and planned its hand-written
//! statements again: a `parse` and a fresh plan per statement per pass,
//! up to 0.8 ms each. [`Prepared`] vouches that a statement's text is a
//! constant, which lets the connection's statement cache keep it by its
//! text. Only for `&'static str` SQL: a text built with `format!` must never
//! be wrapped (the cache would grow with every variant).

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// A statement whose text is a constant: a `sql_query` with its binds, or
/// a DSL statement diesel itself would not cache (an `UPDATE … RETURNING`)
/// whose SQL does not depend on its values.
#[derive(Debug, Clone)]
pub(crate) struct Prepared<Q>(pub(crate) Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    // No type id: the cache is keyed by the statement's text (and bind types).
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    // `Untyped` for `sql_query`, the `RETURNING` columns' types for a DSL
    // statement.
    type SqlType = Q::SqlType;
}

#[cfg(test)]
mod tests {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    use dispatcher_testdb::TestDatabase;

    use super::*;
    use crate::{Database, PoolOptions};

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// Run three times on one connection, a wrapped statement is prepared
    /// once and reused.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_constant_statement_is_prepared_once() {
        let t = TestDatabase::new();
        let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
        let mut conn = db.conn().await.unwrap();
        const SQL: &str = "SELECT 41 + 1 AS answer";
        for _ in 0..3 {
            Prepared(diesel::sql_query(SQL))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        let prepared: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = 'SELECT 41 + 1 AS answer'",
        )
        .get_result(&mut *conn)
        .await
        .unwrap();
        assert_eq!(prepared.n, 1);
    }
}
