//! What Intercom is known to hold, cached so delivery need not ask again: contact and company
//! ids, the event names sent, and the custom data attributes (tables `intercom_contacts`,
//! `intercom_companies`, `intercom_event_names`, `intercom_data_attributes`,
//! `intercom_attributes_listed`).

use rusqlite::{Connection, OptionalExtension, params};

use super::now_unix;

/// The cached Intercom contact id of a user entity (its `user_id`, or its lower-cased email).
pub fn contact_id(conn: &Connection, entity_id: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT contact_id FROM intercom_contacts WHERE entity_id = ?1")?
        .query_row([entity_id], |r| r.get(0))
        .optional()
}

pub fn set_contact_id(
    conn: &Connection,
    entity_id: &str,
    contact_id: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO intercom_contacts (entity_id, contact_id, learned_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (entity_id) DO UPDATE SET contact_id = excluded.contact_id, \
         learned_at = excluded.learned_at WHERE contact_id <> excluded.contact_id",
    )?
    .execute(params![entity_id, contact_id, now_unix()])?;
    Ok(())
}

/// Forget a contact id Intercom answered 404 for.
pub fn forget_contact_id(conn: &Connection, entity_id: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM intercom_contacts WHERE entity_id = ?1",
        [entity_id],
    )?;
    Ok(())
}

/// The cached Intercom id of a company, by our `company_id` (the Segment `groupId`).
pub fn company_id(conn: &Connection, company_id: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT intercom_id FROM intercom_companies WHERE company_id = ?1")?
        .query_row([company_id], |r| r.get(0))
        .optional()
}

pub fn set_company_id(
    conn: &Connection,
    company_id: &str,
    intercom_id: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO intercom_companies (company_id, intercom_id, learned_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (company_id) DO UPDATE SET intercom_id = excluded.intercom_id, \
         learned_at = excluded.learned_at WHERE intercom_id <> excluded.intercom_id",
    )?
    .execute(params![company_id, intercom_id, now_unix()])?;
    Ok(())
}

pub fn forget_company_id(conn: &Connection, company_id: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM intercom_companies WHERE company_id = ?1",
        [company_id],
    )?;
    Ok(())
}

/// Every event name this workspace has been sent.
pub fn event_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT name FROM intercom_event_names ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect()
}

pub fn record_event_name(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO intercom_event_names (name, first_sent_at) VALUES (?1, ?2)",
    )?
    .execute(params![name, now_unix()])?;
    Ok(())
}

/// One kept data attribute: (model, name, data type).
pub type DataAttribute = (String, String, Option<String>);

/// Intercom's custom data attributes as last listed and created since; `None` when the list was
/// never read.
pub fn data_attributes(conn: &Connection) -> rusqlite::Result<Option<Vec<DataAttribute>>> {
    let listed: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM intercom_attributes_listed)",
        [],
        |r| r.get(0),
    )?;
    if !listed {
        return Ok(None);
    }
    let rows = conn
        .prepare(
            "SELECT model, name, data_type FROM intercom_data_attributes ORDER BY model, name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(rows))
}

/// Replace the attribute list with a fresh one, in one transaction.
pub fn replace_data_attributes(
    conn: &mut Connection,
    rows: &[(&str, &str, Option<&str>)],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM intercom_data_attributes", [])?;
    {
        let mut insert = tx.prepare(
            "INSERT OR REPLACE INTO intercom_data_attributes (model, name, data_type) VALUES (?1, ?2, ?3)",
        )?;
        for (model, name, data_type) in rows {
            insert.execute(params![model, name, data_type])?;
        }
    }
    tx.execute(
        "INSERT INTO intercom_attributes_listed (id, listed_at) VALUES (1, ?1) \
         ON CONFLICT (id) DO UPDATE SET listed_at = excluded.listed_at",
        [now_unix()],
    )?;
    tx.commit()
}

/// Remember an attribute just created.
pub fn add_data_attribute(
    conn: &Connection,
    model: &str,
    name: &str,
    data_type: Option<&str>,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO intercom_data_attributes (model, name, data_type) VALUES (?1, ?2, ?3)",
        params![model, name, data_type],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_round_trip() {
        let conn = crate::store::open_in_memory().unwrap();
        assert_eq!(contact_id(&conn, "u1").unwrap(), None);
        set_contact_id(&conn, "u1", "c1").unwrap();
        set_contact_id(&conn, "u1", "c2").unwrap();
        assert_eq!(contact_id(&conn, "u1").unwrap().as_deref(), Some("c2"));
        forget_contact_id(&conn, "u1").unwrap();
        assert_eq!(contact_id(&conn, "u1").unwrap(), None);

        set_company_id(&conn, "acme", "i1").unwrap();
        assert_eq!(company_id(&conn, "acme").unwrap().as_deref(), Some("i1"));
        forget_company_id(&conn, "acme").unwrap();
        assert_eq!(company_id(&conn, "acme").unwrap(), None);

        record_event_name(&conn, "Audience Entered").unwrap();
        record_event_name(&conn, "audience entered").unwrap();
        assert_eq!(event_names(&conn).unwrap(), ["Audience Entered"]);
    }
}
