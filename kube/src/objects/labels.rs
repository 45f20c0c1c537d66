//! The labels and names every object mover creates carries: who manages it, which migration it
//! belongs to, and which claim and end it serves. Names are DNS-1035 labels (`[a-z]([-a-z0-9]*
//! [a-z0-9])?`, at most 63 characters), valid for pods, services and secrets alike.

use std::collections::BTreeMap;

/// `app.kubernetes.io/managed-by: mover`, on every object mover creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mover");
/// The migration an object belongs to; the value is [`Migration::id`].
pub const MIGRATION_LABEL: &str = "mover.io/migration";
/// Which end of a transfer a pod serves: `source` or `target`.
pub const ROLE_LABEL: &str = "mover.io/role";
/// The claim a transfer pod serves (see [`claim_label_value`]).
pub const CLAIM_LABEL: &str = "mover.io/claim";
/// `app.kubernetes.io/name`: `mover-agent` on agent pods.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// The plan a migration runs, as an annotation (a plan's name need not fit a label value).
pub const PLAN_ANNOTATION: &str = "mover.io/plan";

/// The longest DNS-1035 label, hence the longest object name mover makes.
pub const MAX_NAME: usize = 63;
/// The longest [`Migration::id`], so that every name built from it leaves room for a claim.
pub const MAX_MIGRATION_ID: usize = 20;

/// One migration: its id names and labels every object it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// A DNS-1123 label of at most [`MAX_MIGRATION_ID`] characters.
    pub id: String,
    /// The plan's name (free text).
    pub plan: String,
}

/// A migration id that is not a short DNS-1123 label.
#[derive(Debug, thiserror::Error)]
#[error(
    "migration id `{id}` is not a DNS-1123 label of at most {MAX_MIGRATION_ID} characters \
     (lower-case letters, digits and `-`, starting and ending with a letter or digit)"
)]
pub struct InvalidMigrationId {
    /// The id refused.
    pub id: String,
}

impl Migration {
    /// A migration with a checked id.
    pub fn new(id: impl Into<String>, plan: impl Into<String>) -> Result<Self, InvalidMigrationId> {
        let id = id.into();
        if id.len() > MAX_MIGRATION_ID || !is_dns_label(&id) {
            return Err(InvalidMigrationId { id });
        }
        Ok(Migration { id, plan: plan.into() })
    }

    /// The labels every object of this migration carries: managed-by and the migration id.
    #[must_use]
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (MIGRATION_LABEL.to_owned(), self.id.clone()),
        ])
    }

    /// The annotations every object of this migration carries: the plan's name.
    #[must_use]
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(PLAN_ANNOTATION.to_owned(), self.plan.clone())])
    }

    /// The label selector of everything this migration created, for list and deletecollection:
    /// `mover.io/migration=<id>`.
    #[must_use]
    pub fn selector(&self) -> String {
        format!("{MIGRATION_LABEL}={}", self.id)
    }
}

/// Whether `text` is a DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric.
#[must_use]
pub fn is_dns_label(text: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=MAX_NAME).contains(&text.len())
        && text.chars().all(|c| alphanumeric(c) || c == '-')
        && text.starts_with(alphanumeric)
        && text.ends_with(alphanumeric)
}

/// A DNS-1035 name made of `prefix` (which must start with a letter) and `part`: `part`'s
/// characters outside `[a-z0-9-]` become `-`, and when that changed anything or the name is
/// longer than 63, the name is cut and ends in a hash of `part`, so that distinct parts give
/// distinct names.
#[must_use]
pub fn dns_name(prefix: &str, part: &str) -> String {
    let cleaned: String =
        part.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' { c } else { '-' }).collect();
    let whole = format!("{prefix}{cleaned}");
    if cleaned == part && whole.len() <= MAX_NAME && is_dns_label(&whole) {
        return whole;
    }
    let suffix = short_hash(part);
    let mut cut = whole;
    cut.truncate(MAX_NAME - suffix.len() - 1);
    let stem = cut.trim_end_matches('-');
    format!("{stem}-{suffix}")
}

/// The value of [`CLAIM_LABEL`] for `claim`: the claim's name when it fits a label value (at
/// most 63 characters), else its first 54 characters and a hash of the whole name.
#[must_use]
pub fn claim_label_value(claim: &str) -> String {
    if claim.len() <= MAX_NAME {
        return claim.to_owned();
    }
    let suffix = short_hash(claim);
    let stem = claim[..MAX_NAME - suffix.len() - 1].trim_end_matches(['-', '.']);
    format!("{stem}-{suffix}")
}

/// Eight hex digits of FNV-1a over `text`: stable across versions and platforms, so names
/// computed by one mover are found again by the next.
fn short_hash(text: &str) -> String {
    let hash = text
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    format!("{:08x}", hash >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_ids_are_short_dns_labels() {
        assert!(Migration::new("m-7f3a", "plan").is_ok());
        for bad in ["", "Upper", "-dash", "dash-", "under_score", "a.b", "abcdefghij-abcdefghij"] {
            assert!(Migration::new(bad, "plan").is_err(), "{bad}");
        }
        let migration = Migration::new("m1", "my plan").unwrap();
        assert_eq!(migration.selector(), "mover.io/migration=m1");
        assert_eq!(migration.labels()[MIGRATION_LABEL], "m1");
        assert_eq!(migration.labels()["app.kubernetes.io/managed-by"], "mover");
    }

    #[test]
    fn names_are_dns_labels_and_distinct_when_cut() {
        assert_eq!(dns_name("mover-m1-source-", "data"), "mover-m1-source-data");
        let long_a = format!("{}a", "x".repeat(80));
        let long_b = format!("{}b", "x".repeat(80));
        let (a, b) = (dns_name("mover-m1-source-", &long_a), dns_name("mover-m1-source-", &long_b));
        assert_ne!(a, b);
        for name in [&a, &b, &dns_name("mover-m1-target-", "db.data-0"), &dns_name("p-", "x-.-y")] {
            assert!(name.len() <= MAX_NAME && is_dns_label(name), "{name}");
        }
        // A dot is not allowed in a service name: replaced, and the hash keeps `a.b` and `a-b` apart.
        assert_ne!(dns_name("p-", "a.b"), dns_name("p-", "a-b"));
    }

    #[test]
    fn claim_label_values_fit() {
        assert_eq!(claim_label_value("data"), "data");
        let long = "d".repeat(200);
        let value = claim_label_value(&long);
        assert_eq!(value.len(), MAX_NAME);
        assert_ne!(value, claim_label_value(&"d".repeat(199)));
    }
}
