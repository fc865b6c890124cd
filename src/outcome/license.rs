//! Exit codes and sentences for contract pricing (`license check`, `license watch`).

use super::{
    configuration, endpoint_overridden, exit_code::*, identity, internal, GateError,
    TELL_THE_SELLER,
};
use crate::aws::anywhere::{AnywhereError, TOKEN_FILE_VARIABLES};
use crate::aws::identity::IdentityError;
use crate::aws::license_manager::{LicenseManagerError, Persisting};
use crate::domain::handoff::HandoffError;
use crate::license::LicenseError;

/// The managed policy that grants what the gate calls.
const POLICY: &str = "the managed policy AWSLicenseManagerConsumptionPolicy \
                      (arn:aws:iam::aws:policy/service-role/AWSLicenseManagerConsumptionPolicy)";

/// Where an Anywhere buyer's secret goes.
const ANYWHERE_SECRET: &str = "the buyer's license secret (keys license_token and iam_role) \
                               mounted at /var/run/secrets/product-license";

pub(super) fn report(error: &GateError, e: &LicenseError) -> (u8, &'static str, String) {
    use LicenseError as L;
    match e {
        L::Identity(IdentityError::NoCredentials { tried, .. }) => (
            CREDENTIALS,
            "no_credentials",
            format!(
                "No AWS credentials were found (tried {}, and no license token: neither {} nor \
                 {} is set); on EKS or ECS give the workload a role (IRSA, or the task role) \
                 that allows license-manager:CheckoutLicense, outside AWS (EKS Anywhere, ECS \
                 Anywhere, on premises) mount {ANYWHERE_SECRET}.",
                tried
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                TOKEN_FILE_VARIABLES[0],
                TOKEN_FILE_VARIABLES[1]
            ),
        ),
        L::Identity(e) => identity(error, e, "license-manager:CheckoutLicense"),
        L::Anywhere(e) => anywhere(error, e),
        L::EndpointOverridden(_) => endpoint_overridden(error),
        L::NotEntitled {
            product_id,
            requested,
            region,
            source,
        } => (
            NOT_ENTITLED,
            "not_entitled",
            format!(
                "Not entitled: AWS License Manager in {region} granted none of {requested} for \
                 product {product_id} ({source}); AWS gives this same answer when the account \
                 has no active contract for the product and when every floating seat is in use, \
                 so check the license under Granted licenses in the buyer's License Manager \
                 console, and whether other pods hold the seats."
            ),
        ),
        L::Partial {
            product_id,
            granted,
            missing,
        } => (
            NOT_ENTITLED,
            "not_entitled",
            format!(
                "Not entitled: AWS License Manager granted {granted} but not {missing} for \
                 product {product_id}; the buyer's contract lacks these entitlements or their \
                 seats are in use, so check the contract's dimensions, or remove them from \
                 ENTITLEMENT_GATE_ENTITLEMENTS if the product does not need them."
            ),
        ),
        L::Lost {
            license_arn,
            reason,
        } => (
            NOT_ENTITLED,
            "license_lost",
            format!(
                "The license {license_arn} was lost: {reason}; the workload stops \
                 (ENTITLEMENT_GATE_ON_LOSS=exit) and its start-up gate checks out again when it \
                 restarts, so renew the contract in AWS Marketplace or free a seat."
            ),
        ),
        L::Unverified { .. } => (
            TOKEN_REJECTED,
            "license_unverified",
            format!(
                "{e}, so it is not trusted; check that AWS_ENDPOINT_URL_LICENSE_MANAGER is unset \
                 and that no proxy in between rewrites answers, and report this to the seller if \
                 neither is the cause."
            ),
        ),
        L::Unavailable {
            license_arn,
            reason,
        } => (
            NOT_ENTITLED,
            "license_unavailable",
            format!(
                "Not entitled: AWS License Manager granted the checkout, but the license \
                 {license_arn} is {reason}; the buyer must renew the contract in AWS Marketplace \
                 (the buyer's License Manager console shows it under Granted licenses)."
            ),
        ),
        L::Redirect { location } => (
            SETUP_REFUSED,
            "redirect",
            format!(
                "AWS License Manager redirected the checkout to {location}, which is not an AWS \
                 Region's License Manager, so it was not followed; {TELL_THE_SELLER}."
            ),
        ),
        L::LicenseManager(e) => license_manager(error, e),
        L::Handoff(HandoffError::Directory { .. }) => (
            CONFIG,
            "handoff_dir",
            configuration(
                error,
                "mount a writable volume (e.g. an emptyDir) at ENTITLEMENT_GATE_HANDOFF_DIR",
            ),
        ),
        L::Handoff(e) => internal(e),
        L::Deadline { phase, deadline } => (
            UNREACHABLE,
            "deadline_exceeded",
            format!(
                "The {} s start-up deadline passed while {phase}; check that the credential and \
                 Region sources are reachable, or raise ENTITLEMENT_GATE_DEADLINE.",
                deadline.as_secs_f64()
            ),
        ),
        L::Listen { .. } => (
            CONFIG,
            "listen",
            configuration(
                error,
                "set ENTITLEMENT_GATE_LICENSE_LISTEN to a free loopback port (127.0.0.1:8479) or \
                 to unix:/path in a writable directory",
            ),
        ),
        L::StopOverran { signal } => (
            UNREACHABLE,
            "shutdown_overran",
            format!(
                "Stopped by {signal}, but checking the floating seat in overran the shutdown \
                 grace; AWS returns it by itself when the checkout expires (within an hour), so a \
                 replacement pod may wait for a seat until then."
            ),
        ),
        L::NotCheckedIn(e) => (
            UNREACHABLE,
            "not_checked_in",
            format!(
                "Stopped, but the floating seat could not be checked in ({e}); AWS returns it by \
                 itself when the checkout expires (within an hour), so a replacement pod may \
                 wait for a seat until then."
            ),
        ),
    }
}

