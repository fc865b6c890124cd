//! Which endpoint the SDK will call, resolved by the SDK's own rules (partitions, FIPS,
//! dual-stack) from the same environment variables the SDK reads, for messages and `doctor`;
//! and every way the SDK can be given another endpoint, which a locked build refuses.
//!
//! The AWS SDK for Rust takes another endpoint for a service from, in its order: the service's
//! variable (`AWS_ENDPOINT_URL_<SERVICE>`), the global `AWS_ENDPOINT_URL`, the `services` section
//! the active profile of the AWS config files names (`[services NAME]` with
//! `<service> =\n  endpoint_url = ...`), then `endpoint_url` in that profile; unless
//! `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` (or the profile's `ignore_configured_endpoint_urls`) is
//! true. [`configured_override`] asks the SDK's own loader (aws-config's profile files,
//! aws-runtime's `EnvConfigValue`) the same question, so no way the SDK accepts is missed.

use std::fmt;

use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_runtime::env_config::section::EnvConfigSections;
use aws_runtime::env_config::EnvConfigValue;
use aws_sdk_licensemanager::config::endpoint as license_manager_endpoint;
use aws_sdk_marketplacemetering::config::endpoint as metering_endpoint;
use aws_sdk_sts::config::endpoint as sts_endpoint;
use aws_types::origin::Origin;
use aws_types::os_shim_internal::{Env, Fs};

use crate::domain::text;
use crate::domain::trust::TrustAnchors;

/// The AWS services the gate calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    MarketplaceMetering,
    LicenseManager,
    Sts,
}

impl Service {
    pub const ALL: [Service; 3] = [
        Service::MarketplaceMetering,
        Service::LicenseManager,
        Service::Sts,
    ];

    /// The service ID the SDK derives its variable and profile key from.
    fn sdk_id(self) -> &'static str {
        match self {
            Service::MarketplaceMetering => "Marketplace Metering",
            Service::LicenseManager => "License Manager",
            Service::Sts => "STS",
        }
    }

    /// The variable that overrides this service's endpoint (before `AWS_ENDPOINT_URL`).
    pub fn variable(self) -> &'static str {
        match self {
            Service::MarketplaceMetering => "AWS_ENDPOINT_URL_MARKETPLACE_METERING",
            Service::LicenseManager => "AWS_ENDPOINT_URL_LICENSE_MANAGER",
            Service::Sts => "AWS_ENDPOINT_URL_STS",
        }
    }

    /// Whether `ignore_configured_endpoint_urls` keeps every client of this service on AWS's
    /// endpoint. Not STS: aws-config's own credential providers (IRSA's web identity, a
    /// profile's role) build their STS client with the flag off, so they still follow
    /// `AWS_ENDPOINT_URL_STS` and the rest.
    fn honours_ignore_flag(self) -> bool {
        self != Service::Sts
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::MarketplaceMetering => "AWS Marketplace Metering",
            Service::LicenseManager => "AWS License Manager",
            Service::Sts => "AWS STS",
        })
    }
}

/// The global variable, also the SDK's key for every service's own variable.
pub const GLOBAL_VARIABLE: &str = "AWS_ENDPOINT_URL";
/// The profile key, in a profile or under a service in a `services` section.
const PROFILE_KEY: &str = "endpoint_url";

/// Which endpoints a client may talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// Whatever the SDK configuration says: endpoint overrides, the container's CA bundle (an
    /// open build: how tests and the demo reach the emulator).
    Configured,
    /// AWS's own endpoint for the Region, over TLS chained to Amazon Trust Services' roots (a
    /// locked build).
    AwsOnly,
}

impl Pinning {
    /// A locked build talks to AWS only.
    pub fn of(anchors: &TrustAnchors) -> Pinning {
        if anchors.is_locked() {
            Pinning::AwsOnly
        } else {
            Pinning::Configured
        }
    }
}

