//! Users named by `--uid`, the policy's `uids` and `run --user`, looked up in this host's user
//! database.

/// Looks up a user name (a seam, so tests need no real users).
pub type UserLookup<'a> = &'a dyn Fn(&str) -> Option<u32>;

/// The uid of `name` in the system's user database.
pub fn system_users(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// A user as written: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum UidSpec {
    Number(i64),
    Name(String),
}

impl UidSpec {
    /// A command-line word: digits are a uid, anything else a name.
    pub fn parse(word: &str) -> Self {
        word.parse::<i64>().map_or_else(|_| UidSpec::Name(word.to_owned()), UidSpec::Number)
    }
}

/// The uid `spec` names: a number in range (not `(uid_t)-1`), or a name `users` knows.
pub fn uid_of(spec: &UidSpec, users: UserLookup<'_>) -> Result<u32, String> {
    match spec {
        UidSpec::Number(n) => u32::try_from(*n)
            .ok()
            .filter(|&n| n != u32::MAX)
            .ok_or_else(|| format!("uid {n} is out of range (0 to 4294967294)")),
        UidSpec::Name(name) => users(name)
            .ok_or_else(|| format!("no user named {name:?} on this host (give a user name or a numeric uid)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_by_number_and_name() {
        let uid = |s: &str| uid_of(&UidSpec::parse(s), &system_users);
        assert_eq!(uid("0").unwrap(), 0);
        assert_eq!(uid("root").unwrap(), 0);
        assert_eq!(uid("4242").unwrap(), 4242);
        let e = uid("no-such-user-xyz").unwrap_err();
        assert!(e.contains("no user named"), "{e}");
    }
}
