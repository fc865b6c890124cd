//! Contract pricing's setup: the Anywhere credential path (the token file and the role, then
//! with `--call` GetAccessToken and AssumeRoleWithWebIdentity), and with `--call` a provisional
//! checkout that is checked in at once, so no seat stays taken.

use tokio::time::Instant;

use super::{DoctorRequest, Failure, Finding};
use crate::aws::anywhere::{AnywhereError, AnywhereSettings, MAX_TOKEN_BYTES};
use crate::aws::endpoint::Pinning;
use crate::aws::license_manager;
use crate::domain::files;
use crate::domain::license::{CheckoutType, EntitlementRequest};
use crate::domain::text;
use crate::domain::time::Clock;
use crate::domain::trust::TrustAnchors;
use crate::license::check;
use crate::license::{self as use_case, LicenseConfig, LicenseError};

/// What `license check` would check out.
#[derive(Debug, Clone)]
pub struct LicenseRequest {
    pub product_id: Option<String>,
    pub entitlements: Vec<EntitlementRequest>,
    pub checkout_type: CheckoutType,
    pub node_id: Option<String>,
}

/// The product ID (against a locked build's list) and the entitlements: the configuration
/// `license check` would run with, or the finding that says why there is none.
pub(super) fn product(
    license: &LicenseRequest,
    request: &DoctorRequest,
    anchors: &TrustAnchors,
) -> (Finding, Option<LicenseConfig>) {
    const CHECK: &str = "license-product";
    let product_id = match anchors.product_code(license.product_id.as_deref()) {
        Ok(id) => id,
        Err(e) => return (Finding::failed_with(CHECK, Failure::ProductCode(e)), None),
    };
    if license.entitlements.is_empty() {
        return (
            Finding::fail(
                CHECK,
                format!("product {product_id}: no entitlements to check out"),
                "list them in ENTITLEMENT_GATE_ENTITLEMENTS, NAME[=VALUE][:UNIT], as the product's \
                 contract dimensions name them",
            ),
            None,
        );
    }
    let wanted: Vec<String> = license
        .entitlements
        .iter()
        .map(ToString::to_string)
        .collect();
    let finding = Finding::ok(
        CHECK,
        format!(
            "product {product_id}, {} checkout of {}",
            license.checkout_type.as_str(),
            wanted.join(", ")
        ),
    );
    let config = LicenseConfig {
        product_id,
        entitlements: license.entitlements.clone(),
        checkout_type: license.checkout_type,
        node_id: license.node_id.clone(),
        handoff_dir: None,
        deadline: request.deadline,
        retry: request.retry,
        region_override: request.region_override.clone(),
        pinning: Pinning::of(anchors),
    };
    (finding, Some(config))
}

/// The Anywhere settings from the environment, checked without calling anything: which token
/// file, that it holds a token, and the role to assume.
pub(super) fn anywhere(
    settings: Result<Option<AnywhereSettings>, AnywhereError>,
    env: impl Fn(&str) -> Option<String>,
) -> Finding {
    const CHECK: &str = "anywhere";
    let settings = match settings {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            return Finding::ok(
                CHECK,
                "no license token file (AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE, AWS_LICENSE_ACCESS_FILE): \
                 credentials come from the default chain, as on EKS and ECS",
            )
        }
        Err(e) => {
            return Finding::failed_with(CHECK, Failure::License(LicenseError::Anywhere(e)))
        }
    };
    let token_file = text::quoted(&settings.token_file.display().to_string());
    // The SDK would send the refresh token itself to STS as a web identity token.
    if env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some_and(|path| !path.trim().is_empty()) {
        return Finding::fail(
            CHECK,
            format!(
                "AWS_WEB_IDENTITY_TOKEN_FILE is set beside {}={token_file}",
                settings.token_variable
            ),
            "remove AWS_WEB_IDENTITY_TOKEN_FILE: the license token is not a web identity token, \
             and the SDK would try it before the license token",
        );
    }
    match files::read_limited_to_string(&settings.token_file, MAX_TOKEN_BYTES) {
        Ok(token) if !token.trim().trim_matches('"').trim().is_empty() => {}
        Ok(_) => {
            return Finding::failed_with(
                CHECK,
                Failure::License(LicenseError::Anywhere(AnywhereError::EmptyToken {
                    path: settings.token_file.clone(),
                })),
            )
        }
        Err(source) => {
            return Finding::failed_with(
                CHECK,
                Failure::License(LicenseError::Anywhere(AnywhereError::TokenFile {
                    variable: settings.token_variable,
                    path: settings.token_file.clone(),
                    source,
                })),
            )
        }
    }
    if !looks_like_a_role_arn(&settings.role_arn) {
        return Finding::fail(
            CHECK,
            format!(
                "the role to assume, {}, is not an IAM role ARN",
                text::quoted(&settings.role_arn)
            ),
            "set AWS_ROLE_ARN (or the secret's iam_role key) to the role the buyer created for \
             License Manager, arn:aws:iam::ACCOUNT:role/NAME",
        );
    }
    Finding::ok(
        CHECK,
        format!(
            "license token from {}={token_file}, role {}; --call exchanges it",
            settings.token_variable,
            text::quoted(&settings.role_arn)
        ),
    )
}

