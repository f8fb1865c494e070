//! The domain vocabularies ([`DispatchState`], [`EventStatus`]) as SQL values.
//!
//! `dispatcher-core` knows nothing of diesel, so the store wraps its enums.
//! Writing uses the vocabulary's one spelling (`as_str`); reading parses it
//! back, and a spelling outside the vocabulary is a deserialization error
//! (surfacing as `StoreError::Query`), never a guess.

use std::io::Write;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use dispatcher_core::domain::{DispatchState, EventStatus};

use crate::schema::sql_types;

/// A [`DispatchState`] bound to or read from `dispatches.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::DispatchState)]
pub(crate) struct DbDispatchState(pub(crate) DispatchState);

/// An [`EventStatus`] bound to or read from `webhook_events.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::EventStatus)]
pub(crate) struct DbEventStatus(pub(crate) EventStatus);

impl ToSql<sql_types::DispatchState, Pg> for DbDispatchState {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.0.as_str().as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<sql_types::DispatchState, Pg> for DbDispatchState {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(Self(std::str::from_utf8(bytes.as_bytes())?.parse()?))
    }
}

impl ToSql<sql_types::EventStatus, Pg> for DbEventStatus {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.0.as_str().as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<sql_types::EventStatus, Pg> for DbEventStatus {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(Self(std::str::from_utf8(bytes.as_bytes())?.parse()?))
    }
}

impl From<DispatchState> for DbDispatchState {
    fn from(state: DispatchState) -> Self {
        Self(state)
    }
}

impl From<EventStatus> for DbEventStatus {
    fn from(status: EventStatus) -> Self {
        Self(status)
    }
}

#[cfg(test)]
mod tests {
    use diesel::prelude::*;
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;
    use dispatcher_testdb::TestDatabase;

    use super::*;
    use crate::schema::{dispatches, webhook_events};
    use crate::{ConnectionOptions, connect};

    #[derive(QueryableByName)]
    struct State {
        #[diesel(sql_type = sql_types::DispatchState)]
        state: DbDispatchState,
    }

    #[derive(QueryableByName)]
    struct Status {
        #[diesel(sql_type = sql_types::EventStatus)]
        status: DbEventStatus,
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn every_variant_round_trips_through_its_column() {
        let t = TestDatabase::new();
        let mut conn = connect(t.url(), &ConnectionOptions::default())
            .await
            .unwrap();
        let mut event_id = 0;
        for (i, status) in EventStatus::ALL.iter().copied().enumerate() {
            // The CHECK constraint accepts the spelling, and it reads back the same.
            let (id, stored): (i64, DbEventStatus) = diesel::insert_into(webhook_events::table)
                .values((
                    webhook_events::delivery_id.eq(format!("d{i}")),
                    webhook_events::event_type.eq("pull_request"),
                    webhook_events::action.eq("opened"),
                    webhook_events::repository_full_name.eq("o/r"),
                    webhook_events::pull_request_number.eq(1),
                    webhook_events::payload.eq(serde_json::json!({})),
                    webhook_events::status.eq(DbEventStatus(status)),
                ))
                .returning((webhook_events::id, webhook_events::status))
                .get_result(&mut conn)
                .await
                .unwrap();
            assert_eq!(stored.0, status);
            let found: Vec<DbEventStatus> = webhook_events::table
                .filter(webhook_events::status.eq(DbEventStatus(status)))
                .select(webhook_events::status)
                .load(&mut conn)
                .await
                .unwrap();
            assert_eq!(found, [DbEventStatus(status)]);
            event_id = id;
        }
        for (i, state) in DispatchState::ALL.iter().copied().enumerate() {
            let stored: DbDispatchState = diesel::insert_into(dispatches::table)
                .values((
                    dispatches::event_id.eq(event_id),
                    dispatches::item_name.eq(format!("item{i}")),
                    dispatches::pool.eq("ns/p"),
                    dispatches::queued_label.eq("p/queued"),
                    dispatches::repository_full_name.eq("o/r"),
                    dispatches::pull_request_number.eq(1),
                    dispatches::queue_position.eq(1),
                    dispatches::state.eq(DbDispatchState(state)),
                ))
                .returning(dispatches::state)
                .get_result(&mut conn)
                .await
                .unwrap();
            assert_eq!(stored.0, state);
        }
        let all: Vec<DbDispatchState> = DispatchState::ALL
            .iter()
            .copied()
            .map(DbDispatchState)
            .collect();
        let found: Vec<DbDispatchState> = dispatches::table
            .filter(dispatches::state.eq_any(&all))
            .order(dispatches::id)
            .select(dispatches::state)
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(found, all);

        // As bound arrays in raw SQL, as `status::refresh` and the leader use them.
        let states: Vec<State> = diesel::sql_query("SELECT unnest($1) AS state")
            .bind::<diesel::sql_types::Array<sql_types::DispatchState>, _>(&all)
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(states.iter().map(|s| s.state).collect::<Vec<_>>(), all);
        let statuses: Vec<DbEventStatus> = EventStatus::ALL
            .iter()
            .copied()
            .map(DbEventStatus)
            .collect();
        let read: Vec<Status> = diesel::sql_query("SELECT unnest($1) AS status")
            .bind::<diesel::sql_types::Array<sql_types::EventStatus>, _>(&statuses)
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(read.iter().map(|s| s.status).collect::<Vec<_>>(), statuses);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn text_outside_the_vocabulary_does_not_deserialize() {
        let t = TestDatabase::new();
        let mut conn = connect(t.url(), &ConnectionOptions::default())
            .await
            .unwrap();
        for text in ["exploded", "", "Queued", "queued "] {
            let state = diesel::sql_query("SELECT $1 AS state")
                .bind::<Text, _>(text)
                .get_result::<State>(&mut conn)
                .await;
            assert!(
                matches!(state, Err(diesel::result::Error::DeserializationError(_))),
                "{text:?} read as a dispatch state"
            );
            let status = diesel::sql_query("SELECT $1 AS status")
                .bind::<Text, _>(text)
                .get_result::<Status>(&mut conn)
                .await;
            let Err(error) = status else {
                panic!("{text:?} read as an event status");
            };
            assert!(matches!(
                crate::error::query(error),
                dispatcher_core::ports::StoreError::Query(_)
            ));
        }
    }
}
