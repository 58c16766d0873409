//! Decoded request parameters and the SDK's flattening rules read backwards
//! (`Name.N`, `Name.N.Field`, `Name.N.Field.M`, lowercase booleans).

use std::collections::BTreeMap;

use volcengine_ecs::signer::{canonical_query, sha256_hex};

use super::wire::ApiError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Params(BTreeMap<String, String>);

/// Decodes `a=b&c=d` the way form encoding does (`+` is a space, `%XX` a byte).
pub(crate) fn decode_pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

impl Params {
    /// Later duplicates win; ECS never repeats a key because lists are indexed.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(pairs.into_iter().collect())
    }

    pub fn map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// An empty value counts as absent, as it does for the SDK's unset fields.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    pub fn require(&self, key: &str) -> Result<&str, ApiError> {
        self.non_empty(key).ok_or_else(|| ApiError::missing(key))
    }

    /// Entries under `prefix.` as (rest of key, value), in key order.
    fn under<'a>(&'a self, prefix: &str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let dotted = format!("{prefix}.");
        let skip = dotted.len();
        self.0
            .range(dotted.clone()..)
            .take_while(move |(k, _)| k.starts_with(&dotted))
            .map(move |(k, v)| (&k[skip..], v.as_str()))
    }

    /// `prefix.1`, `prefix.2`, ... in numeric (not byte) order; gaps are allowed.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let mut items: Vec<(u32, String)> = self
            .under(prefix)
            .filter_map(|(rest, v)| rest.parse::<u32>().ok().map(|n| (n, v.to_string())))
            .collect();
        items.sort_by_key(|(n, _)| *n);
        items.into_iter().map(|(_, v)| v).collect()
    }

    /// `prefix.N.*` grouped by N (numeric order), each group with keys relative to it.
    pub fn groups(&self, prefix: &str) -> Vec<Params> {
        let mut groups: BTreeMap<u32, Params> = BTreeMap::new();
        for (rest, v) in self.under(prefix) {
            if let Some((n, field)) = rest.split_once('.') {
                if let Ok(n) = n.parse::<u32>() {
                    groups
                        .entry(n)
                        .or_default()
                        .0
                        .insert(field.to_string(), v.to_string());
                }
            }
        }
        groups.into_values().collect()
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.non_empty(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::malformed(key)),
        }
    }

    pub fn u32(&self, key: &str) -> Result<Option<u32>, ApiError> {
        self.non_empty(key)
            .map(|v| v.parse::<u32>().map_err(|_| ApiError::malformed(key)))
            .transpose()
    }

    /// Identity of a request for ClientToken purposes: every parameter except the routing
    /// ones and the token itself, in canonical order.
    pub fn fingerprint(&self) -> String {
        let pairs: Vec<(String, String)> = self
            .0
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "Action" | "Version" | "ClientToken"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        sha256_hex(canonical_query(&pairs).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Params {
        Params::from_pairs(decode_pairs(s.as_bytes()))
    }

    #[test]
    fn decodes_plus_and_percent() {
        let q = p("Tags.1.Value=my+operator&K=a%20b%2Bc");
        assert_eq!(q.get("Tags.1.Value"), Some("my operator"));
        assert_eq!(q.get("K"), Some("a b+c"));
    }

    #[test]
    fn lists_sort_numerically_and_skip_non_indices() {
        let q =
            p("InstanceIds.10=j&InstanceIds.2=b&InstanceIds.1=a&InstanceIds.x=z&InstanceIdsX.1=q");
        assert_eq!(q.list("InstanceIds"), vec!["a", "b", "j"]);
    }

    #[test]
    fn nested_groups() {
        let q = p(
            "TagFilters.2.Key=b&TagFilters.1.Key=a&TagFilters.1.Values.2=y&TagFilters.1.Values.1=x",
        );
        let g = q.groups("TagFilters");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].get("Key"), Some("a"));
        assert_eq!(g[0].list("Values"), vec!["x", "y"]);
        assert_eq!(g[1].get("Key"), Some("b"));
        assert!(g[1].list("Values").is_empty());
    }

    #[test]
    fn bools_are_strict() {
        let q = p("A=true&B=false&C=yes&D=");
        assert_eq!(q.bool("A").unwrap(), Some(true));
        assert_eq!(q.bool("B").unwrap(), Some(false));
        assert_eq!(q.bool("C").unwrap_err().code, "InvalidC.Malformed");
        assert_eq!(q.bool("D").unwrap(), None);
    }

    #[test]
    fn fingerprint_ignores_order_routing_and_token() {
        let a = p("Action=DeleteInstances&InstanceIds.1=i-a&ClientToken=t1");
        let b = p("ClientToken=t2&InstanceIds.1=i-a&Version=2020-04-01");
        let c = p("InstanceIds.1=i-b");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
