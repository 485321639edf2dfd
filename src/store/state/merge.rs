//! The sorted-cursor merge the diff walks: a full outer join of the new side ([`Source`]: a
//! snapshot's rows, or the values derived through the membership) and planned state (a base
//! overlaid with overrides), one key at a time, restartable from any [`Position`]; and the
//! byte order its keys compare in (SQLite's BINARY collation).

use std::cmp::Ordering;

use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Rows, Statement, params};

/// Where the new side of a diff comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A computation snapshot's rows: audience (members are `true`) or trait values.
    Snapshot { snapshot_id: i64, audience: bool },
    /// The per-user derived values of an account computation: audience true if any member
    /// account is a member; trait the value of the member account with the smallest group_id
    /// that has one.
    Derived {
        snapshot_id: i64,
        membership_snapshot_id: i64,
        audience: bool,
    },
    /// No rows (a computation with no complete snapshot, or no membership snapshot).
    Empty,
}

/// One entity of a merge: present in the new source, in planned state, or both. `new` and `old`
/// are JSON text; `None` is no value.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub entity_id: &'a str,
    pub email: Option<&'a str>,
    pub new: Option<&'a str>,
    pub old: Option<&'a str>,
}

/// How a cursor reads its value column.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reading {
    /// As stored.
    AsIs,
    /// An audience snapshot row: SQL NULL, JSON null or false is "no row" (SPEC section 3);
    /// any other row is a member, `true`.
    Audience,
    /// A trait snapshot row: JSON null is no value.
    Trait,
}

impl Reading {
    pub(super) fn of(source: Source) -> Reading {
        match source {
            Source::Snapshot { audience: true, .. } => Reading::Audience,
            Source::Snapshot {
                audience: false, ..
            } => Reading::Trait,
            Source::Derived { .. } | Source::Empty => Reading::AsIs,
        }
    }

    /// In Rust rather than a SQL CASE: it runs for every row of both sides of a diff.
    pub(super) fn read(self, raw: Option<&[u8]>) -> Option<&[u8]> {
        match (self, raw) {
            (Reading::AsIs, raw) => raw,
            (Reading::Audience, None | Some(b"null" | b"false")) => None,
            (Reading::Audience, Some(_)) => Some(b"true"),
            (Reading::Trait, Some(b"null")) => None,
            (Reading::Trait, raw) => raw,
        }
    }
}

/// The rows of `source` in entity order (?1 the snapshot, ?2 the membership snapshot), from the
/// entity given as the next parameter on (inclusive: a merge restarted where it stopped), or,
/// with `one`, the row of that one entity. Snapshot values come as stored: read them with
/// [`Reading::of`] the source.
pub(super) fn source_sql(source: Source, one: bool) -> String {
    let op = if one { "=" } else { ">=" };
    match source {
        Source::Snapshot { .. } => format!(
            "SELECT entity_id, email, value FROM snapshot_rows WHERE snapshot_id = ?1 \
             AND entity_id {op} ?2 ORDER BY entity_id"
        ),
        // SQLite's bare-column rule: with exactly one min() aggregate, the other columns come
        // from the row holding the minimum, i.e. the smallest group_id that has a value.
        Source::Derived { audience, .. } => format!(
            "SELECT m.user_id, m.email, {}, min(m.group_id) \
             FROM membership_rows m JOIN snapshot_rows r \
               ON r.snapshot_id = ?1 AND r.entity_id = m.group_id \
             WHERE m.snapshot_id = ?2 AND m.user_id {op} ?3 \
               AND r.value IS NOT NULL AND r.value <> 'null' {} \
             GROUP BY m.user_id ORDER BY m.user_id",
            if audience { "'true'" } else { "r.value" },
            if audience {
                "AND r.value <> 'false'"
            } else {
                ""
            },
        ),
        Source::Empty => "SELECT NULL, NULL, NULL WHERE 0 AND ?1 IS NULL".to_string(),
    }
}

/// A forward cursor over sorted rows of (key, key2, email, value). It copies the current key
/// into a reused buffer (keys are compared across cursors); the email and value are read from
/// the current row only when asked, so a diff step that finds nothing changed reads its two
/// values and never its emails (most steps of an incremental run).
struct Cursor<'s> {
    rows: Rows<'s>,
    key: Vec<u8>,
    key2: Vec<u8>,
    done: bool,
    // Column positions: (key, key2 or none, email, value).
    cols: (usize, Option<usize>, usize, usize),
    reading: Reading,
}

/// A TEXT or NULL column as bytes (SQLite TEXT is UTF-8 by contract; it is checked where the
/// text leaves the diff, see [`text`]).
pub(super) fn bytes(value: ValueRef<'_>) -> rusqlite::Result<Option<&[u8]>> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => Ok(Some(t)),
        ValueRef::Integer(_) | ValueRef::Real(_) | ValueRef::Blob(_) => Err(
            rusqlite::Error::InvalidColumnType(0, "value".into(), value.data_type()),
        ),
    }
}

