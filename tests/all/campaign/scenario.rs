//! Random scenarios: users (with a user id and an email, a user id only, or an email only),
//! accounts, user and account audiences and traits, and a series of steps that churn them; and
//! how a step reaches the database (the `load` / `load-members` commands with NDJSON or CSV, or
//! plain SQL as an upstream job would write it, SPEC section 3).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::rng::Rng;
use super::world::World;

pub use audience_sync_oracle::{Kind, Scope};

/// What values a trait takes (audiences are always `true`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Type {
    Bool,
    Number,
    Text,
}

#[derive(Clone, Debug)]
pub struct User {
    /// The entity id: the user id, or the lower-cased email.
    pub entity: String,
    pub user_id: Option<String>,
    /// As written in the files (mixed case).
    pub email: Option<String>,
}

impl User {
    pub fn email_lower(&self) -> Option<String> {
        self.email.as_ref().map(|e| e.to_lowercase())
    }
}

#[derive(Clone, Debug)]
pub struct Computation {
    pub key: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    pub ty: Type,
    /// The step that loads its first snapshot.
    pub first_step: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    Ndjson,
    Csv,
    Sql,
}

/// One snapshot of one computation: entity → value. `Null` rows (traits only) mean "no value".
#[derive(Clone, Debug)]
pub struct Load {
    pub comp: usize,
    pub rows: Vec<(String, Value)>,
    pub via: Via,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub taken_at: i64,
    pub loads: Vec<Load>,
    /// A new membership snapshot of (group, user entity) pairs.
    pub members: Option<(Vec<(String, String)>, Via)>,
    /// `sync --full` instead of `sync`.
    pub full: bool,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub users: Vec<User>,
    pub comps: Vec<Computation>,
    pub steps: Vec<Step>,
}

pub struct Size {
    pub users: usize,
    pub groups: usize,
    pub steps: usize,
}

const TEXTS: &[&str] = &[
    "bronze",
    "silver",
    "gold",
    "platinum",
    "café crème",
    "日本語",
    "a \"quoted\" tier",
];

fn new_value(rng: &mut Rng, ty: Type, old: Option<&Value>) -> Value {
    loop {
        let value = match ty {
            Type::Bool => json!(rng.chance(0.5)),
            Type::Number => {
                let n = rng.below(1000) as i64 - 100;
                if rng.chance(0.5) {
                    json!(n)
                } else {
                    json!(n as f64 + if rng.chance(0.5) { 0.25 } else { 0.5 })
                }
            }
            Type::Text => {
                if rng.chance(0.1) {
                    json!([*rng.pick(TEXTS), *rng.pick(TEXTS)])
                } else if rng.chance(0.04) {
                    // Longer than Intercom's 255 characters (and 510 bytes).
                    Value::String("é".repeat(200) + &"x".repeat(100 + rng.below(50) as usize))
                } else {
                    json!(*rng.pick(TEXTS))
                }
            }
        };
        if Some(&value) != old {
            return value;
        }
    }
}

