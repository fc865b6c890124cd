//! RSA test keys: generated fresh (or loaded from PEM) with aws-lc-rs, exported as PEM in every
//! form a seller might configure, and able to sign PS256 JWTs.

use std::sync::{Arc, OnceLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PSS_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// An RSA key pair with its PEM encodings.
pub struct RsaKey {
    key_pair: KeyPair,
    /// `-----BEGIN PRIVATE KEY-----` (PKCS#8), what `--private-key-file` loads.
    pub private_pkcs8_pem: String,
    /// `-----BEGIN PUBLIC KEY-----` (SPKI), the form AWS hands sellers.
    pub public_spki_pem: String,
    /// `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1).
    pub public_pkcs1_pem: String,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaKey")
            .field("bits", &self.bits())
            .finish()
    }
}

impl RsaKey {
    /// Generates a key of 2048, 3072, 4096 or 8192 bits.
    pub fn generate(bits: usize) -> Self {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            other => panic!("unsupported RSA key size {other}"),
        };
        Self::from_key_pair(KeyPair::generate(size).expect("RSA key generation"))
    }

    /// Loads a PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM.
    pub fn from_private_pem(pem: &str) -> Result<Self, String> {
        let pem = pem::parse(pem).map_err(|e| format!("not a PEM block: {e}"))?;
        let key_pair = match pem.tag() {
            "PRIVATE KEY" => KeyPair::from_pkcs8(pem.contents()),
            "RSA PRIVATE KEY" => KeyPair::from_der(pem.contents()),
            other => return Err(format!("expected an RSA private key, found {other}")),
        }
        .map_err(|e| format!("not a usable RSA private key: {e}"))?;
        Ok(Self::from_key_pair(key_pair))
    }

    fn from_key_pair(key_pair: KeyPair) -> Self {
        let pkcs8 = key_pair.as_der().expect("PKCS#8 export");
        let spki = key_pair.public_key().as_der().expect("SPKI export");
        let pkcs1 = key_pair.public_key().as_ref().to_vec();
        Self {
            private_pkcs8_pem: encode_pem("PRIVATE KEY", pkcs8.as_ref()),
            public_spki_pem: encode_pem("PUBLIC KEY", spki.as_ref()),
            public_pkcs1_pem: encode_pem("RSA PUBLIC KEY", &pkcs1),
            key_pair,
        }
    }

    pub fn bits(&self) -> usize {
        self.key_pair.public_modulus_len() * 8
    }

    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt: the PS256 AWS uses.
    pub fn sign_ps256(&self, message: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; self.key_pair.public_modulus_len()];
        self.key_pair
            .sign(
                &RSA_PSS_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                message,
                &mut signature,
            )
            .expect("RSA-PSS signing");
        signature
    }

    /// A compact JWS over the given header and claims, signed PS256 with this key.
    pub fn sign_jwt(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let signing_input = format!("{}.{}", b64_json(header), b64_json(claims));
        let signature = URL_SAFE_NO_PAD.encode(self.sign_ps256(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }
}

/// A 2048-bit key generated once per process, so test suites pay for key generation once.
pub fn shared_2048() -> Arc<RsaKey> {
    static KEY: OnceLock<Arc<RsaKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(RsaKey::generate(2048))).clone()
}

/// A second, unrelated 2048-bit key: tokens it signs must not verify with [`shared_2048`].
pub fn shared_other_2048() -> Arc<RsaKey> {
    static KEY: OnceLock<Arc<RsaKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(RsaKey::generate(2048))).clone()
}

/// An EC P-256 public key in SPKI PEM, for tests that must refuse non-RSA keys.
pub fn ec_p256_public_pem() -> String {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key generation");
    let spki = pair.public_key().as_der().expect("EC SPKI export");
    encode_pem("PUBLIC KEY", spki.as_ref())
}

pub fn b64_json(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

pub fn encode_pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_pem_round_trips() {
        let key = shared_2048();
        let loaded = RsaKey::from_private_pem(&key.private_pkcs8_pem).unwrap();
        assert_eq!(loaded.public_spki_pem, key.public_spki_pem);
        assert_eq!(loaded.bits(), 2048);
        assert!(RsaKey::from_private_pem(&key.public_spki_pem).is_err());
    }

    #[test]
    fn ps256_signatures_verify_with_the_public_key() {
        use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PSS_2048_8192_SHA256};
        let key = shared_2048();
        let signature = key.sign_ps256(b"message");
        let public = UnparsedPublicKey::new(
            &RSA_PSS_2048_8192_SHA256,
            key.key_pair.public_key().as_ref(),
        );
        assert!(public.verify(b"message", &signature).is_ok());
        assert!(public.verify(b"massage", &signature).is_err());
    }
}
