//! The last rate-limit budget a process saw (table `intercom_rate_limit`), so the next one
//! starts from it (core `intercom::budget`).

use audience_sync_core::intercom::budget::Persisted;
use rusqlite::{Connection, OptionalExtension, params};

use super::now_unix;

/// The last budget a process saw, if any.
pub fn rate_limit(conn: &Connection) -> rusqlite::Result<Option<Persisted>> {
    conn.query_row(
        "SELECT limit_per_window, remaining, reset_at FROM intercom_rate_limit WHERE id = 1",
        [],
        |r| {
            Ok(Persisted {
                limit: r.get::<_, i64>(0)?.clamp(0, u32::MAX as i64) as u32,
                remaining: r.get::<_, i64>(1)?.clamp(0, u32::MAX as i64) as u32,
                reset_at: r.get(2)?,
            })
        },
    )
    .optional()
}

pub fn save_rate_limit(conn: &Connection, budget: &Persisted) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO intercom_rate_limit (id, limit_per_window, remaining, reset_at, observed_at) \
         VALUES (1, ?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET \
         limit_per_window = excluded.limit_per_window, remaining = excluded.remaining, \
         reset_at = excluded.reset_at, observed_at = excluded.observed_at",
        params![budget.limit, budget.remaining, budget.reset_at, now_unix()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_round_trips() {
        let conn = crate::store::open_in_memory().unwrap();
        assert_eq!(rate_limit(&conn).unwrap(), None);
        let p = Persisted {
            limit: 83,
            remaining: 5,
            reset_at: 1_700_000_010,
        };
        save_rate_limit(&conn, &p).unwrap();
        assert_eq!(rate_limit(&conn).unwrap(), Some(p));
    }
}