/// `arn:PARTITION:iam::ACCOUNT:role/NAME`.
fn looks_like_a_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(),
        ["arn", partition, "iam", "", account, resource]
            if !partition.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty()))
}

/// With `--call`: the identity License Manager would see (the Anywhere exchange included),
/// then a provisional checkout of the configured entitlements, checked in at once.
pub(super) async fn checkout(config: &LicenseConfig, clock: &dyn Clock) -> Vec<Finding> {
    let deadline = Instant::now() + config.deadline;
    let mut lm = match use_case::connect(config, deadline).await {
        Ok(lm) => lm,
        Err(e) => {
            return vec![Finding::failed_with(
                "license-identity",
                Failure::License(e),
            )]
        }
    };
    let identity = Finding::ok(
        "license-identity",
        format!(
            "credentials from {}, License Manager in {}",
            lm.credentials_from, lm.region
        ),
    );
    if config.checkout_type == CheckoutType::Perpetual {
        return vec![
            identity,
            Finding::warn(
                "license-checkout",
                "not called: a PERPETUAL checkout consumes the buyer's units for good",
                "run `entitlement-gate license check` once to try it for real",
            ),
        ];
    }
    let checkout = match check::checkout(config, &mut lm, deadline, clock).await {
        Ok(granted) => granted.checkout,
        Err(e) => {
            return vec![
                identity,
                Finding::failed_with("license-checkout", Failure::License(e)),
            ]
        }
    };
    let granted: Vec<String> = checkout
        .entitlements_allowed
        .iter()
        .map(|allowed| text::quoted(&allowed.name))
        .collect();
    let returned = match license_manager::check_in(&lm, &checkout.consumption_token, deadline).await
    {
        Ok(()) => "and checked in again".to_owned(),
        Err(e) => format!(
            "but not checked in ({}); the seat lapses by itself within the hour",
            text::quoted(&e.to_string())
        ),
    };
    let expires = checkout
        .expiration
        .map(crate::domain::time::epoch_text)
        .unwrap_or_else(|| "no expiry given".to_owned());
    vec![
        identity,
        Finding::ok(
            "license-checkout",
            format!(
                "{} granted {} (until {expires}) {returned}",
                text::quoted(&checkout.license_arn),
                granted.join(", ")
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn role_arns_are_recognised() {
        assert!(looks_like_a_role_arn(
            "arn:aws:iam::111122223333:role/buyer-license"
        ));
        assert!(looks_like_a_role_arn(
            "arn:aws-cn:iam::111122223333:role/path/name"
        ));
        for bad in [
            "",
            "buyer-license",
            "arn:aws:iam::111122223333:user/someone",
            "arn:aws:iam::1111:role/x",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:sts::111122223333:role/x",
        ] {
            assert!(!looks_like_a_role_arn(bad), "{bad}");
        }
    }

    #[test]
    fn the_anywhere_check_reads_the_token_and_refuses_a_web_identity_twin() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("license_token");
        std::fs::write(&token, "\"a-token\"\n").unwrap();
        let settings = || {
            Ok(Some(AnywhereSettings {
                token_file: token.clone(),
                token_variable: "AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE",
                role_arn: "arn:aws:iam::111122223333:role/buyer-license".to_owned(),
                session_name: "s".to_owned(),
            }))
        };
        let none = |_: &str| None;
        assert_eq!(anywhere(settings(), none).status, Status::Ok);
        assert_eq!(anywhere(Ok(None), none).status, Status::Ok);
        let twin = |name: &str| (name == "AWS_WEB_IDENTITY_TOKEN_FILE").then(|| "/x".to_owned());
        assert_eq!(anywhere(settings(), twin).status, Status::Fail);
        std::fs::write(&token, "\"\"\n").unwrap();
        let empty = anywhere(settings(), none);
        assert_eq!(empty.status, Status::Fail);
        assert!(empty.failure.is_some());
    }
}