/// Where another endpoint is configured for a service the gate calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointOverride {
    /// `AWS_ENDPOINT_URL_<SERVICE>` or `AWS_ENDPOINT_URL`.
    Variable(&'static str),
    /// `endpoint_url` in the active profile of the AWS config files.
    Profile { files: String, profile: String },
    /// `endpoint_url` under a service in the `services` section the active profile names.
    ServicesSection {
        files: String,
        profile: String,
        section: String,
        service: Service,
    },
}

impl fmt::Display for EndpointOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointOverride::Variable(name) => write!(f, "{name} is set"),
            EndpointOverride::Profile { files, profile } => {
                write!(f, "{files} sets endpoint_url in profile {profile:?}")
            }
            EndpointOverride::ServicesSection {
                files,
                profile,
                section,
                service,
            } => write!(
                f,
                "{files} sets an endpoint_url for {service} in the services section {section:?} \
                 that profile {profile:?} names"
            ),
        }
    }
}

/// The first way `env` and the AWS config files on `fs` give the SDK another endpoint for
/// Marketplace Metering, License Manager or STS, read by the SDK's own loader; `None` when every
/// client would call AWS's own endpoint.
pub async fn configured_override(env: &Env, fs: &Fs) -> Option<EndpointOverride> {
    let profiles = profiles(env, fs, EnvConfigFiles::default()).await;
    let ignore = EnvConfigValue::new()
        .env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .profile("ignore_configured_endpoint_urls")
        .load(env, profiles.as_ref())
        // As the SDK: anything but true or false is a warning and counts as unset.
        .is_some_and(|(value, _)| value.eq_ignore_ascii_case("true"));
    for service in Service::ALL {
        if ignore && service.honours_ignore_flag() {
            continue;
        }
        let Some((value, source)) = EnvConfigValue::new()
            .env(GLOBAL_VARIABLE)
            .profile(PROFILE_KEY)
            .service_id(service.sdk_id())
            .load(env, profiles.as_ref())
        else {
            continue;
        };
        // An empty value points nowhere (the SDK's call fails); it cannot redirect one.
        if value.trim().is_empty() {
            continue;
        }
        let origin: Origin = (&source).into();
        let found = if origin == Origin::service_environment_variable() {
            EndpointOverride::Variable(service.variable())
        } else if origin == Origin::shared_environment_variable() {
            EndpointOverride::Variable(GLOBAL_VARIABLE)
        } else {
            let profiles = profiles.as_ref()?;
            let files = which_files(env, fs, |sections| {
                EnvConfigValue::new()
                    .profile(PROFILE_KEY)
                    .service_id(service.sdk_id())
                    .load(env, Some(sections))
                    .is_some()
            })
            .await;
            let profile = text::quoted(profiles.selected_profile());
            match profiles.get("services") {
                Some(section) if origin == Origin::service_profile_file() => {
                    EndpointOverride::ServicesSection {
                        files,
                        profile,
                        section: text::quoted(section),
                        service,
                    }
                }
                _ => EndpointOverride::Profile { files, profile },
            }
        };
        return Some(found);
    }
    None
}

/// A locked build refuses any other endpoint, before any call: [`configured_override`] of this
/// process's environment and files.
pub async fn refuse_overrides(pinning: Pinning) -> Result<(), EndpointOverride> {
    match pinning {
        Pinning::Configured => Ok(()),
        Pinning::AwsOnly => match configured_override(&Env::real(), &Fs::real()).await {
            Some(found) => Err(found),
            None => Ok(()),
        },
    }
}

/// The profiles the SDK would read; `None` when it could not (it then reads none either).
async fn profiles(env: &Env, fs: &Fs, files: EnvConfigFiles) -> Option<EnvConfigSections> {
    #[allow(deprecated)] // The alias aws-config's `load` still takes.
    let files: aws_config::profile::profile_file::ProfileFiles = files;
    aws_config::profile::load(fs, env, &files, None).await.ok()
}