fn anywhere(error: &GateError, e: &AnywhereError) -> (u8, &'static str, String) {
    use AnywhereError as A;
    match e {
        A::ConflictingTokenFiles { .. } => (
            CONFIG,
            "conflicting_token_files",
            configuration(
                error,
                &format!(
                    "set only one of {} and {} (AWS's material uses both names for the same \
                     license_token file)",
                    TOKEN_FILE_VARIABLES[0], TOKEN_FILE_VARIABLES[1]
                ),
            ),
        ),
        A::NoRole { .. } => (
            CONFIG,
            "no_role",
            configuration(
                error,
                "set AWS_ROLE_ARN from the secret's iam_role key (the chart does), or mount the \
                 whole secret so iam_role lies beside license_token",
            ),
        ),
        A::TokenFile { .. } | A::EmptyToken { .. } => (
            CREDENTIALS,
            "license_token_unreadable",
            format!("{e}; mount {ANYWHERE_SECRET}."),
        ),
        A::AccessToken(
            e @ (LicenseManagerError::AccessDenied { .. } | LicenseManagerError::Invalid { .. }),
        ) => (
            CREDENTIALS,
            "license_token_refused",
            format!(
                "AWS License Manager refused the buyer's license token ({e}); the buyer must \
                 create a new token for this license (License Manager console or CreateToken) \
                 and update license_token in the secret."
            ),
        ),
        A::AccessToken(e) => license_manager(error, e),
        A::AssumeRoleRefused { role_arn, .. } => (
            CREDENTIALS,
            "assume_role_refused",
            format!(
                "AWS STS refused the license token for role {role_arn} ({e}); the role must \
                 trust openid-license-manager.amazonaws.com (sts:AssumeRoleWithWebIdentity, with \
                 the amr condition for the token's issuer, see \
                 deploy/iam/anywhere-license-role-trust-policy.json) and carry \
                 AWSLicenseManagerConsumptionPolicy; check iam_role in the secret."
            ),
        ),
        A::StsUnreachable { endpoint, .. } => (
            UNREACHABLE,
            "unreachable",
            format!(
                "AWS STS at {endpoint} could not be reached ({e}); check network egress to STS \
                 and License Manager (proxy, firewall), or raise ENTITLEMENT_GATE_DEADLINE: on \
                 premises AWS advises retrying for up to 30 minutes."
            ),
        ),
        A::Sts(_) => internal(e),
    }
}

