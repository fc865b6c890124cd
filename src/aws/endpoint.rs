//! Which endpoint the SDK will call, resolved by the SDK's own rules (partitions, FIPS,
//! dual-stack) from the same environment variables the SDK reads, for messages and `doctor`.

use aws_sdk_licensemanager::config::endpoint::{
    self as license_manager_endpoint, ResolveEndpoint as _,
};
use aws_sdk_marketplacemetering::config::endpoint::{
    DefaultResolver, Params as EndpointParams, ResolveEndpoint as _,
};

/// The variable that overrides the Metering endpoint (before `AWS_ENDPOINT_URL`).
pub const METERING_OVERRIDE: &str = "AWS_ENDPOINT_URL_MARKETPLACE_METERING";
/// The variable that overrides the License Manager endpoint (before `AWS_ENDPOINT_URL`).
pub const LICENSE_MANAGER_OVERRIDE: &str = "AWS_ENDPOINT_URL_LICENSE_MANAGER";

/// The Metering endpoint for `region`.
pub async fn metering(region: &str) -> String {
    endpoint_with(region, |name| std::env::var(name).ok()).await
}

/// The License Manager endpoint for `region`; `overrides` false for a locked build, which
/// ignores them.
pub async fn license_manager(region: &str, overrides: bool) -> String {
    let env = |name: &str| std::env::var(name).ok();
    let settings = Settings::read(&env, LICENSE_MANAGER_OVERRIDE, overrides);
    let resolved = match license_manager_endpoint::Params::builder()
        .region(region)
        .use_fips(settings.fips)
        .use_dual_stack(settings.dual_stack)
        .set_endpoint(settings.endpoint_override)
        .build()
    {
        Ok(params) => license_manager_endpoint::DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map(|endpoint| endpoint.url().to_owned())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    resolved.unwrap_or_else(|e| format!("(no License Manager endpoint for Region {region}: {e})"))
}

/// The variable that overrides a service's endpoint, if one is set: the service's own, then
/// the global one.
pub fn configured_override(
    service_variable: &'static str,
    env: impl Fn(&str) -> Option<String>,
) -> Option<&'static str> {
    [service_variable, "AWS_ENDPOINT_URL"]
        .into_iter()
        .find(|name| env(name).is_some_and(|url| !url.is_empty()))
}

/// The SDK's endpoint settings from the environment.
struct Settings {
    fips: bool,
    dual_stack: bool,
    endpoint_override: Option<String>,
}

impl Settings {
    fn read(
        env: &impl Fn(&str) -> Option<String>,
        service_variable: &str,
        overrides: bool,
    ) -> Settings {
        let flag = |name: &str| env(name).is_some_and(|value| value.eq_ignore_ascii_case("true"));
        Settings {
            fips: flag("AWS_USE_FIPS_ENDPOINT"),
            dual_stack: flag("AWS_USE_DUALSTACK_ENDPOINT"),
            endpoint_override: overrides
                .then(|| {
                    [service_variable, "AWS_ENDPOINT_URL"]
                        .iter()
                        .find_map(|name| env(name).filter(|url| !url.is_empty()))
                })
                .flatten(),
        }
    }
}

async fn endpoint_with(region: &str, env: impl Fn(&str) -> Option<String>) -> String {
    let settings = Settings::read(&env, METERING_OVERRIDE, true);
    let resolved = match EndpointParams::builder()
        .region(region)
        .use_fips(settings.fips)
        .use_dual_stack(settings.dual_stack)
        .set_endpoint(settings.endpoint_override)
        .build()
    {
        Ok(params) => DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map(|endpoint| endpoint.url().to_owned())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    resolved.unwrap_or_else(|e| format!("(no metering endpoint for Region {region}: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoint_prefers_the_service_override_then_the_global_one_then_the_region() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            endpoint_with("eu-central-1", env(&[])).await,
            "https://metering.marketplace.eu-central-1.amazonaws.com"
        );
        assert_eq!(
            endpoint_with("x", env(&[("AWS_ENDPOINT_URL", "http://g")])).await,
            "http://g"
        );
        assert_eq!(
            endpoint_with(
                "x",
                env(&[
                    ("AWS_ENDPOINT_URL", "http://g"),
                    ("AWS_ENDPOINT_URL_MARKETPLACE_METERING", "http://m")
                ])
            )
            .await,
            "http://m"
        );
        assert_eq!(
            endpoint_with("x", env(&[("AWS_ENDPOINT_URL", "")])).await,
            "https://metering.marketplace.x.amazonaws.com"
        );
    }

    #[tokio::test]
    async fn endpoint_follows_the_partition_and_fips_settings() {
        let none = |_: &str| None;
        assert_eq!(
            endpoint_with("cn-north-1", none).await,
            "https://metering.marketplace.cn-north-1.amazonaws.com.cn"
        );
        let fips = |name: &str| (name == "AWS_USE_FIPS_ENDPOINT").then(|| "true".to_owned());
        assert_eq!(
            endpoint_with("us-east-1", fips).await,
            "https://metering.marketplace-fips.us-east-1.amazonaws.com"
        );
    }
}
