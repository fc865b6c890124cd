//! Verification of the RegisterUsage token: a PS256 JWT signed by AWS Marketplace.
//!
//! Fail closed: a token is accepted only when its size, shape, algorithm, signature and every
//! binding claim check out. The algorithm is pinned twice: by reading the header before any
//! cryptography (for a precise message) and by jsonwebtoken's validation.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::key::VerifyingKey;
use super::product_code::ProductCode;

/// Tokens larger than this are refused before any decoding. Real ones are well under 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How far `iat` may run ahead of this machine's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// What a RegisterUsage call sends and its token must say back: one description of the call,
/// used to make the request and to verify the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub product_code: ProductCode,
    pub public_key_version: u32,
    pub nonce: String,
}

/// The claims of a token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub product_code: String,
    pub public_key_version: u32,
    pub nonce: String,
    /// `iat`, seconds since the epoch.
    pub issued_at: u64,
    pub expires_at: Option<u64>,
}

/// A claim the token binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    ProductCode,
    Nonce,
    PublicKeyVersion,
    IssuedAt,
    Expiry,
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Claim::ProductCode => "productCode",
            Claim::Nonce => "nonce",
            Claim::PublicKeyVersion => "publicKeyVersion",
            Claim::IssuedAt => "iat",
            Claim::Expiry => "exp",
        })
    }
}

/// Why a token was refused. Every variant maps to exit code 4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is {len} bytes, over the {MAX_TOKEN_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token uses algorithm {0:?}, only PS256 is accepted")]
    Algorithm(String),
    #[error("the token's signature does not verify with public key version {version}")]
    BadSignature { version: u32 },
    #[error("the token has no valid {0} claim")]
    MissingClaim(Claim),
    #[error("the token's {claim} is {found}, expected {expected}")]
    ClaimMismatch {
        claim: Claim,
        expected: String,
        found: String,
    },
    #[error("the token was issued at {iat}, more than {MAX_CLOCK_SKEW_SECS} s after now ({now})")]
    IssuedInFuture { iat: u64, now: u64 },
    #[error("the token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("the token was issued at {iat}, more than {max_age_secs} s before now ({now})")]
    TooOld {
        iat: u64,
        max_age_secs: u64,
        now: u64,
    },
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
}

/// Claims as they arrive, typed loosely so each problem gets its own error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawClaims {
    product_code: Option<Value>,
    nonce: Option<Value>,
    public_key_version: Option<Value>,
    iat: Option<Value>,
    exp: Option<Value>,
}

/// Verifies `token` against `key` and what the call sent, judging `iat`/`exp` by `now` (epoch
/// seconds).
pub fn verify(
    token: &str,
    key: &VerifyingKey,
    expected: &Binding,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge { len: token.len() });
    }
    let segments: Vec<&str> = token.split('.').collect();
    // The signature may be empty here (as with alg none): the algorithm check names that case.
    if segments.len() != 3 || segments[0].is_empty() || segments[1].is_empty() {
        return Err(TokenError::Malformed(
            "expected three base64url segments".to_owned(),
        ));
    }
    let header: Header = decode_segment(segments[0], "header")?;
    match header.alg.as_deref() {
        Some("PS256") => {}
        Some(other) => return Err(TokenError::Algorithm(other.to_owned())),
        None => return Err(TokenError::Malformed("the header has no alg".to_owned())),
    }

    let mut validation = Validation::new(Algorithm::PS256);
    // AWS tokens carry no exp, aud or iss: require nothing, check exp and iat ourselves.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<RawClaims>(token, &key.decoding, &validation).map_err(
        |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature {
                version: key.version,
            },
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                TokenError::Algorithm("not PS256".to_owned())
            }
            _ => TokenError::Malformed(e.to_string()),
        },
    )?;
    check_claims(data.claims, expected, now)
}

