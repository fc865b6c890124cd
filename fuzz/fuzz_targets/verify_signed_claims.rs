//! Any header and payload, genuinely signed PS256 with the verifying key: every claim check is
//! reachable. Verification must never panic, and may accept only when every binding claim and
//! the algorithm are exactly what the gate sent.
//!
//! Input: header JSON bytes, a NUL byte, payload JSON bytes.
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use entitlement_gate::domain::key::{KeySource, VerifyingKey};
use entitlement_gate::domain::product_code::ProductCode;
use entitlement_gate::domain::token::{verify, Binding, MAX_CLOCK_SKEW_SECS};
use libfuzzer_sys::fuzz_target;
use metering_emulator::keys::{shared_2048, RsaKey};

const NOW: u64 = 1_800_000_000;

fn keys() -> &'static (Arc<RsaKey>, VerifyingKey) {
    static KEYS: OnceLock<(Arc<RsaKey>, VerifyingKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signing = shared_2048();
        let verifying = VerifyingKey::from_pem(&signing.public_spki_pem, 1, KeySource::Inline)
            .expect("test key");
        (signing, verifying)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let (header, payload) = (&data[..split], &data[split + 1..]);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let (signing, verifying) = keys();
    let token = format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signing.sign_ps256(input.as_bytes()))
    );
    let expected = Binding {
        product_code: ProductCode::parse("prod-abc").expect("valid product code"),
        public_key_version: 1,
        nonce: "nonce-123".to_owned(),
    };
    let Ok(verified) = verify(&token, verifying, &expected, NOW) else {
        return;
    };
    // Accepted: then the header said PS256 and the claims are exactly the expected ones.
    let header: serde_json::Value =
        serde_json::from_slice(header).expect("accepted header is JSON");
    assert_eq!(header["alg"], "PS256");
    let claims: serde_json::Value =
        serde_json::from_slice(payload).expect("accepted payload is JSON");
    assert_eq!(claims["productCode"], "prod-abc");
    assert_eq!(claims["nonce"], "nonce-123");
    assert_eq!(claims["publicKeyVersion"].as_u64(), Some(1));
    assert!(verified.issued_at <= NOW + MAX_CLOCK_SKEW_SECS);
    assert!(verified.expires_at.is_none_or(|exp| exp > NOW));
});
