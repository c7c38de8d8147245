//! Token verification (`ringcast_auth::Verifier`), capability patterns
//! (`ringcast_core::ChannelPattern`) and channel-name validation (`ChannelName::new`).
//!
//! Properties:
//! - nothing panics: names, patterns, raw tokens, and tokens correctly signed over
//!   arbitrary claim bytes (so the claims parser is reached past the signature check);
//! - a channel accepted by `ChannelName::new` round-trips through `as_str`, is at most
//!   255 printable ASCII bytes, has a valid namespace, and is itself a valid pattern that
//!   matches it (an exact pattern matches itself, and only itself);
//! - `ChannelPattern::matches` agrees with a reference glob; `*` matches every channel,
//!   and `prefix*` every channel starting with `prefix`;
//! - a rejected token is `unauthorized` or `token_expired`, nothing else; an accepted
//!   one has a 1..=256-byte `sub`, at most 256 patterns per capability, each valid;
//! - a signed token granting `subscribe: [pattern]` is accepted exactly when the pattern
//!   is valid, and then grants subscribe (never publish) exactly where the pattern matches.
#![no_main]

use arbitrary::Arbitrary;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use ringcast_core::{ChannelName, ChannelPattern, NamespaceName};
use ringcast_proto::ErrorCode;
use ringcast_auth::{AuthConfig, AuthError, Identity, Verifier, MAX_PATTERNS_PER_CAP};
use std::sync::OnceLock;

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret!";

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    channel: &'a str,
    pattern: &'a str,
    /// Tried as a whole token, unsigned.
    raw_token: &'a str,
    /// Signed correctly with HS256, so verification reaches the claims.
    claims: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let channel = ChannelName::new(input.channel).ok();
    if let Some(c) = &channel {
        check_channel(c, input.channel);
    }
    if let Ok(p) = ChannelPattern::new(input.pattern) {
        assert_eq!(p.as_str(), input.pattern);
        if let Some(c) = &channel {
            check_match(&p, c);
        }
    }
    let v = verifier();
    check_verdict(v.verify(input.raw_token));
    check_verdict(v.verify(&sign(input.claims)));
    check_granted(v, input.pattern, channel.as_ref());
});

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let c = AuthConfig { hmac_secret: Some(SECRET.into()), ..AuthConfig::default() };
        Verifier::from_config(&c).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn check_channel(c: &ChannelName, raw: &str) {
    assert_eq!(c.as_str(), raw);
    assert!(raw.len() <= 255 && raw.bytes().all(|b| b.is_ascii_graphic()), "{raw:?}");
    match raw.split_once(':') {
        Some((ns, _)) => {
            assert_eq!(c.namespace(), ns);
            assert!(NamespaceName::new(ns).is_ok(), "namespace {ns:?} of {raw:?} is invalid");
        }
        None => assert_eq!(c.namespace(), NamespaceName::DEFAULT),
    }
    let exact = ChannelPattern::new(raw).unwrap_or_else(|e| panic!("channel {raw:?} is not a pattern: {e}"));
    assert!(exact.matches(c), "{raw:?} does not match itself");
    let all = ChannelPattern::new("*").unwrap_or_else(|e| panic!("{e}"));
    assert!(all.matches(c));
}

fn check_match(pattern: &ChannelPattern, c: &ChannelName) {
    let (p, s) = (pattern.as_str().as_bytes(), c.as_str().as_bytes());
    assert_eq!(pattern.matches(c), reference_glob(p, s), "pattern {:?} vs channel {c:?}", pattern.as_str());
    if !p.contains(&b'*') {
        assert_eq!(pattern.matches(c), p == s, "exact pattern {:?} vs {c:?}", pattern.as_str());
        if p.len() < 255 {
            let prefix = ChannelPattern::new(&format!("{}*", pattern.as_str())).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(prefix.matches(c), s.starts_with(p));
        }
    }
}

/// Textbook dynamic-programming glob: `m[i][j]` = p[..i] matches s[..j].
fn reference_glob(p: &[u8], s: &[u8]) -> bool {
    let mut row = vec![false; s.len() + 1];
    row[0] = true;
    for &pc in p {
        let mut next = vec![false; s.len() + 1];
        if pc == b'*' {
            let mut any = false;
            for j in 0..=s.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=s.len() {
                next[j] = row[j - 1] && s[j - 1] == pc;
            }
        }
        row = next;
    }
    row[s.len()]
}

fn check_verdict(r: Result<Identity, AuthError>) {
    match r {
        Err(e) => assert!(matches!(e.code, ErrorCode::Unauthorized | ErrorCode::TokenExpired), "code {:?}", e.code),
        Ok(id) => {
            let user = id.user.as_deref().unwrap_or_else(|| panic!("accepted token without sub"));
            assert!((1..=256).contains(&user.len()));
            assert!(id.expires_at.is_some(), "accepted token without exp");
            for list in [&id.subscribe, &id.publish] {
                assert!(list.len() <= MAX_PATTERNS_PER_CAP);
                for p in list {
                    assert_eq!(ChannelPattern::new(p.as_str()).as_ref(), Ok(p));
                }
            }
        }
    }
}

fn check_granted(v: &Verifier, pattern: &str, channel: Option<&ChannelName>) {
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let claims = serde_json::json!({"sub": "fuzz", "exp": exp, "caps": {"subscribe": [pattern]}});
    let token = sign(claims.to_string().as_bytes());
    let parsed = ChannelPattern::new(pattern);
    match (v.verify(&token), parsed) {
        (Ok(id), Ok(p)) => {
            assert_eq!(id.subscribe, vec![p.clone()]);
            assert!(id.publish.is_empty());
            if let Some(c) = channel {
                assert_eq!(id.may_subscribe(c), p.matches(c));
                assert!(!id.may_publish(c), "deny by default");
            }
        }
        (Err(e), Err(_)) => assert_eq!(e.code, ErrorCode::Unauthorized),
        (got, p) => panic!("pattern {pattern:?} ({p:?}) gave {got:?}"),
    }
}

/// An HS256 JWT over `claims` as they are (not necessarily JSON), signed with `SECRET`.
fn sign(claims: &[u8]) -> String {
    let message =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#), URL_SAFE_NO_PAD.encode(claims));
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .unwrap_or_else(|e| panic!("cannot sign: {e}"));
    format!("{message}.{signature}")
}