fn check_claims(
    claims: RawClaims,
    expected: &Binding,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    let product_code = string_claim(
        claims.product_code,
        Claim::ProductCode,
        expected.product_code.as_str(),
    )?;
    let nonce = string_claim(claims.nonce, Claim::Nonce, &expected.nonce)?;

    let version = claims
        .public_key_version
        .ok_or(TokenError::MissingClaim(Claim::PublicKeyVersion))?;
    if version.as_u64() != Some(u64::from(expected.public_key_version)) {
        return Err(mismatch(
            Claim::PublicKeyVersion,
            expected.public_key_version.to_string(),
            &version,
        ));
    }

    let issued_at = claims
        .iat
        .as_ref()
        .and_then(numeric_date)
        .ok_or(TokenError::MissingClaim(Claim::IssuedAt))?;
    if issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(TokenError::IssuedInFuture {
            iat: issued_at,
            now,
        });
    }
    let expires_at = match claims.exp {
        None => None,
        Some(exp) => Some(numeric_date(&exp).ok_or(TokenError::MissingClaim(Claim::Expiry))?),
    };
    if let Some(exp) = expires_at.filter(|exp| *exp <= now) {
        return Err(TokenError::Expired { exp, now });
    }
    Ok(VerifiedToken {
        product_code,
        public_key_version: expected.public_key_version,
        nonce,
        issued_at,
        expires_at,
    })
}

fn string_claim(value: Option<Value>, claim: Claim, expected: &str) -> Result<String, TokenError> {
    match value {
        None => Err(TokenError::MissingClaim(claim)),
        Some(Value::String(found)) if found == expected => Ok(found),
        Some(found) => Err(mismatch(claim, format!("{expected:?}"), &found)),
    }
}

fn mismatch(claim: Claim, expected: String, found: &Value) -> TokenError {
    let mut found = found.to_string();
    // Echo at most a short prefix of attacker-controlled text into logs.
    if found.len() > 80 {
        found.truncate(found.char_indices().nth(77).map_or(found.len(), |(i, _)| i));
        found.push_str("...");
    }
    TokenError::ClaimMismatch {
        claim,
        expected,
        found,
    }
}

/// A JWT NumericDate: non-negative seconds, fractions dropped.
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|secs| secs.is_finite() && *secs >= 0.0 && *secs < u64::MAX as f64)
            .map(|secs| secs as u64)
    })
}

