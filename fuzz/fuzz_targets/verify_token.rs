//! Any text as a RegisterUsage token: verification must never panic, never allocate without
//! bound, and never accept (nothing here can carry a signature from the key it checks with).
#![no_main]

use std::sync::OnceLock;

use entitlement_gate::domain::key::{KeySource, VerifyingKey};
use entitlement_gate::domain::product_code::ProductCode;
use entitlement_gate::domain::token::{verify, Binding};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

fn key() -> &'static VerifyingKey {
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = &metering_emulator::keys::shared_2048().public_spki_pem;
        VerifyingKey::from_pem(pem, 1, KeySource::Inline).expect("test key")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let expected = Binding {
        product_code: ProductCode::parse("prod-abc").expect("valid product code"),
        public_key_version: 1,
        nonce: "nonce-123".to_owned(),
    };
    assert!(
        verify(token, key(), &expected, NOW).is_err(),
        "accepted an unsigned token: {token:?}"
    );
});
