//! The rules a trust anchor must meet: a product code, a verifying key, and what makes a build
//! locked. `build.rs` includes this file as it is, so the seller's build refuses exactly what
//! every buyer's run would refuse; it therefore depends on nothing but `std` and `pem`.

use std::fmt;

/// Why `code` breaks the RegisterUsage model's rule (1-255 of `[-a-zA-Z0-9/=:_.@]`), or `None`.
pub fn product_code_problem(code: &str) -> Option<&'static str> {
    if code.is_empty() {
        Some("it is empty")
    } else if code.len() > 255 {
        Some("it is longer than 255 characters")
    } else if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-/=:_.@".contains(c))
    {
        Some("only letters, digits and -/=:_.@ are allowed")
    } else {
        None
    }
}

/// RSA keys below this size are refused, whatever their source.
pub const MIN_RSA_BITS: u32 = 2048;

/// Public keys whose private halves are published: anyone can sign tokens they would accept.
pub const PUBLISHED_SAMPLE_KEYS: &[(&str, &str)] = &[
    (
        "the 1024-bit key printed in AWS's Java RegisterUsage sample (jwt.io's old demo key)",
        AWS_JAVA_SAMPLE_PUBLIC_KEY,
    ),
    (
        "jwt.io's 2048-bit RS256/PS256 demo key",
        JWT_IO_DEMO_PUBLIC_KEY,
    ),
];

/// The RSA-1024 key printed in AWS's Java RegisterUsage sample.
pub const AWS_JAVA_SAMPLE_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDdlatRjRjogo3WojgGHFHYLugd
UWAY9iR3fy4arWNA1KoS8kVw33cJibXr8bvwUAUparCwlvdbH6dvEOfou0/gCFQs
HUfQrSDv+MuSUMAe8jzKE4qW+jK+xQU9a03GUnKHkkle+Q0pX/g6jXZ7r1/xAK5D
o2kQ+X5xK9cipRgEKwIDAQAB
-----END PUBLIC KEY-----
";

/// jwt.io's RSA-2048 demo key, copied into countless tutorials and test suites.
pub const JWT_IO_DEMO_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnzyis1ZjfNB0bBgKFMSv
vkTtwlvBsaJq7S5wA+kzeVOVpVWwkWdVha4s38XM/pa/yr47av7+z3VTmvDRyAHc
aT92whREFpLv9cj5lTeJSibyr/Mrm/YtjCZVWgaOYIhwrXwKLqPr/11inWsAkfIy
tvHWTxZYEcXLgAXFuUuaS3uF9gEiNQwzGTU1v0FqkqTBr4B8nW3HCN47XUu0t8Y0
e+lf4s4OxQawWD79J9/5d3Ry0vbV3Am1FtGJiJvOwRsIfVChDpYStTcHTCMqtvWb
V6L11BWkpzGXSW4Hv43qa+GSYOD2QU68Mb59oSk2OB+BtOLpJofmbGEGgvmwyCI9
MwIDAQAB
-----END PUBLIC KEY-----
";

/// Why a PEM text is not an acceptable verifying key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyProblem {
    NotPem(String),
    /// A private key: configuring it would leak it and proves nothing.
    Private {
        label: String,
    },
    WrongLabel {
        label: String,
    },
    NotRsa(&'static str),
    Weak {
        bits: u32,
    },
    PublishedSample {
        name: &'static str,
    },
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::NotPem(e) => write!(f, "not a PEM block ({e})"),
            KeyProblem::Private { label } => write!(
                f,
                "this is a {label}; configure the public key, never the private one"
            ),
            KeyProblem::WrongLabel { label } => write!(f, "expected PUBLIC KEY, found {label}"),
            KeyProblem::NotRsa(why) => write!(f, "not an RSA public key ({why})"),
            KeyProblem::Weak { bits } => {
                write!(f, "it is RSA-{bits}, below the {MIN_RSA_BITS}-bit minimum")
            }
            KeyProblem::PublishedSample { name } => write!(
                f,
                "it is {name}, whose private half is published, so anyone could sign tokens it accepts"
            ),
        }
    }
}

/// An RSA public key that passed the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKeyDer {
    /// `RSAPublicKey` (PKCS#1) DER.
    pub pkcs1: Vec<u8>,
    pub bits: u32,
}

/// Applies the rule to PEM text: an RSA public key as SPKI (`BEGIN PUBLIC KEY`, what AWS hands
/// sellers) or PKCS#1 (`BEGIN RSA PUBLIC KEY`), of at least [`MIN_RSA_BITS`], and not one of the
/// [`PUBLISHED_SAMPLE_KEYS`].
pub fn rsa_public_key(text: &str) -> Result<RsaPublicKeyDer, KeyProblem> {
    let (pkcs1, modulus) = parse_rsa_public_key(text)?;
    let bits = bit_length(&modulus);
    if bits < MIN_RSA_BITS {
        return Err(KeyProblem::Weak { bits });
    }
    for (name, sample) in PUBLISHED_SAMPLE_KEYS {
        if parse_rsa_public_key(sample).is_ok_and(|(_, sample_modulus)| sample_modulus == modulus) {
            return Err(KeyProblem::PublishedSample { name });
        }
    }
    Ok(RsaPublicKeyDer { pkcs1, bits })
}

/// The PKCS#1 DER and the modulus of an RSA public key in PEM, without judging its strength.
fn parse_rsa_public_key(text: &str) -> Result<(Vec<u8>, Vec<u8>), KeyProblem> {
    let block = pem::parse(text).map_err(|e| KeyProblem::NotPem(e.to_string()))?;
    let der = block.contents();
    let pkcs1 = match block.tag() {
        "PUBLIC KEY" => spki_rsa_key(der)?,
        "RSA PUBLIC KEY" => der,
        label if label.contains("PRIVATE") => {
            return Err(KeyProblem::Private {
                label: label.to_owned(),
            })
        }
        label => {
            return Err(KeyProblem::WrongLabel {
                label: label.to_owned(),
            })
        }
    };
    let modulus = pkcs1_modulus(pkcs1)?;
    Ok((pkcs1.to_vec(), modulus.to_vec()))
}

