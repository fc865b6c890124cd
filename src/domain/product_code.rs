//! The product code of a paid AWS Marketplace product.

use std::fmt;

use super::anchor_rules::product_code_problem;

/// Why a product code cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductCodeError {
    #[error("no product code configured")]
    Missing,
    #[error("product code {code:?} is invalid: {reason}")]
    Invalid { code: String, reason: &'static str },
    #[error("product code {code:?} is not one this build trusts")]
    Untrusted { code: String },
}

/// A product code that satisfies the RegisterUsage model: 1-255 of `[-a-zA-Z0-9/=:_.@]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductCode(String);

impl ProductCode {
    pub fn parse(code: &str) -> Result<Self, ProductCodeError> {
        match product_code_problem(code) {
            Some(reason) => Err(ProductCodeError::Invalid {
                code: code.to_owned(),
                reason,
            }),
            None => Ok(Self(code.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_applies_the_register_usage_rule() {
        assert_eq!(ProductCode::parse("abc123").unwrap().as_str(), "abc123");
        assert!(matches!(
            ProductCode::parse("has space"),
            Err(ProductCodeError::Invalid { .. })
        ));
    }
}
