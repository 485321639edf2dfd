//! The per-entity diff: what one (old planned value, new snapshot value) pair means, as a
//! Personas change. Pure: no database, no clock.

use crate::domain::Kind;

/// One change of one entity in one run. The numbers are stored in the run's change list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// Audience: became a member.
    Entered = 1,
    /// Audience: stopped being a member.
    Exited = 2,
    /// Trait: a value where there was none.
    Appeared = 3,
    /// Trait: a different value.
    Changed = 4,
    /// Trait: the value went away (identify `null`, no track).
    Gone = 5,
    /// `--full`: the unchanged current value sent again (no track).
    Resent = 6,
    /// Membership: the user joined the account (group with userId).
    Attach = 7,
    /// Membership: the user left the account (companies remove in the identify).
    Detach = 8,
}

impl Change {
    pub fn from_code(code: i64) -> Option<Change> {
        Some(match code {
            1 => Change::Entered,
            2 => Change::Exited,
            3 => Change::Appeared,
            4 => Change::Changed,
            5 => Change::Gone,
            6 => Change::Resent,
            7 => Change::Attach,
            8 => Change::Detach,
            _ => return None,
        })
    }

    pub fn code(self) -> i64 {
        self as i64
    }

    /// Whether this change fires a `track` event when the run tracks at all.
    pub fn tracks(self) -> bool {
        matches!(
            self,
            Change::Entered | Change::Exited | Change::Appeared | Change::Changed
        )
    }
}

/// The planned value after `change`, and the change, for one entity; `None` when nothing is
/// to be sent. Values are JSON text; `None` is no value. Audience values are `true` (member)
/// and, once exited, `false`. `resync` is `--full`: unchanged values are sent again, and an
/// entity planned state holds but the snapshot lacks gets `false` / `null`.
pub fn classify<'a>(
    kind: Kind,
    old: Option<&'a str>,
    new: Option<&'a str>,
    resync: bool,
) -> Option<(Change, Option<&'a str>)> {
    match kind {
        Kind::Audience => {
            let member = new.is_some();
            let was = old == Some("true");
            match (was, member) {
                (false, true) => Some((Change::Entered, Some("true"))),
                (true, false) => Some((Change::Exited, Some("false"))),
                (true, true) if resync => Some((Change::Resent, Some("true"))),
                (false, false) if resync && old.is_some() => Some((Change::Resent, Some("false"))),
                _ => None,
            }
        }
        Kind::Trait => match (old, new) {
            (None, Some(_)) => Some((Change::Appeared, new)),
            (Some(_), None) => Some((Change::Gone, None)),
            (Some(o), Some(n)) if o != n => Some((Change::Changed, new)),
            (Some(_), Some(_)) if resync => Some((Change::Resent, new)),
            _ => None,
        },
    }
}

/// What applying a change does to the planned value (for tests and for reasoning):
/// the state after `classify` is its second element, or `old` when nothing changed.
pub fn apply<'a>(
    old: Option<&'a str>,
    change: Option<(Change, Option<&'a str>)>,
) -> Option<&'a str> {
    match change {
        Some((_, value)) => value,
        None => old,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_table() {
        use Change::*;
        type Case<'a> = (
            Kind,
            Option<&'a str>,
            Option<&'a str>,
            bool,
            Option<(Change, Option<&'a str>)>,
        );
        let cases: &[Case] = &[
            (
                Kind::Audience,
                None,
                Some("true"),
                false,
                Some((Entered, Some("true"))),
            ),
            (
                Kind::Audience,
                Some("false"),
                Some("true"),
                false,
                Some((Entered, Some("true"))),
            ),
            (
                Kind::Audience,
                Some("true"),
                None,
                false,
                Some((Exited, Some("false"))),
            ),
            (Kind::Audience, Some("true"), Some("true"), false, None),
            (Kind::Audience, Some("false"), None, false, None),
            // A user that never had a value gets no false.
            (Kind::Audience, None, None, false, None),
            (
                Kind::Audience,
                Some("true"),
                Some("true"),
                true,
                Some((Resent, Some("true"))),
            ),
            (
                Kind::Audience,
                Some("false"),
                None,
                true,
                Some((Resent, Some("false"))),
            ),
            (
                Kind::Trait,
                None,
                Some("5"),
                false,
                Some((Appeared, Some("5"))),
            ),
            (
                Kind::Trait,
                Some("5"),
                Some("7.5"),
                false,
                Some((Changed, Some("7.5"))),
            ),
            (Kind::Trait, Some("5"), None, false, Some((Gone, None))),
            (Kind::Trait, Some("5"), Some("5"), false, None),
            (
                Kind::Trait,
                Some("5"),
                Some("5"),
                true,
                Some((Resent, Some("5"))),
            ),
            (Kind::Trait, Some("5"), None, true, Some((Gone, None))),
            (Kind::Trait, None, None, true, None),
        ];
        for (kind, old, new, resync, want) in cases {
            assert_eq!(
                classify(*kind, *old, *new, *resync),
                *want,
                "{kind:?} {old:?} -> {new:?} resync={resync}"
            );
        }
    }

    fn value() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            (0..4i32).prop_map(|n| Some(n.to_string())),
            Just(Some("\"a\"".to_string())),
        ]
    }

    proptest! {
        #[test]
        fn applying_the_change_gives_the_new_state(old in value(), new in value(), resync: bool) {
            let change = classify(Kind::Trait, old.as_deref(), new.as_deref(), resync);
            prop_assert_eq!(apply(old.as_deref(), change), new.as_deref());
        }

        #[test]
        fn audience_membership_follows_the_snapshot(old in prop_oneof![Just(None), Just(Some("true")), Just(Some("false"))], member: bool, resync: bool) {
            let new = member.then_some("true");
            let change = classify(Kind::Audience, old, new, resync);
            let after = apply(old, change);
            prop_assert_eq!(after == Some("true"), member);
            // Never a false for someone who never had a value.
            if old.is_none() {
                prop_assert!(after != Some("false"));
            }
        }

        #[test]
        fn a_state_diffed_against_itself_is_silent(v in value()) {
            prop_assert_eq!(classify(Kind::Trait, v.as_deref(), v.as_deref(), false), None);
            let member = v.as_ref().map(|_| "true");
            prop_assert_eq!(classify(Kind::Audience, member, member, false), None);
        }
    }
}
