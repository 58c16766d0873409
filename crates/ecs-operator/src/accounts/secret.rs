//! An account's key from its Secret: the data keys are the environment variables'
//! names, so `kubectl create secret generic --from-env-file` of a `VOLCENGINE_*` file works.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

use crate::cloud::signer::{Credentials, Secret};

pub const ACCESS_KEY: &str = "VOLCENGINE_ACCESS_KEY";
pub const SECRET_KEY: &str = "VOLCENGINE_SECRET_KEY";
pub const SESSION_TOKEN: &str = "VOLCENGINE_SESSION_TOKEN";

/// The key in a Secret's data, or why there is none. The message names keys, never values.
pub fn credentials(data: Option<&BTreeMap<String, ByteString>>) -> Result<Credentials, String> {
    let empty = BTreeMap::new();
    let data = data.unwrap_or(&empty);
    let text = |k: &str| -> Result<Option<String>, String> {
        match data.get(k) {
            None => Ok(None),
            Some(b) => String::from_utf8(b.0.clone())
                .map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty()))
                .map_err(|_| format!("data key {k} is not UTF-8")),
        }
    };
    let access_key =
        text(ACCESS_KEY)?.ok_or_else(|| format!("data key {ACCESS_KEY} is missing or empty"))?;
    let secret_key =
        text(SECRET_KEY)?.ok_or_else(|| format!("data key {SECRET_KEY} is missing or empty"))?;
    if access_key.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "data key {ACCESS_KEY} holds characters an access key ID cannot have"
        ));
    }
    Ok(Credentials {
        access_key,
        secret_key: Secret::new(secret_key),
        session_token: text(SESSION_TOKEN)?.map(Secret::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &[u8])]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect()
    }

    #[test]
    fn a_complete_secret_gives_the_key_and_a_broken_one_says_which_field() {
        let ok = credentials(Some(&data(&[
            (ACCESS_KEY, b"AKa\n"),
            (SECRET_KEY, b"sk-a"),
            (SESSION_TOKEN, b"tok"),
        ])))
        .unwrap();
        assert_eq!(
            ok.access_key, "AKa",
            "a trailing newline (echo > file) is trimmed"
        );
        assert_eq!(ok.secret_key.expose(), "sk-a");
        assert_eq!(ok.session_token.as_ref().map(|t| t.expose()), Some("tok"));
        let no_token = credentials(Some(&data(&[
            (ACCESS_KEY, b"AKa"),
            (SECRET_KEY, b"sk"),
            (SESSION_TOKEN, b""),
        ])))
        .unwrap();
        assert!(no_token.session_token.is_none());
        let rows: Vec<(Option<BTreeMap<String, ByteString>>, &str)> = vec![
            (None, ACCESS_KEY),
            (Some(data(&[(SECRET_KEY, b"sk-secret-value")])), ACCESS_KEY),
            (Some(data(&[(ACCESS_KEY, b"AKa")])), SECRET_KEY),
            (
                Some(data(&[(ACCESS_KEY, b"AKa"), (SECRET_KEY, b"  ")])),
                SECRET_KEY,
            ),
            (
                Some(data(&[
                    (ACCESS_KEY, b"AK a"),
                    (SECRET_KEY, b"sk-secret-value"),
                ])),
                ACCESS_KEY,
            ),
            (
                Some(data(&[(ACCESS_KEY, b"AKa"), (SECRET_KEY, &[0xff, 0xfe])])),
                SECRET_KEY,
            ),
        ];
        for (i, (d, names)) in rows.into_iter().enumerate() {
            let e = credentials(d.as_ref())
                .err()
                .unwrap_or_else(|| panic!("row {i} accepted"));
            assert!(e.contains(names), "row {i}: {e}");
            assert!(
                !e.contains("sk-secret-value"),
                "row {i} shows the secret: {e}"
            );
        }
    }
}
