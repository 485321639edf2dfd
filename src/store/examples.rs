//! The SQL of `audience-sync demo`'s example data, kept with the rest of the SQL: the product's
//! own `orders` table that the demo writes as an upstream job would (in a real deployment the
//! application or an ETL job writes it; audience-sync never does), the SQL audience defined over
//! it as an operator would write it in settings.toml (`[[computations]]`), and the read the demo
//! explains that audience's members with.

use rusqlite::{Connection, params};

/// The demo's SQL audience (SPEC section 11), as a `[[computations]]` entry's `sql`: users with
/// an order completed in the 30 days before `:now`.
pub const ORDER_COMPLETED_LAST_30DAYS: &str = "SELECT user_id, email FROM orders \
     WHERE completed_at > :now - 30*86400 GROUP BY user_id, email";

/// One row of the `orders` table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Order<'a> {
    pub user_id: &'a str,
    pub email: &'a str,
    pub total: f64,
    /// Unix seconds.
    pub completed_at: i64,
}

/// Write `orders` into the `orders` table, creating it first if needed, as the upstream
/// pipeline would.
pub fn write_orders<'a>(
    conn: &Connection,
    orders: impl IntoIterator<Item = Order<'a>>,
) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (
             order_id     INTEGER PRIMARY KEY,
             user_id      TEXT NOT NULL,
             email        TEXT,
             total        REAL NOT NULL,
             completed_at INTEGER NOT NULL  -- unix seconds
         )",
    )?;
    let mut insert = conn.prepare(
        "INSERT INTO orders (user_id, email, total, completed_at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for order in orders {
        insert.execute(params![
            order.user_id,
            order.email,
            order.total,
            order.completed_at
        ])?;
    }
    Ok(())
}

/// A user's last order completed at or before some time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastOrder {
    pub user_id: String,
    /// Unix seconds.
    pub completed_at: i64,
}

/// Each user's last order completed at or before `now`, by user id.
pub fn last_orders(conn: &Connection, now: i64) -> rusqlite::Result<Vec<LastOrder>> {
    let mut stmt = conn.prepare(
        "SELECT user_id, max(completed_at) FROM orders WHERE completed_at <= ?1 \
         GROUP BY user_id ORDER BY user_id",
    )?;
    stmt.query_map([now], |r| {
        Ok(LastOrder {
            user_id: r.get(0)?,
            completed_at: r.get(1)?,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_written_are_read_back_as_each_users_last_order() {
        let conn = super::super::open_in_memory().unwrap();
        let order = |user_id, completed_at| Order {
            user_id,
            email: "x@example.com",
            total: 1.0,
            completed_at,
        };
        write_orders(&conn, [order("u2", 50), order("u1", 10), order("u1", 30)]).unwrap();
        write_orders(&conn, [order("u1", 200)]).unwrap();
        assert_eq!(
            last_orders(&conn, 100).unwrap(),
            vec![
                LastOrder {
                    user_id: "u1".into(),
                    completed_at: 30
                },
                LastOrder {
                    user_id: "u2".into(),
                    completed_at: 50
                },
            ]
        );
    }
}
