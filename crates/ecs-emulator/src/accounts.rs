//! Several Volcengine accounts in one emulator, each with its own access keys and its own
//! instances (one `Store` each), as the real cloud keeps tenants apart: an access key
//! belongs to exactly one account, and every real-API call acts only on the store of the
//! account whose key signed it. Instance IDs are unique across all accounts; ClientTokens,
//! deletions and private IPs are per account (each `Store` has its own).

use jiff::Timestamp;
use serde::Serialize;

use volcengine_ecs::signer::Secret;

use super::state::Store;
use super::EmulatorConfig;

/// The account of `EmulatorConfig::access_key`/`secret_key`, and of every admin call that
/// names none.
pub const DEFAULT_ACCOUNT: &str = "default";

/// One account of the emulator's configuration: a name and its access key pairs
/// (`--account NAME:AK:SK` gives one key; several with the same name are one account).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSpec {
    pub name: String,
    /// (access key, secret key) pairs.
    pub keys: Vec<(String, Secret)>,
}

/// 1-64 letters, digits, `.`, `_` or `-` (so it goes into URLs and `NAME:AK:SK` unescaped).
pub fn valid_account_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// An access key added at run time or by `--account`: 1-128 letters, digits, `.`, `_`,
/// `~` or `-` (it is part of the Authorization header's `Credential=AK/...` and of admin
/// URLs). `--access-key` itself is not checked, as before.
pub fn valid_access_key(ak: &str) -> bool {
    (1..=128).contains(&ak.len())
        && ak
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-'))
}

pub(crate) struct Account {
    pub name: String,
    /// Active keys, in the order they were added. A revoked key is removed.
    pub keys: Vec<(String, Secret)>,
    pub store: Store,
}

/// The admin view of an account (`GET /_emulator/accounts`): never a secret key.
#[derive(Debug, Serialize)]
pub(crate) struct AccountView {
    pub name: String,
    pub access_keys: Vec<String>,
    pub instances: usize,
}

/// What `Accounts::add_key` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// A new account with this key.
    Account,
    /// A new key of an existing account.
    Key,
    /// The account already had exactly this key.
    Nothing,
}

/// Every account, the default one first, then in the order they were created.
#[derive(Default)]
pub(crate) struct Accounts {
    list: Vec<Account>,
}

impl Accounts {
    /// The default account with `access_key`/`secret_key`, then `cfg.accounts` (a spec
    /// named `default` adds keys to it). Fails when an access key is given to two accounts,
    /// or twice with different secrets.
    pub fn from_config(cfg: &EmulatorConfig) -> Result<Self, String> {
        let mut a = Self::default();
        a.add_key(DEFAULT_ACCOUNT, &cfg.access_key, cfg.secret_key.clone())?;
        for spec in &cfg.accounts {
            if !valid_account_name(&spec.name) {
                return Err(format!(
                    "account name {:?}: 1-64 letters, digits, '.', '_' or '-'",
                    spec.name
                ));
            }
            a.ensure(&spec.name);
            for (ak, sk) in &spec.keys {
                a.add_key(&spec.name, ak, sk.clone())?;
            }
        }
        Ok(a)
    }

