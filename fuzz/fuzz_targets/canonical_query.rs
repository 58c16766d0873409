//! `signer::encode` and `signer::canonical_query`: the output is ASCII, every byte outside
//! RFC 3986's unreserved set is `%XX` with uppercase hex, the pairs are sorted, and decoding
//! the output gives back exactly the input multiset of pairs.

#![no_main]

use volcengine_ecs::signer::{canonical_query, encode};
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn check_encoded(e: &str, original: &str) {
    let bytes = e.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            assert!(i + 2 < bytes.len(), "{e:?}: truncated escape");
            let hex = &e[i + 1..i + 3];
            assert!(
                hex.bytes()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h)),
                "{e:?}"
            );
            // Only what must be escaped is.
            let v = u8::from_str_radix(hex, 16).unwrap();
            assert!(!unreserved(v), "{e:?} escapes {v:#x}");
            i += 3;
        } else {
            assert!(unreserved(bytes[i]), "{e:?} has a raw {:#x}", bytes[i]);
            i += 1;
        }
    }
    assert_eq!(percent_decode_str(e).decode_utf8().unwrap(), original);
}

fuzz_target!(|pairs: Vec<(String, String)>| {
    for (k, v) in &pairs {
        check_encoded(&encode(k), k);
        check_encoded(&encode(v), v);
    }
    let q = canonical_query(&pairs);
    assert!(q.is_ascii());
    let mut decoded: Vec<(String, String)> = Vec::new();
    let mut encoded: Vec<(&str, &str)> = Vec::new();
    if !q.is_empty() {
        for part in q.split('&') {
            let (k, v) = part.split_once('=').expect("key=value");
            assert!(!v.contains('='));
            encoded.push((k, v));
            decoded.push((
                percent_decode_str(k).decode_utf8().unwrap().into_owned(),
                percent_decode_str(v).decode_utf8().unwrap().into_owned(),
            ));
        }
    }
    assert!(
        encoded.windows(2).all(|w| w[0] <= w[1]),
        "not sorted: {q:?}"
    );
    let mut want = pairs.clone();
    want.sort();
    decoded.sort();
    assert_eq!(decoded, want, "{q:?}");
    // Order of the input does not matter.
    let mut reversed = pairs;
    reversed.reverse();
    assert_eq!(canonical_query(&reversed), q);
});