/// Which of the AWS config files holds what `found` finds, named as an operator would look for
/// it (the variable's path, or the SDK's default).
async fn which_files(env: &Env, fs: &Fs, found: impl Fn(&EnvConfigSections) -> bool) -> String {
    let path = |variable: &str, default: &str| {
        env.get(variable)
            .ok()
            .filter(|path| !path.is_empty())
            .map_or_else(|| default.to_owned(), |path| text::quoted(&path))
    };
    let config = path("AWS_CONFIG_FILE", "~/.aws/config");
    let credentials = path("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials");
    let only = |kind| match kind {
        EnvConfigFileKind::Config => EnvConfigFiles::builder()
            .include_default_config_file(true)
            .build(),
        EnvConfigFileKind::Credentials => EnvConfigFiles::builder()
            .include_default_credentials_file(true)
            .build(),
    };
    if profiles(env, fs, only(EnvConfigFileKind::Config))
        .await
        .is_some_and(|sections| found(&sections))
    {
        format!("the AWS config file {config}")
    } else if profiles(env, fs, only(EnvConfigFileKind::Credentials))
        .await
        .is_some_and(|sections| found(&sections))
    {
        format!("the AWS credentials file {credentials}")
    } else {
        format!("the AWS config files ({config} with {credentials})")
    }
}

/// The variable naming another endpoint for `service`, if one is set (the service's own, then
/// the global one): in an open build, an emulator.
pub fn override_variable(
    service: Service,
    env: impl Fn(&str) -> Option<String>,
) -> Option<&'static str> {
    [service.variable(), GLOBAL_VARIABLE]
        .into_iter()
        .find(|name| env(name).is_some_and(|url| !url.trim().is_empty()))
}

/// The endpoint `service`'s client calls in `region`, for messages: AWS's own for a pinned
/// client, else the variable's.
pub async fn resolve(service: Service, region: &str, pinning: Pinning) -> String {
    resolve_with(service, region, pinning, |name| std::env::var(name).ok()).await
}