fn license_manager(error: &GateError, e: &LicenseManagerError) -> (u8, &'static str, String) {
    use LicenseManagerError as M;
    let persisting = |reason, what: &str, p: &Persisting| {
        (
            UNREACHABLE,
            reason,
            format!(
                "AWS License Manager at {}: {} {what} for {:.1} s over {} attempts (last: {}); \
                 check network egress to it (proxy, NAT, VPC endpoint), or raise \
                 ENTITLEMENT_GATE_DEADLINE: outside AWS, AWS advises retrying for up to 30 \
                 minutes.",
                p.endpoint,
                p.operation,
                p.gave_up.elapsed.as_secs_f64(),
                p.gave_up.attempts,
                p.gave_up.last.detail
            ),
        )
    };
    match e {
        M::NoEntitlements { .. } | M::NotFound { .. } => (
            NOT_ENTITLED,
            "not_entitled",
            format!("Not entitled: AWS License Manager answered {e}; check the buyer's contract."),
        ),
        M::AccessDenied {
            operation,
            credentials_from,
            ..
        } => (
            CREDENTIALS,
            "access_denied",
            format!(
                "AWS rejected the credentials from {credentials_from} for {operation} ({e}); the \
                 workload's role must allow license-manager:CheckoutLicense, \
                 ExtendLicenseConsumption, CheckInLicense and GetLicense, e.g. via {POLICY}."
            ),
        ),
        M::Invalid { .. } => (
            SETUP_REFUSED,
            "invalid_request",
            format!(
                "AWS License Manager refused the request ({e}); check ENTITLEMENT_GATE_PRODUCT_ID \
                 (the product ID from the AWS Marketplace Management Portal, not the product \
                 code) and ENTITLEMENT_GATE_ENTITLEMENTS (names and units as in the product's \
                 contract pricing)."
            ),
        ),
        M::Redirect { .. } | M::Conflict { .. } | M::Sdk(_) => internal(e),
        M::Throttled(p) => persisting("throttled", "was throttled", p),
        M::ServiceUnavailable(p) => persisting("service_unavailable", "kept failing", p),
        M::Unreachable(p) => persisting("unreachable", "could not be reached", p),
        M::UnexpectedResponse { .. }
        | M::Incomplete { .. }
        | M::ResponseTooLarge { .. }
        | M::Unreadable { .. } => (
            INTERNAL,
            "unexpected_response",
            format!(
                "{e}; check the License Manager endpoint override and any proxy in between, and \
                 {TELL_THE_SELLER}."
            ),
        ),
        M::RequestNotBuilt(_) => (
            CONFIG,
            "request_not_built",
            configuration(
                error,
                "check AWS_REGION, ENTITLEMENT_GATE_ENTITLEMENTS and any \
                 AWS_ENDPOINT_URL_LICENSE_MANAGER",
            ),
        ),
    }
}

/// The request ID of the last answer behind a license failure.
pub(super) fn request_id(e: &LicenseError) -> Option<&str> {
    match e {
        LicenseError::NotEntitled { source, .. } => source.request_id(),
        LicenseError::LicenseManager(e)
        | LicenseError::NotCheckedIn(e)
        | LicenseError::Anywhere(AnywhereError::AccessToken(e)) => e.request_id(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{report, GateError};
    use crate::domain::lease::Lapsed;
    use crate::domain::license::Unverified;
    use crate::license::LicenseError;

    /// The report of `error`: one sentence, with a remedy after the semicolon.
    fn sentence(error: LicenseError) -> super::super::Report {
        let report = report(&GateError::from(error));
        assert!(report.message.ends_with('.'), "{}", report.message);
        assert!(!report.message.contains('\n'));
        assert!(report.message.contains("; "), "{}", report.message);
        report
    }

    #[test]
    fn license_sentences_say_what_did_not_match_and_what_happens_to_the_seat() {
        let lapsed = sentence(LicenseError::Unverified {
            product_id: "prod-1".into(),
            problem: Unverified::Lapsed(Lapsed::BeforeIssued {
                issued_at: 60,
                expiration: 0,
            }),
        });
        assert_eq!((lapsed.exit_code, lapsed.reason), (4, "license_unverified"));
        assert_eq!(
            lapsed.message,
            "AWS License Manager's answer for product prod-1 failed verification: the checkout \
             had lapsed when it arrived: its Expiration (1970-01-01T00:00:00Z) is not after its \
             IssuedAt (1970-01-01T00:01:00Z), so it is not trusted; check that \
             AWS_ENDPOINT_URL_LICENSE_MANAGER is unset and that no proxy in between rewrites \
             answers, and report this to the seller if neither is the cause."
        );
        let unavailable = sentence(LicenseError::Unavailable {
            license_arn: "arn:l".into(),
            reason: "EXPIRED (GetLicense)".into(),
        });
        assert_eq!(
            (unavailable.exit_code, unavailable.reason),
            (3, "license_unavailable")
        );
        let overran = sentence(LicenseError::StopOverran { signal: "SIGTERM" });
        assert_eq!((overran.exit_code, overran.reason), (7, "shutdown_overran"));
        assert!(
            overran.message.contains("checking the floating seat in"),
            "not the meter's sentence: {}",
            overran.message
        );
        assert!(unavailable
            .message
            .starts_with("Not entitled: AWS License Manager granted the checkout, but the license arn:l is EXPIRED (GetLicense); "));
    }
}
