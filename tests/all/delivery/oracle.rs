//! The delivery scenarios' steps: how they reach the database (the real `load` / `load-members`
//! commands), and the same steps as the project's one oracle (`audience_sync_oracle`) sees them,
//! to compare the sandbox with what the snapshots say.

use audience_sync_oracle::{Computation, Expected};
use intercom_sandbox::Snapshot;
use serde_json::{Value, json};

use crate::harness::{World, file_arg};

pub use audience_sync_oracle::{Kind, Scope};

/// One snapshot: entity → value (`true` for audience members).
#[derive(Clone)]
pub struct Load {
    pub key: &'static str,
    pub kind: Kind,
    pub scope: Scope,
    pub rows: Vec<(String, Value)>,
}

/// What one step loads before it syncs.
#[derive(Clone)]
pub struct Step {
    pub taken_at: &'static str,
    pub loads: Vec<Load>,
    /// A new membership snapshot: (group, user).
    pub members: Option<Vec<(String, String)>>,
}

pub fn email(user: &str) -> String {
    format!("{user}@example.com")
}

/// Load a step's snapshots with the real `load` / `load-members` commands.
pub fn load_step(world: &World, index: usize, step: &Step) {
    for load in &step.loads {
        let lines: Vec<Value> = load
            .rows
            .iter()
            .map(|(entity, value)| match load.scope {
                Scope::User => match load.kind {
                    Kind::Audience => json!({"user_id": entity, "email": email(entity)}),
                    Kind::Trait => {
                        json!({"user_id": entity, "email": email(entity), "value": value})
                    }
                },
                Scope::Account => match load.kind {
                    Kind::Audience => json!({"group_id": entity}),
                    Kind::Trait => json!({"group_id": entity, "value": value}),
                },
            })
            .collect();
        let path = world.write(&format!("{}-{index}.ndjson", load.key), &lines);
        let kind = if load.kind == Kind::Audience {
            "audience"
        } else {
            "trait"
        };
        let scope = if load.scope == Scope::User {
            "user"
        } else {
            "account"
        };
        world.ok(&[
            "load",
            "--computation",
            load.key,
            "--kind",
            kind,
            "--scope",
            scope,
            "--taken-at",
            step.taken_at,
            &file_arg(&path),
        ]);
    }
    if let Some(members) = &step.members {
        let lines: Vec<Value> = members
            .iter()
            .map(|(g, u)| json!({"group_id": g, "user_id": u, "email": email(u)}))
            .collect();
        let path = world.write(&format!("members-{index}.ndjson"), &lines);
        world.ok(&[
            "load-members",
            "--taken-at",
            step.taken_at,
            &file_arg(&path),
        ]);
    }
}

/// The expected end state after `steps`, each followed by a complete sync.
pub fn expected(steps: &[Step]) -> Expected {
    let mut comps: Vec<Computation> = Vec::new();
    let mut oracle_steps = Vec::new();
    for step in steps {
        let mut loads = Vec::new();
        for load in &step.loads {
            let comp = match comps.iter().position(|c| c.key == load.key) {
                Some(i) => i,
                None => {
                    comps.push(Computation {
                        key: load.key.to_string(),
                        kind: load.kind,
                        scope: load.scope,
                    });
                    comps.len() - 1
                }
            };
            loads.push(audience_sync_oracle::Load {
                comp,
                rows: load.rows.clone(),
            });
        }
        oracle_steps.push(audience_sync_oracle::Step {
            loads,
            members: step.members.clone(),
            full: false,
        });
    }
    audience_sync_oracle::expected(&comps, &oracle_steps, |user| Some(email(user)))
}

/// Compare the sandbox with the expectation; every difference is listed in the panic.
pub fn check(state: &Snapshot, expected: &Expected) {
    let problems = audience_sync_oracle::differences(state, expected);
    assert!(
        problems.is_empty(),
        "the sandbox differs from the snapshots:\n  {}",
        problems.join("\n  ")
    );
}