async fn resolve_with(
    service: Service,
    region: &str,
    pinning: Pinning,
    env: impl Fn(&str) -> Option<String>,
) -> String {
    let flag = |name: &str| env(name).is_some_and(|value| value.eq_ignore_ascii_case("true"));
    let (fips, dual_stack) = (
        flag("AWS_USE_FIPS_ENDPOINT"),
        flag("AWS_USE_DUALSTACK_ENDPOINT"),
    );
    let endpoint = match pinning {
        Pinning::Configured => override_variable(service, &env).and_then(&env),
        Pinning::AwsOnly => None,
    };
    // One SDK's endpoint rules: the same parameters, each crate its own types.
    macro_rules! resolve_by {
        ($rules:ident) => {
            match $rules::Params::builder()
                .region(region)
                .use_fips(fips)
                .use_dual_stack(dual_stack)
                .set_endpoint(endpoint)
                .build()
            {
                Ok(params) => $rules::ResolveEndpoint::resolve_endpoint(
                    &$rules::DefaultResolver::new(),
                    &params,
                )
                .await
                .map(|endpoint| endpoint.url().to_owned())
                .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
    }
    let resolved = match service {
        Service::MarketplaceMetering => resolve_by!(metering_endpoint),
        Service::LicenseManager => resolve_by!(license_manager_endpoint),
        Service::Sts => resolve_by!(sts_endpoint),
    };
    resolved.unwrap_or_else(|e| format!("(no {service} endpoint for Region {region}: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "/home/u/.aws/config";
    const CREDENTIALS: &str = "/home/u/.aws/credentials";

    /// What the SDK would find with these variables (`HOME` set) and these AWS files.
    async fn found(vars: &[(&str, &str)], files: &[(&str, &str)]) -> Option<EndpointOverride> {
        let mut vars = vars.to_vec();
        vars.push(("HOME", "/home/u"));
        configured_override(&Env::from_slice(&vars), &Fs::from_slice(files)).await
    }

    fn profile(files: &str, profile: &str) -> Option<EndpointOverride> {
        Some(EndpointOverride::Profile {
            files: files.to_owned(),
            profile: profile.to_owned(),
        })
    }

    #[tokio::test]
    async fn every_variable_that_names_another_endpoint_is_found() {
        assert_eq!(found(&[], &[]).await, None);
        for service in Service::ALL {
            assert_eq!(
                found(&[(service.variable(), "http://127.0.0.1:1")], &[]).await,
                Some(EndpointOverride::Variable(service.variable())),
                "{service}"
            );
        }
        assert_eq!(
            found(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:1")], &[]).await,
            Some(EndpointOverride::Variable("AWS_ENDPOINT_URL"))
        );
        // Another service's variable points nowhere the gate calls.
        assert_eq!(
            found(&[("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")], &[]).await,
            None
        );
        // Empty values point nowhere.
        assert_eq!(
            found(
                &[
                    ("AWS_ENDPOINT_URL", " "),
                    ("AWS_ENDPOINT_URL_LICENSE_MANAGER", "")
                ],
                &[]
            )
            .await,
            None
        );
    }

    #[tokio::test]
    async fn the_service_variables_are_the_ones_the_sdk_reads() {
        for service in Service::ALL {
            let env = Env::from_slice(&[(service.variable(), "http://x")]);
            let (value, source) = EnvConfigValue::new()
                .env(GLOBAL_VARIABLE)
                .service_id(service.sdk_id())
                .load(&env, None)
                .expect("the SDK reads the variable");
            assert_eq!(value, "http://x");
            let origin: Origin = (&source).into();
            assert_eq!(origin, Origin::service_environment_variable());
        }
    }

    #[tokio::test]
    async fn the_active_profile_of_the_config_files_is_read_as_the_sdk_reads_it() {
        let endpoint = "[default]\nendpoint_url = http://127.0.0.1:1\n";
        assert_eq!(
            found(&[], &[(CONFIG, endpoint)]).await,
            profile("the AWS config file ~/.aws/config", "default")
        );
        assert_eq!(
            found(&[], &[(CREDENTIALS, endpoint)]).await,
            profile("the AWS credentials file ~/.aws/credentials", "default")
        );
        // AWS_CONFIG_FILE moves the file; AWS_PROFILE chooses the profile.
        let other = "[default]\nregion = us-east-1\n[profile other]\nendpoint_url = http://x\n";
        assert_eq!(
            found(&[("AWS_CONFIG_FILE", "/etc/aws")], &[("/etc/aws", other)]).await,
            None,
            "the default profile has none"
        );
        assert_eq!(
            found(
                &[("AWS_CONFIG_FILE", "/etc/aws"), ("AWS_PROFILE", "other")],
                &[("/etc/aws", other)]
            )
            .await,
            profile("the AWS config file /etc/aws", "other")
        );
        // A file the SDK cannot parse is one it reads nothing from.
        assert_eq!(
            found(&[], &[(CONFIG, "endpoint_url = http://x\n[unclosed")]).await,
            None
        );
    }

    #[tokio::test]
    async fn a_services_section_the_profile_names_is_read_for_each_service() {
        for (service, key) in [
            (Service::MarketplaceMetering, "marketplace-metering"),
            (Service::LicenseManager, "license-manager"),
            (Service::Sts, "sts"),
        ] {
            let config = format!(
                "[default]\nservices = local\n[services local]\n{key} =\n  endpoint_url = http://x\n"
            );
            assert_eq!(
                found(&[], &[(CONFIG, &config)]).await,
                Some(EndpointOverride::ServicesSection {
                    files: "the AWS config file ~/.aws/config".to_owned(),
                    profile: "default".to_owned(),
                    section: "local".to_owned(),
                    service,
                }),
                "{key}"
            );
        }
        // A section no profile names, or one for another service, is not read.
        let unnamed = "[default]\n[services local]\nsts =\n  endpoint_url = http://x\n";
        assert_eq!(found(&[], &[(CONFIG, unnamed)]).await, None);
        let s3 = "[default]\nservices = local\n[services local]\ns3 =\n  endpoint_url = http://x\n";
        assert_eq!(found(&[], &[(CONFIG, s3)]).await, None);
    }

    #[tokio::test]
    async fn the_ignore_flag_counts_as_the_sdk_counts_it_except_for_sts() {
        let ignore = [("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "TRUE")];
        let metering = (Service::MarketplaceMetering.variable(), "http://x");
        assert_eq!(found(&[ignore[0], metering], &[]).await, None);
        // aws-config's credential providers build their STS client without the flag: it still
        // follows STS's own variable and the global one.
        assert_eq!(
            found(&[ignore[0], (Service::Sts.variable(), "http://x")], &[]).await,
            Some(EndpointOverride::Variable("AWS_ENDPOINT_URL_STS"))
        );
        assert_eq!(
            found(&[ignore[0], ("AWS_ENDPOINT_URL", "http://x")], &[]).await,
            Some(EndpointOverride::Variable("AWS_ENDPOINT_URL"))
        );
        // The profile's flag, unless the variable says otherwise; a value that is neither
        // true nor false counts as unset.
        let config = "[default]\nignore_configured_endpoint_urls = true\n";
        assert_eq!(found(&[metering], &[(CONFIG, config)]).await, None);
        for not_ignored in ["false", "yes"] {
            assert_eq!(
                found(
                    &[
                        ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", not_ignored),
                        metering
                    ],
                    &[(CONFIG, config)]
                )
                .await,
                Some(EndpointOverride::Variable(metering.0)),
                "{not_ignored}"
            );
        }
    }

    #[tokio::test]
    async fn the_sentence_names_the_place_and_escapes_what_the_environment_says() {
        // (The SDK reads no profile whose name holds a control character.)
        let config = "[profile p]\nendpoint_url = http://x\n";
        let found = found(
            &[("AWS_CONFIG_FILE", "/x\ny"), ("AWS_PROFILE", "p")],
            &[("/x\ny", config)],
        )
        .await
        .expect("found");
        assert_eq!(
            found.to_string(),
            "the AWS config file /x\\ny sets endpoint_url in profile \"p\""
        );
        assert_eq!(
            EndpointOverride::Variable("AWS_ENDPOINT_URL").to_string(),
            "AWS_ENDPOINT_URL is set"
        );
    }

    #[tokio::test]
    async fn a_pinned_client_resolves_aws_own_endpoint_whatever_the_variables_say() {
        let env = |name: &str| {
            [
                ("AWS_ENDPOINT_URL_MARKETPLACE_METERING", "http://m"),
                ("AWS_ENDPOINT_URL", "http://g"),
                ("AWS_ENDPOINT_URL_STS", "http://s"),
            ]
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
        };
        let cases = [
            (
                Service::MarketplaceMetering,
                "http://m",
                "https://metering.marketplace.eu-central-1.amazonaws.com",
            ),
            (
                Service::LicenseManager,
                "http://g",
                "https://license-manager.eu-central-1.amazonaws.com",
            ),
            (
                Service::Sts,
                "http://s",
                "https://sts.eu-central-1.amazonaws.com",
            ),
        ];
        for (service, configured, aws) in cases {
            assert_eq!(
                resolve_with(service, "eu-central-1", Pinning::Configured, env).await,
                configured
            );
            assert_eq!(
                resolve_with(service, "eu-central-1", Pinning::AwsOnly, env).await,
                aws
            );
        }
        assert_eq!(
            resolve_with(
                Service::MarketplaceMetering,
                "cn-north-1",
                Pinning::AwsOnly,
                env
            )
            .await,
            "https://metering.marketplace.cn-north-1.amazonaws.com.cn"
        );
        let fips = |name: &str| (name == "AWS_USE_FIPS_ENDPOINT").then(|| "true".to_owned());
        assert_eq!(
            resolve_with(
                Service::MarketplaceMetering,
                "us-east-1",
                Pinning::AwsOnly,
                fips
            )
            .await,
            "https://metering.marketplace-fips.us-east-1.amazonaws.com"
        );
    }

    #[test]
    fn a_locked_build_pins_an_open_build_does_not() {
        assert_eq!(Pinning::of(&TrustAnchors::OPEN), Pinning::Configured);
        let locked = TrustAnchors {
            product_codes: Some(&["prod"]),
            keys: &[(1, "key")],
        };
        assert_eq!(Pinning::of(&locked), Pinning::AwsOnly);
    }
}
