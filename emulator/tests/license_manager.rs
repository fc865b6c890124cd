//! License Manager and STS over HTTP with the real AWS SDKs: the Anywhere credential flow, then
//! checkouts with the credentials it gave.

use aws_sdk_licensemanager::operation::checkout_license::{
    CheckoutLicenseError, CheckoutLicenseOutput,
};
use aws_sdk_licensemanager::types::{CheckoutType, EntitlementData, EntitlementDataUnit};
use metering_emulator::keys::shared_2048;
use metering_emulator::{
    CheckoutState, Config, LicenseSpec, RefreshToken, RunningEmulator, MARKETPLACE_KEY_FINGERPRINT,
};

const ROLE: &str = "arn:aws:iam::111122223333:role/LicenseConsumer";

fn emulator() -> RunningEmulator {
    metering_emulator::spawn(
        Config::new(shared_2048())
            .license(LicenseSpec::floating("prod-seats", "Seats", 1))
            .license(LicenseSpec::floating("prod-west", "Seats", 1).home_region("us-west-2"))
            .refresh_token(RefreshToken::new("buyer-refresh-token"))
            .buyer_role(ROLE),
    )
}

async fn sdk_config(
    emulator: &RunningEmulator,
    credentials: aws_credential_types::Credentials,
) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region("us-east-1")
        .endpoint_url(emulator.endpoint_url())
        .credentials_provider(credentials)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await
}

/// A PROVISIONAL checkout of one seat of `sku`.
async fn checkout_seat(
    client: &aws_sdk_licensemanager::Client,
    sku: &str,
    client_token: &str,
) -> Result<CheckoutLicenseOutput, CheckoutLicenseError> {
    let seat = EntitlementData::builder()
        .name("Seats")
        .unit(EntitlementDataUnit::Count)
        .value("1")
        .build()
        .expect("an entitlement");
    client
        .checkout_license()
        .product_sku(sku)
        .checkout_type(CheckoutType::Provisional)
        .key_fingerprint(MARKETPLACE_KEY_FINGERPRINT)
        .entitlements(seat)
        .client_token(client_token)
        .send()
        .await
        .map_err(|e| e.into_service_error())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anywhere_flow_ends_in_a_checkout() {
    let emulator = emulator();
    let bootstrap = aws_credential_types::Credentials::new("AKIDBOOT", "x", None, None, "test");
    let license_manager =
        aws_sdk_licensemanager::Client::new(&sdk_config(&emulator, bootstrap.clone()).await);
    let access_token = license_manager
        .get_access_token()
        .token("buyer-refresh-token")
        .send()
        .await
        .expect("an access token")
        .access_token
        .expect("AccessToken");

    let sts = aws_sdk_sts::Client::new(&sdk_config(&emulator, bootstrap).await);
    let assumed = sts
        .assume_role_with_web_identity()
        .role_arn(ROLE)
        .role_session_name("gate")
        .web_identity_token(&access_token)
        .send()
        .await
        .expect("role credentials");
    let credentials = assumed.credentials().expect("Credentials");
    assert!(credentials.access_key_id().starts_with("ASIA"));
    assert!(credentials.expiration().secs() > 0);
    let wrong_role = sts
        .assume_role_with_web_identity()
        .role_arn("arn:aws:iam::111122223333:role/Other")
        .role_session_name("gate")
        .web_identity_token(&access_token)
        .send()
        .await
        .expect_err("not a buyer role");
    assert_eq!(
        wrong_role.into_service_error().meta().code(),
        Some("AccessDenied")
    );

    let role = aws_credential_types::Credentials::new(
        credentials.access_key_id(),
        credentials.secret_access_key(),
        Some(credentials.session_token().to_owned()),
        None,
        "sts",
    );
    let license_manager = aws_sdk_licensemanager::Client::new(&sdk_config(&emulator, role).await);
    let checkout = checkout_seat(&license_manager, "prod-seats", "gate-1")
        .await
        .expect("a seat");
    assert!(checkout.signed_token().expect("SignedToken").len() >= 4096);
    assert!(checkout.expiration().expect("Expiration").ends_with('Z'));
    let token = checkout
        .license_consumption_token()
        .expect("token")
        .to_owned();

    let taken = checkout_seat(&license_manager, "prod-seats", "gate-2")
        .await
        .expect_err("the only seat is taken");
    assert!(taken.is_no_entitlements_allowed_exception());

    let redirect = checkout_seat(&license_manager, "prod-west", "gate-3")
        .await
        .expect_err("homed in us-west-2");
    let CheckoutLicenseError::RedirectException(redirect) = redirect else {
        panic!("expected RedirectException");
    };
    assert_eq!(
        redirect.location(),
        Some("https://license-manager.us-west-2.amazonaws.com")
    );

    let extended = license_manager
        .extend_license_consumption()
        .license_consumption_token(&token)
        .send()
        .await
        .expect("extended");
    assert!(extended.expiration().is_some());
    let license = license_manager
        .get_license()
        .license_arn(checkout.license_arn().expect("LicenseArn"))
        .send()
        .await
        .expect("the license")
        .license
        .expect("License");
    assert_eq!(license.product_sku(), Some("prod-seats"));
    assert_eq!(license.entitlements()[0].max_count(), Some(1));
    license_manager
        .check_in_license()
        .license_consumption_token(&token)
        .send()
        .await
        .expect("checked in");

    let usage = emulator.licenses();
    assert_eq!(usage[0].entitlements[0].in_use, 0);
    assert_eq!(usage[0].checkouts[0].state, CheckoutState::CheckedIn);
}