pub fn generate(seed: u64, size: &Size) -> Scenario {
    let mut rng = Rng::new(seed);
    let users: Vec<User> = (0..size.users)
        .map(|i| match rng.below(100) {
            0..70 => User {
                entity: format!("u{i:04}"),
                user_id: Some(format!("u{i:04}")),
                email: Some(format!("User.{i}@Example.com")),
            },
            70..82 => User {
                entity: format!("u{i:04}"),
                user_id: Some(format!("u{i:04}")),
                email: None,
            },
            _ => User {
                entity: format!("mail.{i}@example.org"),
                user_id: None,
                email: Some(format!("Mail.{i}@Example.ORG")),
            },
        })
        .collect();
    let groups: Vec<String> = (0..size.groups).map(|i| format!("acct{i:02}")).collect();

    let mut comps = vec![Computation {
        key: "vip",
        kind: Kind::Audience,
        scope: Scope::User,
        ty: Type::Bool,
        first_step: 0,
    }];
    for key in ["beta_testers", "newsletter"] {
        if rng.chance(0.6) {
            comps.push(Computation {
                key,
                kind: Kind::Audience,
                scope: Scope::User,
                ty: Type::Bool,
                first_step: 0,
            });
        }
    }
    let user_traits = [
        ("lead_score", Type::Number),
        ("tier", Type::Text),
        ("power_user", Type::Bool),
    ];
    let first = rng.below(3) as usize;
    for (i, (key, ty)) in user_traits.iter().enumerate() {
        if i == first || rng.chance(0.35) {
            comps.push(Computation {
                key,
                kind: Kind::Trait,
                scope: Scope::User,
                ty: *ty,
                first_step: 0,
            });
        }
    }
    let account_audience = rng.chance(0.75);
    if account_audience {
        comps.push(Computation {
            key: "enterprise",
            kind: Kind::Audience,
            scope: Scope::Account,
            ty: Type::Bool,
            first_step: 0,
        });
    }
    if !account_audience || rng.chance(0.7) {
        let (key, ty) = if rng.chance(0.5) {
            ("arr", Type::Number)
        } else {
            ("plan_name", Type::Text)
        };
        comps.push(Computation {
            key,
            kind: Kind::Trait,
            scope: Scope::Account,
            ty,
            first_step: 0,
        });
    }
    // Sometimes a computation only appears later (its own initial sync mid-stream).
    if size.steps > 1 && rng.chance(0.3) {
        let i = rng.below(comps.len() as u64) as usize;
        comps[i].first_step = rng.range(1, size.steps as u64 - 1) as usize;
    }

    let churn = rng.float(0.08, 0.35);
    let mut current: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new(); comps.len()];
    let mut members: BTreeSet<(String, String)> = BTreeSet::new();
    let mut taken_at = 1_767_225_600i64; // 2026-01-01T00:00:00Z
    let mut steps = Vec::new();
    for s in 0..size.steps {
        if s > 0 {
            taken_at += *rng.pick(&[1, 1, 2, 3, 3600, 86_400]);
        }
        let mut loads = Vec::new();
        for (ci, comp) in comps.iter().enumerate() {
            if comp.first_step > s {
                continue;
            }
            let fresh = comp.first_step == s;
            if !fresh && !rng.chance(0.75) {
                continue;
            }
            let entities: Vec<String> = match comp.scope {
                Scope::User => users.iter().map(|u| u.entity.clone()).collect(),
                Scope::Account => groups.clone(),
            };
            let cur = &mut current[ci];
            for e in &entities {
                if fresh {
                    let p = if comp.kind == Kind::Audience {
                        0.45
                    } else {
                        0.6
                    };
                    if rng.chance(p) {
                        let v = match comp.kind {
                            Kind::Audience => json!(true),
                            Kind::Trait => new_value(&mut rng, comp.ty, None),
                        };
                        cur.insert(e.clone(), v);
                    }
                } else if rng.chance(churn) {
                    match (comp.kind, cur.get(e).cloned()) {
                        (Kind::Audience, Some(_)) => {
                            cur.remove(e);
                        }
                        (Kind::Audience, None) => {
                            cur.insert(e.clone(), json!(true));
                        }
                        (Kind::Trait, Some(old)) => {
                            if rng.chance(0.35) {
                                cur.remove(e);
                            } else {
                                cur.insert(e.clone(), new_value(&mut rng, comp.ty, Some(&old)));
                            }
                        }
                        (Kind::Trait, None) => {
                            cur.insert(e.clone(), new_value(&mut rng, comp.ty, None));
                        }
                    }
                }
            }
            let mut rows: Vec<(String, Value)> =
                cur.iter().map(|(e, v)| (e.clone(), v.clone())).collect();
            if comp.kind == Kind::Trait {
                for e in &entities {
                    if !cur.contains_key(e) && rng.chance(0.04) {
                        rows.push((e.clone(), Value::Null));
                    }
                }
            }
            let csv_ok = rows.iter().all(|(_, v)| !v.is_array());
            let via = if rows.is_empty() || rng.chance(0.15) {
                Via::Sql
            } else if csv_ok && rng.chance(0.3) {
                Via::Csv
            } else {
                Via::Ndjson
            };
            loads.push(Load {
                comp: ci,
                rows,
                via,
            });
        }
        let new_members = if s == 0 {
            let p = 1.3 / groups.len().max(1) as f64;
            for u in &users {
                for g in &groups {
                    if rng.chance(p) {
                        members.insert((g.clone(), u.entity.clone()));
                    }
                }
            }
            true
        } else if rng.chance(0.5) {
            for u in &users {
                for g in &groups {
                    if rng.chance(churn / 3.0) {
                        let pair = (g.clone(), u.entity.clone());
                        if !members.remove(&pair) {
                            members.insert(pair);
                        }
                    }
                }
            }
            true
        } else {
            false
        };
        let members = new_members.then(|| {
            let via = if members.is_empty() || rng.chance(0.15) {
                Via::Sql
            } else if rng.chance(0.3) {
                Via::Csv
            } else {
                Via::Ndjson
            };
            (members.iter().cloned().collect(), via)
        });
        let full = s > 0 && rng.chance(0.15);
        steps.push(Step {
            taken_at,
            loads,
            members,
            full,
        });
    }
    Scenario {
        users,
        comps,
        steps,
    }
}

