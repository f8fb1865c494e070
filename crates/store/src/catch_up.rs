//! The catch-up of missed deliveries ([`CatchUpStore`] for [`PgCatchUp`]):
//! a cursor per webhook and the delivery guids asked for again. It knows
//! guids, hook keys and ids only; what they mean on GitHub is
//! `dispatcher_core::catch_up`'s business.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use dispatcher_core::ports::{CatchUpStore, StoreError};

use crate::error;
use crate::pool::Database;
use crate::schema::{catch_up_cursors, catch_up_requests, webhook_events};

/// Catch-up state on the pool's connections (used by the active replica).
#[derive(Debug, Clone)]
pub struct PgCatchUp {
    db: Database,
}

impl PgCatchUp {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }
}

impl CatchUpStore for PgCatchUp {
    async fn cursor(&self, hook: &str) -> Result<Option<i64>, StoreError> {
        let mut conn = self.db.conn().await?;
        catch_up_cursors::table
            .find(hook)
            .select(catch_up_cursors::last_delivery_id)
            .first(&mut conn)
            .await
            .optional()
            .map_err(error::query)
    }

    async fn save_cursor(&self, hook: &str, delivery_id: i64) -> Result<(), StoreError> {
        let mut conn = self.db.conn().await?;
        diesel::insert_into(catch_up_cursors::table)
            .values((
                catch_up_cursors::hook.eq(hook),
                catch_up_cursors::last_delivery_id.eq(delivery_id),
            ))
            .on_conflict(catch_up_cursors::hook)
            .do_update()
            .set((
                catch_up_cursors::last_delivery_id.eq(diesel::dsl::sql::<diesel::sql_types::Int8>(
                    "GREATEST(catch_up_cursors.last_delivery_id, excluded.last_delivery_id)",
                )),
                catch_up_cursors::updated_at.eq(diesel::dsl::now),
            ))
            .execute(&mut conn)
            .await
            .map_err(error::query)?;
        Ok(())
    }

    async fn held(&self, guids: &[String]) -> Result<HashSet<String>, StoreError> {
        if guids.is_empty() {
            return Ok(HashSet::new());
        }
        let mut conn = self.db.conn().await?;
        let found: Vec<String> = webhook_events::table
            .filter(webhook_events::delivery_id.eq_any(guids))
            .select(webhook_events::delivery_id)
            .load(&mut conn)
            .await
            .map_err(error::query)?;
        Ok(found.into_iter().collect())
    }

    async fn asked(&self, guids: &[String]) -> Result<HashSet<String>, StoreError> {
        if guids.is_empty() {
            return Ok(HashSet::new());
        }
        let mut conn = self.db.conn().await?;
        let found: Vec<String> = catch_up_requests::table
            .filter(catch_up_requests::delivery_guid.eq_any(guids))
            .select(catch_up_requests::delivery_guid)
            .load(&mut conn)
            .await
            .map_err(error::query)?;
        Ok(found.into_iter().collect())
    }

    async fn claim(
        &self,
        hook: &str,
        guid: &str,
        delivery_id: i64,
        event: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.db.conn().await?;
        let inserted = diesel::insert_into(catch_up_requests::table)
            .values((
                catch_up_requests::delivery_guid.eq(guid),
                catch_up_requests::hook.eq(hook),
                catch_up_requests::hook_delivery_id.eq(delivery_id),
                catch_up_requests::event_type.eq(event),
            ))
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await
            .map_err(error::query)?;
        Ok(inserted == 1)
    }

    async fn release(&self, guid: &str) -> Result<(), StoreError> {
        let mut conn = self.db.conn().await?;
        diesel::delete(catch_up_requests::table.find(guid))
            .execute(&mut conn)
            .await
            .map_err(error::query)?;
        Ok(())
    }
}
