//! Who owns what. Every API key belongs to a tenant; records and idempotency keys belong to the
//! tenant whose key created them, and no other tenant can see them. A key with the admin role
//! sees every tenant's records. With API keys off there is one tenant, and it sees everything.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::idempotency::IdempotencyKey;

/// A tenant's name: 1 to 64 characters of `A-Z a-z 0-9 . _ -` (the rule for key names, so a
/// key's name can be its tenant).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tenant(Arc<str>);

pub const MAX_TENANT_LEN: usize = 64;

impl Tenant {
    pub fn parse(name: &str) -> Option<Tenant> {
        let valid = (1..=MAX_TENANT_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        valid.then(|| Tenant(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Tenant {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Tenant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Tenant, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Tenant::parse(&name).ok_or_else(|| serde::de::Error::custom("not a tenant name"))
    }
}

/// Whose request this is, as far as data goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The tenant that owns what this request creates; None with API keys off.
    pub tenant: Option<Tenant>,
    /// Sees (and may change) every tenant's records.
    pub admin: bool,
}

impl Principal {
    /// The one tenant of a service without API keys: it owns everything, so it sees everything.
    pub const OPEN: Principal = Principal {
        tenant: None,
        admin: true,
    };

    pub fn member(tenant: Tenant) -> Principal {
        Principal {
            tenant: Some(tenant),
            admin: false,
        }
    }

    pub fn admin(tenant: Tenant) -> Principal {
        Principal {
            tenant: Some(tenant),
            admin: true,
        }
    }

    /// Whether this principal may see (and change) what `owner` owns.
    pub fn can_see(&self, owner: Option<&Tenant>) -> bool {
        self.admin || (self.tenant.is_some() && self.tenant.as_ref() == owner)
    }

    /// The name an idempotency key is stored under: the principal's tenant, `/`, the key. No
    /// tenant name holds a `/`, so two tenants never share a stored key.
    pub fn scope_key(&self, key: &IdempotencyKey) -> String {
        let key = key.as_str();
        let tenant = self.tenant.as_ref().map_or("", Tenant::as_str);
        let mut scoped = String::with_capacity(tenant.len() + 1 + key.len());
        scoped.push_str(tenant);
        scoped.push('/');
        scoped.push_str(key);
        scoped
    }

    /// The name an import row's `order_id` is stored under: the tenant, `:order:`, the order
    /// id. A caller's key ([`Principal::scope_key`]) has a `/` right after the tenant, and no
    /// tenant name holds a `/` or a `:`, so no `Idempotency-Key` ever names an order id's key,
    /// nor an order id a caller's.
    pub fn order_key(&self, order_id: &str) -> String {
        let tenant = self.tenant.as_ref().map_or("", Tenant::as_str);
        format!("{tenant}:order:{order_id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Tenant {
        Tenant::parse(name).unwrap()
    }

    #[test]
    fn tenant_names_follow_the_key_name_rule() {
        for good in ["a", "shop-a", "eu.west_2", &"x".repeat(64)] {
            assert!(Tenant::parse(good).is_some(), "{good}");
        }
        for bad in ["", "a/b", "a b", "caf\u{e9}", "a:b", &"x".repeat(65)] {
            assert!(Tenant::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn members_see_their_own_tenant_only_and_admins_see_all() {
        let a = Principal::member(tenant("a"));
        assert!(a.can_see(Some(&tenant("a"))));
        assert!(!a.can_see(Some(&tenant("b"))));
        assert!(
            !a.can_see(None),
            "records made with keys off belong to no member"
        );
        let admin = Principal::admin(tenant("ops"));
        assert!(admin.can_see(Some(&tenant("b"))) && admin.can_see(None));
        assert!(Principal::OPEN.can_see(Some(&tenant("b"))) && Principal::OPEN.can_see(None));
    }

    #[test]
    fn scoped_keys_never_collide_across_tenants() {
        let key = |value: &str| IdempotencyKey::parse(value.to_owned()).unwrap();
        let a = Principal::member(tenant("a"));
        let ab = Principal::member(tenant("a-b"));
        assert_ne!(a.scope_key(&key("b/k")), ab.scope_key(&key("k")));
        assert_ne!(a.scope_key(&key("k")), Principal::OPEN.scope_key(&key("k")));
        assert_eq!(a.scope_key(&key("k")), "a/k");
        assert_eq!(Principal::OPEN.scope_key(&key("a/k")), "/a/k");
        // A key may hold `/`, a tenant may not: the first `/` always ends the tenant.
        assert_ne!(
            a.scope_key(&key("x/k")),
            Principal::OPEN.scope_key(&key("a/x/k"))
        );
    }

    #[test]
    fn order_ids_and_callers_keys_never_share_a_stored_name() {
        let a = Principal::member(tenant("a"));
        for principal in [&a, &Principal::OPEN] {
            for order_id in ["Z9", "x/y", ":order:Z9", ""] {
                let order = principal.order_key(order_id);
                // What an older version stored order ids under is a caller's key now.
                for key in [
                    format!("import-order:{order_id}"),
                    order_id.to_owned(),
                    order.clone(),
                    format!(":order:{order_id}"),
                ] {
                    // No caller can give an empty key.
                    let Ok(key) = IdempotencyKey::parse(key) else {
                        continue;
                    };
                    for caller in [&a, &Principal::OPEN] {
                        assert_ne!(caller.scope_key(&key), order, "{key:?}");
                    }
                }
            }
        }
        assert_eq!(a.order_key("Z9"), "a:order:Z9");
        assert_ne!(a.order_key("Z9"), Principal::OPEN.order_key("Z9"));
        assert_ne!(
            Principal::OPEN.order_key("a:order:Z9"),
            a.order_key("Z9"),
            "the first `:` ends the tenant"
        );
    }
}