pub fn rfc3339(unix: i64) -> String {
    chrono_like(unix)
}

/// RFC 3339 in UTC without a date library (days from the civil calendar algorithm).
fn chrono_like(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A command (arguments) or a plain-SQL write that stores one snapshot.
pub enum Action {
    Command(Vec<String>),
    Sql(Box<dyn Fn(&World)>),
}

impl Scenario {
    fn user(&self, entity: &str) -> &User {
        self.users
            .iter()
            .find(|u| u.entity == entity)
            .expect("known user")
    }

    /// How step `index` reaches the database, in order: one action per snapshot. Files are
    /// written now; `padding` decides, per row, whether an identifier gets spaces around it
    /// (they are trimmed by `load`).
    pub fn actions(&self, world: &World, index: usize, rng: &mut Rng) -> Vec<(String, Action)> {
        let step = &self.steps[index];
        let taken_at = rfc3339(step.taken_at);
        let mut actions = Vec::new();
        for load in &step.loads {
            let comp = &self.comps[load.comp];
            let kind = match comp.kind {
                Kind::Audience => "audience",
                Kind::Trait => "trait",
            };
            let scope = match comp.scope {
                Scope::User => "user",
                Scope::Account => "account",
            };
            let label = format!("load {} (step {index}, {:?})", comp.key, load.via);
            match load.via {
                Via::Ndjson | Via::Csv => {
                    let csv = load.via == Via::Csv;
                    let mut text = String::new();
                    if csv {
                        text.push_str(match (comp.scope, comp.kind) {
                            (Scope::User, Kind::Audience) => "user_id,email\n",
                            (Scope::User, Kind::Trait) => "user_id,email,value\n",
                            (Scope::Account, Kind::Audience) => "group_id\n",
                            (Scope::Account, Kind::Trait) => "group_id,value\n",
                        });
                    }
                    for (entity, value) in &load.rows {
                        let pad = |id: &str, rng: &mut Rng| {
                            if rng.chance(0.1) {
                                format!("  {id} ")
                            } else {
                                id.to_string()
                            }
                        };
                        let mut row = serde_json::Map::new();
                        match comp.scope {
                            Scope::User => {
                                let user = self.user(entity);
                                if let Some(id) = &user.user_id {
                                    row.insert("user_id".into(), json!(pad(id, rng)));
                                }
                                if let Some(email) = &user.email {
                                    row.insert("email".into(), json!(email));
                                }
                            }
                            Scope::Account => {
                                row.insert("group_id".into(), json!(pad(entity, rng)));
                            }
                        }
                        let with_value = comp.kind == Kind::Trait || rng.chance(0.3);
                        if with_value {
                            row.insert("value".into(), value.clone());
                        }
                        if csv {
                            let cell = |key: &str| match row.get(key) {
                                None => String::new(),
                                Some(Value::String(s)) => csv_cell(s),
                                Some(v) => v.to_string(),
                            };
                            let cells: Vec<String> = match comp.scope {
                                Scope::User => vec![cell("user_id"), cell("email")],
                                Scope::Account => vec![cell("group_id")],
                            };
                            let mut line = cells.join(",");
                            if comp.kind == Kind::Trait {
                                line.push(',');
                                line.push_str(&cell("value"));
                            }
                            text.push_str(&line);
                        } else {
                            text.push_str(&Value::Object(row).to_string());
                        }
                        text.push('\n');
                    }
                    let name = format!(
                        "{}-{index}.{}",
                        comp.key,
                        if csv { "csv" } else { "ndjson" }
                    );
                    let path = world.path(&name);
                    std::fs::write(&path, text).unwrap();
                    let args = vec![
                        "load".to_string(),
                        "--computation".into(),
                        comp.key.into(),
                        "--kind".into(),
                        kind.into(),
                        "--scope".into(),
                        scope.into(),
                        "--taken-at".into(),
                        taken_at.clone(),
                        path.display().to_string(),
                    ];
                    actions.push((label, Action::Command(args)));
                }
                Via::Sql => {
                    let key = comp.key;
                    let rows: Vec<(String, Option<String>, Option<String>)> = load
                        .rows
                        .iter()
                        .map(|(entity, value)| {
                            let email = match comp.scope {
                                Scope::User => self.user(entity).email_lower(),
                                Scope::Account => None,
                            };
                            let value = (!value.is_null()).then(|| value.to_string());
                            (entity.clone(), email, value)
                        })
                        .collect();
                    let (kind, scope) = (kind.to_string(), scope.to_string());
                    let at = step.taken_at;
                    actions.push((
                        label,
                        Action::Sql(Box::new(move |world: &World| {
                            sql_snapshot(world, key, &kind, &scope, at, &rows)
                        })),
                    ));
                }
            }
        }
        if let Some((pairs, via)) = &step.members {
            let label = format!("load-members (step {index}, {via:?})");
            match via {
                Via::Ndjson | Via::Csv => {
                    let csv = *via == Via::Csv;
                    let mut text = String::new();
                    if csv {
                        text.push_str("group_id,user_id,email\n");
                    }
                    for (g, u) in pairs {
                        let email = self.user(u).email.clone();
                        if csv {
                            text.push_str(&format!(
                                "{g},{u},{}\n",
                                email.as_deref().map(csv_cell).unwrap_or_default()
                            ));
                        } else {
                            let mut row = json!({"group_id": g, "user_id": u});
                            if let Some(email) = email {
                                row["email"] = json!(email);
                            }
                            text.push_str(&format!("{row}\n"));
                        }
                    }
                    let name = format!("members-{index}.{}", if csv { "csv" } else { "ndjson" });
                    let path = world.path(&name);
                    std::fs::write(&path, text).unwrap();
                    let args = vec![
                        "load-members".to_string(),
                        "--taken-at".into(),
                        taken_at.clone(),
                        path.display().to_string(),
                    ];
                    actions.push((label, Action::Command(args)));
                }
                Via::Sql => {
                    let rows: Vec<(String, String, Option<String>)> = pairs
                        .iter()
                        .map(|(g, u)| (g.clone(), u.clone(), self.user(u).email_lower()))
                        .collect();
                    let at = step.taken_at;
                    actions.push((
                        label,
                        Action::Sql(Box::new(move |world: &World| sql_members(world, at, &rows))),
                    ));
                }
            }
        }
        actions
    }
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// An upstream job's plain-SQL snapshot (SPEC section 3): header with `complete = 0`, rows,
/// then `complete = 1` as the last statement; each statement on its own (autocommit).
fn sql_snapshot(
    world: &World,
    key: &str,
    kind: &str,
    scope: &str,
    taken_at: i64,
    rows: &[(String, Option<String>, Option<String>)],
) {
    let db = world.db();
    let existing: Option<String> = db
        .query_row("SELECT id FROM computations WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .ok();
    let id = match existing {
        Some(id) => id,
        None => {
            let prefix = if kind == "audience" { "aud_" } else { "tra_" };
            let id = format!("{prefix}campaign{key}");
            db.execute(
                "INSERT INTO computations (id, key, name, kind, scope, enabled, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
                rusqlite::params![id, key, key, kind, scope, taken_at],
            )
            .unwrap();
            id
        }
    };
    db.execute(
        "INSERT INTO snapshots (computation_id, taken_at, complete) VALUES (?1, ?2, 0)",
        rusqlite::params![id, taken_at],
    )
    .unwrap();
    let snapshot = db.last_insert_rowid();
    for (entity, email, value) in rows {
        db.execute(
            "INSERT INTO snapshot_rows (snapshot_id, entity_id, email, value) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![snapshot, entity, email, value],
        )
        .unwrap();
    }
    db.execute(
        "UPDATE snapshots SET complete = 1, row_count = ?1 WHERE id = ?2",
        rusqlite::params![rows.len() as i64, snapshot],
    )
    .unwrap();
}

fn sql_members(world: &World, taken_at: i64, rows: &[(String, String, Option<String>)]) {
    let db = world.db();
    db.execute(
        "INSERT INTO membership_snapshots (taken_at, complete) VALUES (?1, 0)",
        [taken_at],
    )
    .unwrap();
    let snapshot = db.last_insert_rowid();
    for (g, u, email) in rows {
        db.execute(
            "INSERT INTO membership_rows (snapshot_id, group_id, user_id, email) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![snapshot, g, u, email],
        )
        .unwrap();
    }
    db.execute(
        "UPDATE membership_snapshots SET complete = 1 WHERE id = ?1",
        [snapshot],
    )
    .unwrap();
}