/// DER encoding of the rsaEncryption algorithm identifier's OID, 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OBJECT_IDENTIFIER: u8 = 0x06;

/// `SubjectPublicKeyInfo { AlgorithmIdentifier { rsaEncryption, NULL }, BIT STRING { key } }`.
fn spki_rsa_key(der: &[u8]) -> Result<&[u8], KeyProblem> {
    let (spki, _) = element(der, SEQUENCE)?;
    let (algorithm, rest) = element(spki, SEQUENCE)?;
    let (oid, _) = element(algorithm, OBJECT_IDENTIFIER)?;
    if oid != RSA_ENCRYPTION_OID {
        return Err(KeyProblem::NotRsa(
            "the key's algorithm is not rsaEncryption",
        ));
    }
    let (bits, _) = element(rest, BIT_STRING)?;
    match bits.split_first() {
        Some((0, key)) => Ok(key),
        _ => Err(KeyProblem::NotRsa("malformed key bit string")),
    }
}

/// The modulus of `RSAPublicKey { INTEGER modulus, INTEGER publicExponent }`.
fn pkcs1_modulus(der: &[u8]) -> Result<&[u8], KeyProblem> {
    let (key, _) = element(der, SEQUENCE)?;
    let (modulus, rest) = element(key, INTEGER)?;
    element(rest, INTEGER)?;
    Ok(modulus)
}

/// One DER element of type `tag` at the start of `input`: its contents and what follows it.
fn element(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), KeyProblem> {
    let malformed = || KeyProblem::NotRsa("malformed DER");
    let (&found, rest) = input.split_first().ok_or_else(malformed)?;
    if found != tag {
        return Err(malformed());
    }
    let (&first, rest) = rest.split_first().ok_or_else(malformed)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err(malformed());
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, byte| (len << 8) | usize::from(*byte));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return Err(malformed());
    }
    Ok(rest.split_at(len))
}

/// Bits in a positive big-endian DER integer (which may start with a 0x00 sign byte).
fn bit_length(integer: &[u8]) -> u32 {
    let significant: &[u8] = match integer.iter().position(|byte| *byte != 0) {
        Some(start) => &integer[start..],
        None => return 0,
    };
    (significant.len() as u32 - 1) * 8 + (8 - significant[0].leading_zeros())
}

#[allow(dead_code)] // Only build.rs, which includes this file, decides whether a build is locked.
/// Why a build's trust anchors do not make a lock, or `None`. Product codes without keys are no
/// lock: a buyer could still pass their own key and endpoint and accept a self-made token.
pub fn lock_problem(product_codes_set: bool, key_count: usize) -> Option<&'static str> {
    (product_codes_set && key_count == 0).then_some(
        "trusted product codes are embedded without trusted keys, which is no lock: a buyer \
         could still configure their own key and endpoint and accept a self-made token; also \
         set ENTITLEMENT_GATE_TRUSTED_KEYS_DIR to a directory of <version>.pem public keys",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_codes_follow_the_register_usage_model() {
        assert_eq!(product_code_problem("6ddn58fjsl1cb6yfd8r9j7dzx"), None);
        assert_eq!(product_code_problem("a-b/c=d:e_f.g@h"), None);
        assert_eq!(product_code_problem(&"a".repeat(255)), None);
        for bad in ["", "has space", "semi;colon", "ünï", &"a".repeat(256)] {
            assert!(product_code_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn published_sample_keys_are_refused_whatever_their_size() {
        assert_eq!(
            rsa_public_key(AWS_JAVA_SAMPLE_PUBLIC_KEY),
            Err(KeyProblem::Weak { bits: 1024 })
        );
        assert!(matches!(
            rsa_public_key(JWT_IO_DEMO_PUBLIC_KEY),
            Err(KeyProblem::PublishedSample { .. })
        ));
        assert_eq!(
            parse_rsa_public_key(JWT_IO_DEMO_PUBLIC_KEY).map(|(_, modulus)| bit_length(&modulus)),
            Ok(2048)
        );
    }

    #[test]
    fn private_keys_and_other_labels_are_named() {
        let private = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            rsa_public_key(private),
            Err(KeyProblem::Private {
                label: "RSA PRIVATE KEY".into()
            })
        );
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            rsa_public_key(cert),
            Err(KeyProblem::WrongLabel { .. })
        ));
        assert!(matches!(
            rsa_public_key("not pem"),
            Err(KeyProblem::NotPem(_))
        ));
    }

    #[test]
    fn malformed_der_never_panics() {
        for der in [
            &[][..],
            &[0x30],
            &[0x30, 0x81],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x03, 0x02, 0x01],
            &[0x30, 0x02, 0x02, 0x00],
        ] {
            assert!(pkcs1_modulus(der).is_err(), "{der:?}");
            assert!(spki_rsa_key(der).is_err(), "{der:?}");
        }
    }

    #[test]
    fn bit_lengths_ignore_the_sign_byte() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x01, 0x00]), 9);
        assert_eq!(bit_length(&[0x00]), 0);
    }

    #[test]
    fn product_codes_without_keys_are_no_lock() {
        assert!(lock_problem(true, 0).is_some());
        assert_eq!(lock_problem(true, 1), None);
        assert_eq!(lock_problem(false, 0), None);
        assert_eq!(lock_problem(false, 2), None);
    }
}