pub(super) fn text(value: Option<&[u8]>) -> rusqlite::Result<Option<&str>> {
    value
        .map(|t| std::str::from_utf8(t).map_err(|e| rusqlite::Error::Utf8Error(0, e)))
        .transpose()
}

impl<'s> Cursor<'s> {
    fn new(
        rows: Rows<'s>,
        cols: (usize, Option<usize>, usize, usize),
        reading: Reading,
    ) -> rusqlite::Result<Self> {
        let mut cursor = Cursor {
            rows,
            key: Vec::new(),
            key2: Vec::new(),
            done: false,
            cols,
            reading,
        };
        cursor.advance()?;
        Ok(cursor)
    }

    fn advance(&mut self) -> rusqlite::Result<()> {
        match self.rows.next()? {
            None => self.done = true,
            Some(row) => {
                self.key.clear();
                self.key
                    .extend_from_slice(bytes(row.get_ref(self.cols.0)?)?.unwrap_or_default());
                if let Some(c) = self.cols.1 {
                    self.key2.clear();
                    self.key2
                        .extend_from_slice(bytes(row.get_ref(c)?)?.unwrap_or_default());
                }
            }
        }
        Ok(())
    }

    /// A column of the current row (the cursor is not done).
    fn column(&self, col: usize) -> rusqlite::Result<Option<&[u8]>> {
        let row = self
            .rows
            .get()
            .expect("a cursor that is not done has a row");
        bytes(row.get_ref(col)?)
    }

    fn email(&self) -> rusqlite::Result<Option<&[u8]>> {
        self.column(self.cols.2)
    }

    fn value(&self) -> rusqlite::Result<Option<&[u8]>> {
        Ok(self.reading.read(self.column(self.cols.3)?))
    }

    fn cmp_key(&self, other: &Cursor<'_>) -> Ordering {
        cmp_bytes(&self.key, &other.key).then_with(|| cmp_bytes(&self.key2, &other.key2))
    }
}

/// Byte-wise order: SQLite's BINARY collation (memcmp), the order of its `ORDER BY`. Eight
/// bytes at a time, inline: a diff compares keys twice per row, and entity ids are short, so a
/// call to memcmp per comparison cost more than the comparison.
fn cmp_bytes(a: &[u8], b: &[u8]) -> Ordering {
    let (mut a_rest, mut b_rest) = (a, b);
    while let (Some((x, a_next)), Some((y, b_next))) = (
        a_rest.split_first_chunk::<8>(),
        b_rest.split_first_chunk::<8>(),
    ) {
        if x != y {
            return u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        }
        (a_rest, b_rest) = (a_next, b_next);
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        if x != y {
            return x.cmp(y);
        }
    }
    a_rest.len().cmp(&b_rest.len())
}

/// A full outer join of sorted cursors, pulled one key at a time: the new side (snapshot or
/// membership rows) and the old side (planned state: base rows, replaced key by key by the
/// override rows when the merge has them).
pub struct Merge<'s> {
    new: Cursor<'s>,
    old: Cursor<'s>,
    over: Option<Cursor<'s>>,
}

