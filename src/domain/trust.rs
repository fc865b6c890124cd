//! Trust anchors: the product codes and public keys a seller can bake into a locked build.
//!
//! AWS warns that a product code a buyer can change (a Helm value, an env var) must be checked
//! against a trusted list, and a buyer who can swap the key and the endpoint can forge tokens. A
//! locked build closes both holes; an open build (the default, used by tests) trusts its
//! run-time configuration.

use super::files;
use super::key::{KeyError, KeyRequest, KeySource, VerifyingKey, MAX_KEY_FILE_BYTES};
use super::product_code::{ProductCode, ProductCodeError};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/trust_anchors.rs"));
}

/// What this binary trusts regardless of its run-time configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustAnchors {
    /// When set, only these product codes may be checked.
    pub product_codes: Option<&'static [&'static str]>,
    /// `(public key version, SPKI PEM)`; when non-empty, run-time keys are refused.
    pub keys: &'static [(u32, &'static str)],
}

impl TrustAnchors {
    /// The anchors compiled into this binary (see `build.rs`).
    pub const EMBEDDED: TrustAnchors = TrustAnchors {
        product_codes: embedded::PRODUCT_CODES,
        keys: embedded::KEYS,
    };

    /// An open build: product code and key come from run-time configuration.
    pub const OPEN: TrustAnchors = TrustAnchors {
        product_codes: None,
        keys: &[],
    };

    pub fn is_locked(&self) -> bool {
        self.product_codes.is_some() || !self.keys.is_empty()
    }

    pub fn trusts_product_code(&self, product_code: &str) -> bool {
        self.product_codes
            .is_none_or(|codes| codes.contains(&product_code))
    }

