//! The vocabulary every layer shares: what a computation is (`Kind`), whose values it holds
//! (`Scope`), which Segment call a message is (`MessageKind`) and which delivery lane it goes
//! down (`Lane`). Parsed once at the edge (settings, `load`, the database's text columns); inner
//! layers take these types.

/// Which snapshot rows describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audience,
    Trait,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audience => "audience",
            Kind::Trait => "trait",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "audience" => Some(Kind::Audience),
            "trait" => Some(Kind::Trait),
            _ => None,
        }
    }
}

/// Whose values a computation holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Account,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Account => "account",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "user" => Some(Scope::User),
            "account" => Some(Scope::Account),
            _ => None,
        }
    }
}

/// Which Segment call a message is: the three the Intercom destination maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Identify,
    Track,
    Group,
}

impl MessageKind {
    /// The Segment `type` (and the outbox's `type` column).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Identify => "identify",
            MessageKind::Track => "track",
            MessageKind::Group => "group",
        }
    }

    pub fn parse(text: &str) -> Option<MessageKind> {
        match text {
            "identify" => Some(MessageKind::Identify),
            "track" => Some(MessageKind::Track),
            "group" => Some(MessageKind::Group),
            _ => None,
        }
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery lane: the messages of one user, or of one account's own values, delivered
/// strictly in outbox order, one at a time; different lanes are independent. Stored as its text:
/// the user's entity id, or `account:<group id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane(String);

impl Lane {
    /// The lane of a user's messages (identify, track, attach): its entity id.
    pub fn user(entity_id: &str) -> Lane {
        Lane(entity_id.to_string())
    }

    /// The lane of an account's own values (a group call without a user).
    pub fn account(group_id: &str) -> Lane {
        Lane(format!("account:{group_id}"))
    }

    /// A lane as the outbox stores it.
    pub fn from_stored(text: String) -> Lane {
        Lane(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Lane {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in [
            MessageKind::Identify,
            MessageKind::Track,
            MessageKind::Group,
        ] {
            assert_eq!(MessageKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(MessageKind::parse("page"), None);
        assert_eq!(Lane::user("u1").as_str(), "u1");
        assert_eq!(Lane::account("acme").as_str(), "account:acme");
        assert_ne!(Lane::account("u1"), Lane::user("u1"));
        for kind in [Kind::Audience, Kind::Trait] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        for scope in [Scope::User, Scope::Account] {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Kind::parse("Audience"), None);
        assert_eq!(Scope::parse("group"), None);
    }
}