impl Merge<'_> {
    /// Where the merge stands: the least key any side is at (`None` at the end). A merge opened
    /// from it ([`MergeStatements::open_from`]) goes on exactly from here.
    pub fn position(&self) -> Option<Position> {
        [Some(&self.new), Some(&self.old), self.over.as_ref()]
            .into_iter()
            .flatten()
            .filter(|c| !c.done)
            .map(|c| (c.key.as_slice(), c.key2.as_slice()))
            .min_by(|a, b| cmp_bytes(a.0, b.0).then_with(|| cmp_bytes(a.1, b.1)))
            .map(|(key, key2)| Position {
                key: String::from_utf8_lossy(key).into_owned(),
                key2: String::from_utf8_lossy(key2).into_owned(),
            })
    }

    /// The next key present on any side: `f(new, over, old)` sees the row of each side that
    /// has it; `None` at the end.
    fn next_with<R>(
        &mut self,
        f: impl FnOnce(Option<&Cursor<'_>>, Option<&Cursor<'_>>, Option<&Cursor<'_>>) -> R,
    ) -> rusqlite::Result<Option<R>> {
        // The common step compares the two big sides once; the overrides (few) only while
        // they last.
        let (mut new, mut old) = match (self.new.done, self.old.done) {
            (true, true) => (false, false),
            (false, true) => (true, false),
            (true, false) => (false, true),
            (false, false) => match self.new.cmp_key(&self.old) {
                Ordering::Less => (true, false),
                Ordering::Greater => (false, true),
                Ordering::Equal => (true, true),
            },
        };
        let mut over = false;
        if let Some(c) = self.over.as_ref().filter(|c| !c.done) {
            let least = if new { &self.new } else { &self.old };
            let order = if new || old {
                c.cmp_key(least)
            } else {
                Ordering::Less
            };
            match order {
                Ordering::Less => (new, old, over) = (false, false, true),
                Ordering::Equal => over = true,
                Ordering::Greater => {}
            }
        }
        if !(new || old || over) {
            return Ok(None);
        }
        let r = f(
            new.then_some(&self.new),
            self.over.as_ref().filter(|_| over),
            old.then_some(&self.old),
        );
        if new {
            self.new.advance()?;
        }
        if old {
            self.old.advance()?;
        }
        if over && let Some(c) = self.over.as_mut() {
            c.advance()?;
        }
        Ok(Some(r))
    }

    /// The next entity of a value merge (`MergeStatements::values`).
    pub fn next_pair<R>(&mut self, f: impl FnOnce(Pair<'_>) -> R) -> rusqlite::Result<Option<R>> {
        Ok(self
            .next_pair_unless_same(false, f)?
            .map(|r| r.expect("never skipped")))
    }

    /// Like [`next_pair`](Self::next_pair), but with `skip_same` an entity whose planned value
    /// is byte for byte its new value yields `Some(None)` without `f`: nothing to classify,
    /// and nothing of its row is read but the two values.
    pub fn next_pair_unless_same<R>(
        &mut self,
        skip_same: bool,
        f: impl FnOnce(Pair<'_>) -> R,
    ) -> rusqlite::Result<Option<Option<R>>> {
        self.next_with(|new, over, base| {
            let planned = over.or(base);
            let new_value = new.map(Cursor::value).transpose()?.flatten();
            let old_value = planned.map(Cursor::value).transpose()?.flatten();
            if skip_same && new.is_some() && planned.is_some() && new_value == old_value {
                return Ok(None);
            }
            let any = new.or(planned).expect("a merge step has at least one side");
            let mut email = None;
            for c in [new, over, base].into_iter().flatten() {
                email = c.email()?;
                if email.is_some() {
                    break;
                }
            }
            Ok(Some(f(Pair {
                entity_id: text(Some(&any.key))?.unwrap_or_default(),
                email: text(email)?,
                new: text(new_value)?,
                old: text(old_value)?,
            })))
        })?
        .transpose()
    }

    /// The next (user, account) of a membership merge (`MergeStatements::membership`).
    pub fn next_member<R>(
        &mut self,
        f: impl FnOnce(MemberPair<'_>) -> R,
    ) -> rusqlite::Result<Option<R>> {
        self.next_with(|new, _, old| {
            let any = new.or(old).expect("a merge step has at least one side");
            let email = match new.map(Cursor::email).transpose()?.flatten() {
                Some(email) => Some(email),
                None => old.map(Cursor::email).transpose()?.flatten(),
            };
            Ok(f(MemberPair {
                user_id: text(Some(&any.key))?.unwrap_or_default(),
                group_id: text(Some(&any.key2))?.unwrap_or_default(),
                email: text(email)?,
                in_snapshot: new.is_some(),
                attached: old.is_some(),
                delivered: old.map(Cursor::value).transpose()?.flatten() == Some(b"1".as_slice()),
            }))
        })?
        .transpose()
    }
}

/// The prepared statements of one merge; `open` runs them. Kept apart from `Merge` because
/// the row cursors borrow their statements: a run prepares every merge it walks side by side
/// first, then opens them all.
pub struct MergeStatements<'c> {
    new: Statement<'c>,
    old: Statement<'c>,
    over: Option<Statement<'c>>,
    kind: MergeKind,
}

enum MergeKind {
    Values {
        source: Source,
        base: Source,
        computation_id: String,
        subject: String,
    },
    Membership {
        membership_snapshot_id: Option<i64>,
    },
}

impl<'c> MergeStatements<'c> {
    /// `source` against the planned state of (computation, subject), in entity order: `base`
    /// (`base_source`) overlaid with the computation's overrides.
    pub fn values(
        conn: &'c Connection,
        source: Source,
        base: Source,
        computation_id: &str,
        subject: &str,
    ) -> rusqlite::Result<Self> {
        Ok(MergeStatements {
            new: conn.prepare(&source_sql(source, false))?,
            old: conn.prepare(&source_sql(base, false))?,
            over: Some(conn.prepare(
                "SELECT entity_id, email, planned FROM planned_overrides \
                 WHERE computation_id = ?1 AND subject = ?2 AND entity_id >= ?3 \
                 ORDER BY entity_id",
            )?),
            kind: MergeKind::Values {
                source,
                base,
                computation_id: computation_id.to_string(),
                subject: subject.to_string(),
            },
        })
    }

    /// A membership snapshot (or none) against the planned attachments, in (user, account)
    /// order.
    pub fn membership(
        conn: &'c Connection,
        membership_snapshot_id: Option<i64>,
    ) -> rusqlite::Result<Self> {
        Ok(MergeStatements {
            new: conn.prepare(
                "SELECT user_id, group_id, email, '1' FROM membership_rows WHERE snapshot_id = ?1 \
                 AND (user_id, group_id) >= (?2, ?3) ORDER BY user_id, group_id",
            )?,
            old: conn.prepare(
                "SELECT user_id, group_id, email, CASE delivered WHEN 1 THEN '1' ELSE '0' END \
                 FROM membership_state WHERE planned = 1 AND (user_id, group_id) >= (?1, ?2) \
                 ORDER BY user_id, group_id",
            )?,
            over: None,
            kind: MergeKind::Membership {
                membership_snapshot_id,
            },
        })
    }

    pub fn open(&mut self) -> rusqlite::Result<Merge<'_>> {
        self.open_from(&Position::default())
    }

    /// The merge from `from` on (inclusive): a merge restarted where an earlier one stopped
    /// ([`Merge::position`]) yields exactly what the earlier one had left.
    pub fn open_from(&mut self, from: &Position) -> rusqlite::Result<Merge<'_>> {
        let key = from.key();
        match &self.kind {
            MergeKind::Values {
                source,
                base,
                computation_id,
                subject,
            } => Ok(Merge {
                new: Cursor::new(
                    query(&mut self.new, *source, key)?,
                    (0, None, 1, 2),
                    Reading::of(*source),
                )?,
                old: Cursor::new(
                    query(&mut self.old, *base, key)?,
                    (0, None, 1, 2),
                    Reading::of(*base),
                )?,
                over: match self.over.as_mut() {
                    Some(over) => Some(Cursor::new(
                        over.query(params![computation_id, subject, key])?,
                        (0, None, 1, 2),
                        Reading::AsIs,
                    )?),
                    None => None,
                },
            }),
            // -1 is never a snapshot id: no membership snapshot means no memberships.
            MergeKind::Membership {
                membership_snapshot_id,
            } => {
                let key2 = from.key2();
                Ok(Merge {
                    new: Cursor::new(
                        self.new
                            .query(params![membership_snapshot_id.unwrap_or(-1), key, key2])?,
                        (0, Some(1), 2, 3),
                        Reading::AsIs,
                    )?,
                    old: Cursor::new(
                        self.old.query(params![key, key2])?,
                        (0, Some(1), 2, 3),
                        Reading::AsIs,
                    )?,
                    over: None,
                })
            }
        }
    }
}