    fn ensure(&mut self, name: &str) -> &mut Account {
        let i = match self.index(name) {
            Some(i) => i,
            None => {
                self.list.push(Account {
                    name: name.to_string(),
                    keys: Vec::new(),
                    store: Store::default(),
                });
                self.list.len() - 1
            }
        };
        &mut self.list[i]
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|a| a.name == name)
    }

    pub fn get(&self, name: &str) -> Option<&Account> {
        self.list.iter().find(|a| a.name == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Account> {
        self.list.iter_mut().find(|a| a.name == name)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Account> {
        self.list.iter_mut()
    }

    /// The account an active access key belongs to, and the key's secret.
    pub fn by_key(&self, ak: &str) -> Option<(&Account, &Secret)> {
        self.list
            .iter()
            .find_map(|a| a.keys.iter().find(|(k, _)| k == ak).map(|(_, sk)| (a, sk)))
    }

    /// Adds a key to the account `name`, creating the account if needed. An access key
    /// belongs to one account: one already active in another account is refused, and so is
    /// the same key with a different secret.
    pub fn add_key(&mut self, name: &str, ak: &str, sk: Secret) -> Result<Added, String> {
        if let Some((owner, have)) = self.by_key(ak) {
            if owner.name != name {
                return Err(format!(
                    "access key {ak} belongs to account {}; an access key belongs to one account",
                    owner.name
                ));
            }
            if *have != sk {
                return Err(format!(
                    "access key {ak} of account {name} already exists with another secret key"
                ));
            }
            return Ok(Added::Nothing);
        }
        let created = self.index(name).is_none();
        self.ensure(name).keys.push((ak.to_string(), sk));
        Ok(if created { Added::Account } else { Added::Key })
    }

    /// Revokes an active key of account `name`; false when there is no such key.
    pub fn revoke(&mut self, name: &str, ak: &str) -> bool {
        let Some(a) = self.get_mut(name) else {
            return false;
        };
        let before = a.keys.len();
        a.keys.retain(|(k, _)| k != ak);
        a.keys.len() != before
    }

    /// `PUT /_emulator/config` `access_key`: the default account's key `old` becomes `new`
    /// (same secret); when `old` was revoked, `new` is added with `secret`.
    pub fn replace_default_key(
        &mut self,
        old: &str,
        new: &str,
        secret: &Secret,
    ) -> Result<(), String> {
        if let Some((owner, _)) = self.by_key(new) {
            if owner.name != DEFAULT_ACCOUNT {
                return Err(format!(
                    "access key {new} belongs to account {}; an access key belongs to one account",
                    owner.name
                ));
            }
        }
        let a = self.ensure(DEFAULT_ACCOUNT);
        let sk = match a.keys.iter().position(|(k, _)| k == old) {
            Some(i) => a.keys.remove(i).1,
            None => secret.clone(),
        };
        if !a.keys.iter().any(|(k, _)| k == new) {
            a.keys.push((new.to_string(), sk));
        }
        Ok(())
    }

    /// The account holding the live instance `id` (due transitions applied), if any.
    pub fn holder_mut(&mut self, id: &str, now: Timestamp) -> Option<&mut Account> {
        let i = self
            .list
            .iter_mut()
            .position(|a| a.store.get_mut(id, now).is_some())?;
        Some(&mut self.list[i])
    }

    /// Runs `f` on account `name`'s store, with a predicate telling whether an ID is taken
    /// in another account (RunInstances keeps IDs globally unique). None: no such account.
    pub fn with_store<R>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Store, &dyn Fn(&str) -> bool) -> R,
    ) -> Option<R> {
        let i = self.index(name)?;
        let (before, rest) = self.list.split_at_mut(i);
        let (me, after) = rest.split_first_mut()?;
        let taken = |id: &str| {
            before
                .iter()
                .chain(after.iter())
                .any(|a| a.store.contains(id))
        };
        Some(f(&mut me.store, &taken))
    }

    pub fn view(a: &mut Account, now: Timestamp) -> AccountView {
        AccountView {
            name: a.name.clone(),
            access_keys: a.keys.iter().map(|(k, _)| k.clone()).collect(),
            instances: a.store.settled(now).count(),
        }
    }

    pub fn views(&mut self, now: Timestamp) -> Vec<AccountView> {
        self.list.iter_mut().map(|a| Self::view(a, now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &[(&str, &str, &str)]) -> EmulatorConfig {
        EmulatorConfig {
            accounts: extra
                .iter()
                .map(|(n, ak, sk)| AccountSpec {
                    name: n.to_string(),
                    keys: vec![(ak.to_string(), Secret::new(*sk))],
                })
                .collect(),
            ..Default::default()
        }
    }

    fn owner(a: &Accounts, ak: &str) -> Option<(String, String)> {
        a.by_key(ak)
            .map(|(acc, sk)| (acc.name.clone(), sk.expose().to_string()))
    }

    #[test]
    fn keys_map_to_exactly_one_account() {
        let mut a = Accounts::from_config(&cfg(&[
            ("team-a", "AKa", "SKa"),
            ("team-a", "AKa2", "SKa2"),
            ("default", "AKd2", "SKd2"),
            ("team-b", "AKb", "SKb"),
            ("team-b", "AKb", "SKb"),
        ]))
        .unwrap();
        let names: Vec<_> = a
            .views(Timestamp::now())
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["default", "team-a", "team-b"]);
        assert_eq!(
            owner(&a, "AKLTemulator"),
            Some(("default".into(), "emulator-secret".into()))
        );
        assert_eq!(owner(&a, "AKd2").unwrap().0, "default");
        assert_eq!(owner(&a, "AKa2"), Some(("team-a".into(), "SKa2".into())));
        assert_eq!(
            a.get("team-b").unwrap().keys.len(),
            1,
            "a repeated key is one key"
        );
        assert_eq!(owner(&a, "AKnope"), None);

        // Runtime: a new account, a new key, a key already there, conflicts.
        assert_eq!(
            a.add_key("team-c", "AKc", Secret::new("s")),
            Ok(Added::Account)
        );
        assert_eq!(
            a.add_key("team-c", "AKc2", Secret::new("s")),
            Ok(Added::Key)
        );
        assert_eq!(
            a.add_key("team-c", "AKc", Secret::new("s")),
            Ok(Added::Nothing)
        );
        assert!(a.add_key("team-c", "AKc", Secret::new("other")).is_err());
        assert!(a.add_key("team-c", "AKa", Secret::new("SKa")).is_err());
        assert!(a.revoke("team-c", "AKc"));
        assert!(!a.revoke("team-c", "AKc"), "already revoked");
        assert!(!a.revoke("team-a", "AKc2"), "another account's key");
        assert!(!a.revoke("nobody", "AKc2"));
        assert_eq!(owner(&a, "AKc"), None);
        assert_eq!(owner(&a, "AKc2").unwrap().0, "team-c");

        assert!(Accounts::from_config(&cfg(&[("x", "AKLTemulator", "emulator-secret")])).is_err());
        assert!(Accounts::from_config(&cfg(&[("a", "K", "1"), ("b", "K", "1")])).is_err());
        assert!(Accounts::from_config(&cfg(&[("a", "K", "1"), ("a", "K", "2")])).is_err());
        assert!(Accounts::from_config(&cfg(&[("a b", "K", "1")])).is_err());
    }

    #[test]
    fn the_default_key_can_be_replaced_but_not_by_another_accounts() {
        let mut a = Accounts::from_config(&cfg(&[("team-a", "AKa", "SKa")])).unwrap();
        let sk = Secret::new("emulator-secret");
        assert!(a.replace_default_key("AKLTemulator", "AKa", &sk).is_err());
        a.replace_default_key("AKLTemulator", "AKnew", &sk).unwrap();
        assert_eq!(owner(&a, "AKLTemulator"), None);
        assert_eq!(
            owner(&a, "AKnew"),
            Some(("default".into(), "emulator-secret".into()))
        );
    }

    #[test]
    fn names_and_keys() {
        for ok in ["default", "team-a", "A.b_c-1"] {
            assert!(valid_account_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a:b", "a/b", &"a".repeat(65)] {
            assert!(!valid_account_name(bad), "{bad}");
        }
        for ok in ["AKLTabc", "a.b_c~d-1"] {
            assert!(valid_access_key(ok), "{ok}");
        }
        for bad in ["", "a b", "a:b", "a/b", "a,b", "a=b"] {
            assert!(!valid_access_key(bad), "{bad}");
        }
    }
}