fn decode_segment<T: for<'de> Deserialize<'de>>(
    segment: &str,
    what: &str,
) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed(format!("the {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed(format!("the {what} is not a JSON object")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::key::KeySource;
    use metering_emulator::keys::{b64_json, shared_2048, shared_other_2048, RsaKey};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn expected() -> Binding {
        Binding {
            product_code: ProductCode::parse("prod-abc").unwrap(),
            public_key_version: 1,
            nonce: "nonce-123".to_owned(),
        }
    }

    fn key() -> VerifyingKey {
        VerifyingKey::from_pem(&shared_2048().public_spki_pem, 1, KeySource::Inline).unwrap()
    }

    fn claims() -> Value {
        json!({ "productCode": "prod-abc", "nonce": "nonce-123", "publicKeyVersion": 1, "iat": NOW - 5 })
    }

    fn ps256(claims: &Value) -> String {
        shared_2048().sign_jwt(&json!({ "alg": "PS256", "typ": "JWT" }), claims)
    }

    fn with(edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = claims();
        edit(&mut claims);
        ps256(&claims)
    }

    fn check(token: &str) -> Result<VerifiedToken, TokenError> {
        verify(token, &key(), &expected(), NOW)
    }

    fn mismatch_on(result: Result<VerifiedToken, TokenError>) -> Claim {
        match result {
            Err(TokenError::ClaimMismatch { claim, .. }) => claim,
            other => panic!("expected a claim mismatch, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_well_formed_ps256_token() {
        let verified = check(&ps256(&claims())).unwrap();
        assert_eq!(
            verified,
            VerifiedToken {
                product_code: "prod-abc".into(),
                public_key_version: 1,
                nonce: "nonce-123".into(),
                issued_at: NOW - 5,
                expires_at: None,
            }
        );
    }

    #[test]
    fn ignores_unknown_claims_and_honours_a_future_exp() {
        let token = with(|c| {
            c["customerIdentifier"] = json!("x");
            c["aud"] = json!("someone");
            c["exp"] = json!(NOW + 60);
        });
        assert_eq!(check(&token).unwrap().expires_at, Some(NOW + 60));
    }

    #[test]
    fn accepts_a_3072_bit_key_like_production() {
        let big = RsaKey::generate(3072);
        let key = VerifyingKey::from_pem(&big.public_spki_pem, 1, KeySource::Inline).unwrap();
        let token = big.sign_jwt(&json!({ "alg": "PS256" }), &claims());
        assert!(verify(&token, &key, &expected(), NOW).is_ok());
    }

    #[test]
    fn refuses_oversized_tokens_before_decoding() {
        let token = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            check(&token),
            Err(TokenError::TooLarge {
                len: MAX_TOKEN_BYTES + 1
            })
        );
        let signed = with(|c| c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES)));
        assert!(matches!(check(&signed), Err(TokenError::TooLarge { .. })));
    }

    #[test]
    fn refuses_tokens_without_three_segments() {
        let good = ps256(&claims());
        let (head, _) = good.rsplit_once('.').unwrap();
        for bad in [
            "".to_owned(),
            "abc".to_owned(),
            head.to_owned(),
            format!("{good}.extra"),
            format!(".{good}"),
        ] {
            assert!(
                matches!(check(&bad), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_undecodable_header_or_payload() {
        let good = ps256(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let bad_header = format!("!!!.{}.{}", parts[1], parts[2]);
        let not_json_header = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode("nope"),
            parts[1],
            parts[2]
        );
        let no_alg = format!(
            "{}.{}.{}",
            b64_json(&json!({ "typ": "JWT" })),
            parts[1],
            parts[2]
        );
        for bad in [bad_header, not_json_header, no_alg] {
            assert!(
                matches!(check(&bad), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
        // A payload that is not JSON, correctly signed, still fails.
        let input = format!(
            "{}.{}",
            b64_json(&json!({ "alg": "PS256" })),
            URL_SAFE_NO_PAD.encode("[1,2")
        );
        let sig = URL_SAFE_NO_PAD.encode(shared_2048().sign_ps256(input.as_bytes()));
        assert!(matches!(
            check(&format!("{input}.{sig}")),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_every_algorithm_but_ps256() {
        let body = b64_json(&claims());
        for alg in [
            "none", "HS256", "HS512", "RS256", "RS512", "ES256", "PS384", "PS512", "EdDSA", "ps256",
        ] {
            let header = b64_json(&json!({ "alg": alg, "typ": "JWT" }));
            let input = format!("{header}.{body}");
            // Even with a genuine PS256 signature over the input, the header alone must sink it.
            let sig = URL_SAFE_NO_PAD.encode(shared_2048().sign_ps256(input.as_bytes()));
            assert_eq!(
                check(&format!("{input}.{sig}")),
                Err(TokenError::Algorithm(alg.to_owned())),
                "{alg}"
            );
        }
    }

    #[test]
    fn refuses_hs256_keyed_with_the_public_key() {
        // Algorithm confusion: an HMAC keyed with the PEM text the verifier holds.
        let input = format!(
            "{}.{}",
            b64_json(&json!({ "alg": "HS256" })),
            b64_json(&claims())
        );
        let mac_key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            shared_2048().public_spki_pem.as_bytes(),
        );
        let tag = aws_lc_rs::hmac::sign(&mac_key, input.as_bytes());
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(check(&token), Err(TokenError::Algorithm("HS256".into())));
    }

    #[test]
    fn refuses_an_empty_signature() {
        let good = ps256(&claims());
        let (head, _) = good.rsplit_once('.').unwrap();
        assert!(matches!(
            check(&format!("{head}.")),
            Err(TokenError::BadSignature { .. } | TokenError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_a_signature_from_another_key() {
        let token = shared_other_2048().sign_jwt(&json!({ "alg": "PS256" }), &claims());
        assert_eq!(check(&token), Err(TokenError::BadSignature { version: 1 }));
    }

    #[test]
    fn refuses_a_payload_changed_after_signing() {
        let good = ps256(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let mut forged = claims();
        forged["productCode"] = json!("prod-abc ");
        let token = format!("{}.{}.{}", parts[0], b64_json(&forged), parts[2]);
        assert_eq!(check(&token), Err(TokenError::BadSignature { version: 1 }));
        let truncated_sig = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            &parts[2][..parts[2].len() - 4]
        );
        assert!(check(&truncated_sig).is_err());
    }

    #[test]
    fn refuses_a_pkcs1_v15_signature_under_a_ps256_header() {
        use aws_lc_rs::signature::RSA_PKCS1_SHA256;
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(
            pem::parse(&shared_2048().private_pkcs8_pem)
                .unwrap()
                .contents(),
        )
        .unwrap();
        let input = format!(
            "{}.{}",
            b64_json(&json!({ "alg": "PS256" })),
            b64_json(&claims())
        );
        let mut sig = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(check(&token), Err(TokenError::BadSignature { version: 1 }));
    }

    #[test]
    fn refuses_a_different_product_code_nonce_or_key_version() {
        assert_eq!(
            mismatch_on(check(&with(|c| c["productCode"] = json!("prod-xyz")))),
            Claim::ProductCode
        );
        assert_eq!(
            mismatch_on(check(&with(|c| c["productCode"] = json!("PROD-ABC")))),
            Claim::ProductCode
        );
        assert_eq!(
            mismatch_on(check(&with(|c| c["nonce"] = json!("nonce-124")))),
            Claim::Nonce
        );
        assert_eq!(
            mismatch_on(check(&with(|c| c["publicKeyVersion"] = json!(2)))),
            Claim::PublicKeyVersion
        );
    }

    #[test]
    fn refuses_a_key_version_that_is_not_a_json_number() {
        for bad in [json!("1"), json!(1.5), json!(true), json!([1])] {
            let token = with(|c| c["publicKeyVersion"] = bad.clone());
            assert_eq!(mismatch_on(check(&token)), Claim::PublicKeyVersion, "{bad}");
        }
    }

    #[test]
    fn refuses_missing_binding_claims() {
        for (name, claim) in [
            ("productCode", Claim::ProductCode),
            ("nonce", Claim::Nonce),
            ("publicKeyVersion", Claim::PublicKeyVersion),
            ("iat", Claim::IssuedAt),
        ] {
            let token = with(|c| {
                c.as_object_mut().unwrap().remove(name);
            });
            assert_eq!(
                check(&token),
                Err(TokenError::MissingClaim(claim)),
                "{name}"
            );
        }
        assert_eq!(
            check(&with(|c| c["nonce"] = json!(null))),
            Err(TokenError::MissingClaim(Claim::Nonce))
        );
        assert_eq!(
            check(&with(|c| c["iat"] = json!("yesterday"))),
            Err(TokenError::MissingClaim(Claim::IssuedAt))
        );
        assert_eq!(
            check(&with(|c| c["exp"] = json!("never"))),
            Err(TokenError::MissingClaim(Claim::Expiry))
        );
    }

    #[test]
    fn refuses_iat_beyond_the_clock_skew() {
        assert!(check(&with(|c| c["iat"] = json!(NOW + MAX_CLOCK_SKEW_SECS))).is_ok());
        assert_eq!(
            check(&with(|c| c["iat"] = json!(NOW + MAX_CLOCK_SKEW_SECS + 1))),
            Err(TokenError::IssuedInFuture {
                iat: NOW + MAX_CLOCK_SKEW_SECS + 1,
                now: NOW
            })
        );
    }

    #[test]
    fn refuses_an_expired_token() {
        assert_eq!(
            check(&with(|c| c["exp"] = json!(NOW))),
            Err(TokenError::Expired { exp: NOW, now: NOW })
        );
        assert_eq!(
            check(&with(|c| c["exp"] = json!(1))),
            Err(TokenError::Expired { exp: 1, now: NOW })
        );
    }

    #[test]
    fn truncates_long_attacker_text_in_mismatch_messages() {
        let err = check(&with(|c| c["productCode"] = json!("é".repeat(500)))).unwrap_err();
        assert!(err.to_string().chars().count() < 160, "{err}");
    }
}
