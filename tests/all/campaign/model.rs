//! A scenario's steps as the project's one oracle (`audience_sync_oracle`) sees them: the
//! expected Intercom state is computed from the snapshots alone (SPEC sections 5 and 6), never
//! from the product's diff.

use audience_sync_oracle::{Computation, Load, Step};
pub use audience_sync_oracle::{Expected, differences};

use super::scenario::Scenario;

/// The expected state after the first `steps` steps (each followed by a complete sync).
pub fn expected(scenario: &Scenario, steps: usize) -> Expected {
    let comps: Vec<Computation> = scenario
        .comps
        .iter()
        .map(|c| Computation {
            key: c.key.to_string(),
            kind: c.kind,
            scope: c.scope,
        })
        .collect();
    let steps: Vec<Step> = scenario.steps[..steps]
        .iter()
        .map(|step| Step {
            loads: step
                .loads
                .iter()
                .map(|l| Load {
                    comp: l.comp,
                    rows: l.rows.clone(),
                })
                .collect(),
            members: step.members.as_ref().map(|(pairs, _)| pairs.clone()),
            full: step.full,
        })
        .collect();
    audience_sync_oracle::expected(&comps, &steps, |entity| {
        scenario
            .users
            .iter()
            .find(|u| u.entity == entity)
            .expect("known user")
            .email_lower()
    })
}