/// Where a merge stands: the key (and, for a membership merge, the account) of the next entity
/// it would yield. The default is the start.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    key: String,
    key2: String,
}

impl Position {
    /// The position of an entity (every account of it, for a membership merge).
    pub fn at(key: &str) -> Position {
        Position {
            key: key.to_string(),
            key2: String::new(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn key2(&self) -> &str {
        &self.key2
    }
}

fn query<'s>(
    stmt: &'s mut Statement<'_>,
    source: Source,
    from: &str,
) -> rusqlite::Result<Rows<'s>> {
    match source {
        Source::Snapshot { snapshot_id, .. } => stmt.query(params![snapshot_id, from]),
        Source::Derived {
            snapshot_id,
            membership_snapshot_id,
            ..
        } => stmt.query(params![snapshot_id, membership_snapshot_id, from]),
        Source::Empty => stmt.query([from]),
    }
}

/// One (user, account) membership of a merge: in the new membership snapshot, attached in
/// planned state, or both.
#[derive(Debug, Clone, Copy)]
pub struct MemberPair<'a> {
    pub user_id: &'a str,
    pub group_id: &'a str,
    pub email: Option<&'a str>,
    pub in_snapshot: bool,
    /// Planned attached.
    pub attached: bool,
    /// Intercom confirmed the attach (delivered state).
    pub delivered: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_order_like_memcmp(a in proptest::collection::vec(0u8..4, 0..20), b in proptest::collection::vec(0u8..4, 0..20)) {
            prop_assert_eq!(cmp_bytes(&a, &b), a.as_slice().cmp(b.as_slice()));
            prop_assert_eq!(cmp_bytes(&a, &a), Ordering::Equal);
        }
    }

    #[test]
    fn keys_order_like_memcmp_across_the_eight_byte_step() {
        assert_eq!(cmp_bytes(b"user0000", b"user00000"), Ordering::Less);
        assert_eq!(cmp_bytes(b"user00001", b"user00000"), Ordering::Greater);
        assert_eq!(cmp_bytes(b"user0001a", b"user0000z"), Ordering::Greater);
        assert_eq!(cmp_bytes("é".as_bytes(), b"z"), Ordering::Greater);
    }
}