    pub fn key_for_version(&self, version: u32) -> Option<&'static str> {
        self.keys
            .iter()
            .find(|(embedded_version, _)| *embedded_version == version)
            .map(|(_, pem)| *pem)
    }

    pub fn key_versions(&self) -> Vec<u32> {
        self.keys.iter().map(|(version, _)| *version).collect()
    }

    /// The product code to check: valid by the RegisterUsage model, and in the trusted list of a
    /// locked build.
    pub fn product_code(&self, code: Option<&str>) -> Result<ProductCode, ProductCodeError> {
        let code = code.ok_or(ProductCodeError::Missing)?;
        let product_code = ProductCode::parse(code)?;
        if !self.trusts_product_code(code) {
            return Err(ProductCodeError::Untrusted {
                code: code.to_owned(),
            });
        }
        Ok(product_code)
    }

    /// The verifying key for the requested version: embedded in a locked build (which refuses
    /// run-time keys), else exactly one run-time key, as a file or as PEM text.
    pub fn verifying_key(&self, request: &KeyRequest) -> Result<VerifyingKey, KeyError> {
        let version = request.version;
        if !self.keys.is_empty() {
            if request.file.is_some() || request.pem.is_some() {
                return Err(KeyError::RuntimeKeyRefused);
            }
            let pem = self
                .key_for_version(version)
                .ok_or_else(|| KeyError::NoEmbeddedKey {
                    version,
                    available: self.key_versions(),
                })?;
            return VerifyingKey::from_pem(pem, version, KeySource::Embedded);
        }
        match (&request.file, &request.pem) {
            (Some(_), Some(_)) => Err(KeyError::Conflicting),
            (None, None) => Err(KeyError::Missing),
            (None, Some(pem)) => VerifyingKey::from_pem(pem, version, KeySource::Inline),
            (Some(path), None) => {
                let pem =
                    files::read_limited_to_string(path, MAX_KEY_FILE_BYTES).map_err(|source| {
                        KeyError::Unreadable {
                            path: path.clone(),
                            source,
                        }
                    })?;
                VerifyingKey::from_pem(&pem, version, KeySource::File(path.clone()))
            }
        }
    }

    /// `0.1.0 (open build: ...)`: the version and which kind of build this is.
    pub fn version_line(&self) -> String {
        format!("{} ({})", env!("CARGO_PKG_VERSION"), self.describe())
    }

    /// One line for `--version`, saying which kind of build this is.
    pub fn describe(&self) -> String {
        if !self.is_locked() {
            return "open build: product code and public key are taken at run time".to_owned();
        }
        let codes = match self.product_codes {
            Some(codes) => format!("trusted product codes {}", codes.join(",")),
            None => "product code taken at run time".to_owned(),
        };
        let keys = if self.keys.is_empty() {
            "public key taken at run time".to_owned()
        } else {
            let versions: Vec<String> = self.key_versions().iter().map(u32::to_string).collect();
            format!("embedded public key versions {}", versions.join(","))
        };
        format!("locked build: {codes}; {keys}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metering_emulator::keys::shared_2048;

    fn runtime_key(pem: &str) -> KeyRequest {
        KeyRequest {
            version: 1,
            file: None,
            pem: Some(pem.to_owned()),
        }
    }

    #[test]
    fn an_open_build_takes_exactly_one_run_time_key() {
        let pem = shared_2048().public_spki_pem.clone();
        let open = TrustAnchors::OPEN;
        let mut request = runtime_key(&pem);
        assert!(open.verifying_key(&request).is_ok());
        request.file = Some("/nonexistent".into());
        assert!(matches!(
            open.verifying_key(&request),
            Err(KeyError::Conflicting)
        ));
        request.pem = None;
        assert!(matches!(
            open.verifying_key(&request),
            Err(KeyError::Unreadable { .. })
        ));
        request.file = None;
        assert!(matches!(
            open.verifying_key(&request),
            Err(KeyError::Missing)
        ));
        assert_eq!(open.product_code(None), Err(ProductCodeError::Missing));
        assert_eq!(open.product_code(Some("prod")).unwrap().as_str(), "prod");
    }

    #[test]
    fn a_locked_build_refuses_untrusted_codes_and_run_time_keys() {
        let pem: &'static str = shared_2048().public_spki_pem.clone().leak();
        let keys: &'static [(u32, &'static str)] = Box::leak(Box::new([(1, pem)]));
        let anchors = TrustAnchors {
            product_codes: Some(&["trusted"]),
            keys,
        };
        assert!(matches!(
            anchors.product_code(Some("other")),
            Err(ProductCodeError::Untrusted { .. })
        ));
        assert!(anchors.product_code(Some("trusted")).is_ok());
        let mut request = runtime_key(pem);
        assert!(matches!(
            anchors.verifying_key(&request),
            Err(KeyError::RuntimeKeyRefused)
        ));
        request.pem = None;
        assert_eq!(
            anchors.verifying_key(&request).unwrap().source,
            KeySource::Embedded
        );
        request.version = 2;
        assert!(matches!(
            anchors.verifying_key(&request),
            Err(KeyError::NoEmbeddedKey { version: 2, .. })
        ));
    }

    const LOCKED: TrustAnchors = TrustAnchors {
        product_codes: Some(&["abc123", "def456"]),
        keys: &[(1, "one"), (2, "two")],
    };

    #[test]
    fn open_build_trusts_any_product_code_and_has_no_keys() {
        assert!(!TrustAnchors::OPEN.is_locked());
        assert!(TrustAnchors::OPEN.trusts_product_code("anything"));
        assert_eq!(TrustAnchors::OPEN.key_for_version(1), None);
        assert!(TrustAnchors::OPEN.describe().starts_with("open build"));
    }

    #[test]
    fn locked_build_trusts_only_its_list_and_keys() {
        assert!(LOCKED.is_locked());
        assert!(LOCKED.trusts_product_code("def456"));
        assert!(!LOCKED.trusts_product_code("abc12"));
        assert_eq!(LOCKED.key_for_version(2), Some("two"));
        assert_eq!(LOCKED.key_for_version(3), None);
        assert_eq!(
            LOCKED.describe(),
            "locked build: trusted product codes abc123,def456; embedded public key versions 1,2"
        );
    }

    #[test]
    fn the_test_build_is_open() {
        // Tests must run against an open build; a locked one would refuse their keys.
        assert_eq!(TrustAnchors::EMBEDDED, TrustAnchors::OPEN);
    }
}
