//! Region and credentials from the AWS SDK's own providers, tried in the SDK's default order,
//! remembering which one answered. A silent fall-back to the node's instance role is the most
//! common metering misconfiguration, so the gate says where its credentials came from.

use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::meta::region::ProvideRegion;
use aws_config::provider_config::ProviderConfig;
use aws_config::Region;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::domain::files::{self, FileError};
use crate::domain::text;

/// Why Region or credentials could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no AWS Region found")]
    NoRegion,
    #[error("no AWS credentials found")]
    NoCredentials {
        tried: Vec<CredentialSource>,
        /// Whether `AWS_WEB_IDENTITY_TOKEN_FILE` is set, i.e. whether IRSA is configured at all.
        web_identity_configured: bool,
    },
    #[error("the {provider} credential provider failed: {detail}")]
    CredentialsFailed {
        provider: CredentialSource,
        detail: String,
    },
    #[error("{variable}={} is not usable: {problem}", path.display())]
    AwsFile {
        variable: &'static str,
        path: PathBuf,
        problem: FileError,
    },
}

/// Where the Region came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    /// `--region`/`ENTITLEMENT_GATE_REGION`, for local testing only.
    Override,
    Environment,
    Profile,
    InstanceMetadata,
    /// Outside AWS with nothing set: License Manager's home Region for AWS Marketplace.
    AnywhereDefault,
}

impl fmt::Display for RegionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegionSource::Override => "the --region override (testing only)",
            RegionSource::Environment => "the environment (AWS_REGION/AWS_DEFAULT_REGION)",
            RegionSource::Profile => "the AWS config file profile",
            RegionSource::InstanceMetadata => "EC2 instance metadata (IMDS)",
            RegionSource::AnywhereDefault => "the Anywhere default (us-east-1; set AWS_REGION)",
        })
    }
}

/// Which credential provider answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Environment,
    Profile,
    /// IRSA on EKS.
    WebIdentityToken,
    EcsContainer,
    EksPodIdentity,
    /// The node's instance role: AWS does not support it for metering.
    InstanceMetadata,
    /// Outside AWS: the buyer's License Manager token exchanged for role credentials.
    LicenseToken,
}

impl CredentialSource {
    /// Sources AWS Marketplace does not support for metering.
    pub fn unsupported_for_metering(self) -> bool {
        matches!(
            self,
            CredentialSource::InstanceMetadata | CredentialSource::EksPodIdentity
        )
    }
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialSource::Environment => "environment variables (AWS_ACCESS_KEY_ID)",
            CredentialSource::Profile => "the AWS config/credentials file profile",
            CredentialSource::WebIdentityToken => "web identity token (IRSA)",
            CredentialSource::EcsContainer => "the ECS task role",
            CredentialSource::EksPodIdentity => "EKS Pod Identity",
            CredentialSource::LicenseToken => {
                "the buyer's License Manager token (Anywhere: GetAccessToken, then the role)"
            }
            CredentialSource::InstanceMetadata => {
                "EC2 instance metadata (the node's instance role)"
            }
        })
    }
}

/// A Region and where it came from.
#[derive(Debug, Clone)]
pub struct ResolvedRegion {
    pub region: Region,
    pub source: RegionSource,
}

/// Credentials, and the provider that supplied them (which a long-running client keeps
/// asking, behind the SDK's cache, as credentials expire).
#[derive(Debug, Clone)]
pub struct ResolvedCredentials {
    pub credentials: Credentials,
    pub source: CredentialSource,
    pub provider: SharedCredentialsProvider,
}

/// The SDK's default Region chain (environment, profile, IMDS), unless overridden.
pub async fn resolve_region(override_region: Option<&str>) -> Option<ResolvedRegion> {
    if let Some(region) = override_region {
        return Some(ResolvedRegion {
            region: Region::new(region.to_owned()),
            source: RegionSource::Override,
        });
    }
    let conf = ProviderConfig::without_region();
    let providers: [(RegionSource, Box<dyn ProvideRegion>); 3] = [
        (
            RegionSource::Environment,
            Box::new(EnvironmentVariableRegionProvider::new()),
        ),
        (
            RegionSource::Profile,
            Box::new(
                aws_config::profile::ProfileFileRegionProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
        (
            RegionSource::InstanceMetadata,
            Box::new(
                aws_config::imds::region::ImdsRegionProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
    ];
    for (source, provider) in providers {
        if let Some(region) = provider.region().await {
            return Some(ResolvedRegion { region, source });
        }
    }
    None
}

/// The SDK's default credential chain, in its order, recording which provider answered.
pub async fn resolve_credentials(region: &Region) -> Result<ResolvedCredentials, IdentityError> {
    let conf = ProviderConfig::without_region().with_region(Some(region.clone()));
    let container_source = if pod_identity_agent_configured() {
        CredentialSource::EksPodIdentity
    } else {
        CredentialSource::EcsContainer
    };
    let providers: [(CredentialSource, Box<dyn ProvideCredentials>); 5] = [
        (
            CredentialSource::Environment,
            Box::new(EnvironmentVariableCredentialsProvider::new()),
        ),
        (
            CredentialSource::Profile,
            Box::new(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
        (
            CredentialSource::WebIdentityToken,
            Box::new(
                aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
        (
            container_source,
            Box::new(
                aws_config::ecs::EcsCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
        (
            CredentialSource::InstanceMetadata,
            Box::new(
                aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                    .configure(&conf)
                    .build(),
            ),
        ),
    ];
    let mut not_found = Vec::new();
    for (source, provider) in providers {
        match provider.provide_credentials().await {
            Ok(credentials) => {
                return Ok(ResolvedCredentials {
                    credentials,
                    source,
                    provider: SharedCredentialsProvider::new(BoxedProvider(provider)),
                })
            }
            Err(CredentialsError::CredentialsNotLoaded(_)) => not_found.push(source),
            Err(error) => {
                return Err(IdentityError::CredentialsFailed {
                    provider: source,
                    detail: text::quoted(&error_chain(&error)),
                })
            }
        }
    }
    Err(IdentityError::NoCredentials {
        tried: not_found,
        web_identity_configured: std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE")
            .is_some_and(|path| !path.is_empty()),
    })
}

/// The largest AWS config, credentials or web identity token file accepted.
pub const MAX_AWS_FILE_BYTES: usize = 1024 * 1024;

/// Files the AWS SDK reads whole, with blocking reads, when it resolves Region and credentials:
/// the variable naming each, and the SDK's default path under `$HOME` when it is unset.
const AWS_FILES: [(&str, Option<&str>); 3] = [
    ("AWS_CONFIG_FILE", Some(".aws/config")),
    ("AWS_SHARED_CREDENTIALS_FILE", Some(".aws/credentials")),
    ("AWS_WEB_IDENTITY_TOKEN_FILE", None),
];

/// Checks, before the SDK reads them, that the files AWS variables name are regular files of a
/// sane size: a FIFO would hang the SDK's read past any deadline, `/dev/zero` would exhaust
/// memory. Absent files are the SDK's business (it reports them itself).
pub fn check_aws_files(env: impl Fn(&str) -> Option<String>) -> Result<(), IdentityError> {
    check_aws_files_with(env, |path| files::check_regular(path, MAX_AWS_FILE_BYTES))
}

/// [`check_aws_files`] with the check of one file passed in.
fn check_aws_files_with(
    env: impl Fn(&str) -> Option<String>,
    check_file: impl Fn(&Path) -> Result<(), FileError>,
) -> Result<(), IdentityError> {
    for (variable, default) in AWS_FILES {
        let configured = env(variable).filter(|path| !path.is_empty());
        let (path, is_default) = match (configured, default, env("HOME")) {
            (Some(path), _, _) => (PathBuf::from(path), false),
            (None, Some(default), Some(home)) => (Path::new(&home).join(default), true),
            _ => continue,
        };
        match check_file(&path) {
            Err(problem) if problem.is_not_found() => {}
            // The SDK skips a default file it may not read, as if it were absent. A runtime may
            // set HOME to the image user's home for a UID the image does not know (podman does:
            // the gate as a mesh proxy's UID, 1337, gets distroless's /home/nonroot, mode 0700).
            Err(problem) if is_default && problem.is_permission_denied() => {}
            Err(problem) => {
                return Err(IdentityError::AwsFile {
                    variable,
                    path,
                    problem,
                })
            }
            Ok(()) => {}
        }
    }
    Ok(())
}

/// A boxed provider as the SDK's shared provider wants it.
#[derive(Debug)]
struct BoxedProvider(Box<dyn ProvideCredentials>);

impl ProvideCredentials for BoxedProvider {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        self.0.provide_credentials()
    }
}

/// EKS Pod Identity hands the SDK a container-credentials URI on its agent's link-local address.
fn pod_identity_agent_configured() -> bool {
    std::env::var("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .is_ok_and(|uri| uri.contains("169.254.170.23") || uri.contains("[fd00:ec2::23]"))
}

/// An error and its sources on one line: SDK errors keep the useful part in the chain. The
/// result may quote the network: pass it through [`text::quoted`] before logging it.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_files_must_be_regular_files_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(&config, "[default]\n").unwrap();
        let config = config.to_str().unwrap().to_owned();
        let env = |vars: Vec<(&'static str, String)>| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            }
        };
        assert!(check_aws_files(env(vec![("AWS_CONFIG_FILE", config)])).is_ok());
        assert!(check_aws_files(env(vec![(
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "/nonexistent/token".into()
        )]))
        .is_ok());
        let refused = check_aws_files(env(vec![(
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "/dev/zero".into(),
        )]));
        assert!(
            matches!(
                refused,
                Err(IdentityError::AwsFile {
                    variable: "AWS_WEB_IDENTITY_TOKEN_FILE",
                    ..
                })
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn an_unreadable_default_aws_file_is_skipped_as_the_sdk_skips_it_but_a_named_one_is_refused() {
        let denied = |_: &Path| -> Result<(), FileError> {
            Err(FileError::Io(std::io::ErrorKind::PermissionDenied.into()))
        };
        let home = |name: &str| (name == "HOME").then(|| "/home/nonroot".to_owned());
        assert!(check_aws_files_with(home, denied).is_ok());
        let named = |name: &str| match name {
            "HOME" => Some("/home/nonroot".to_owned()),
            "AWS_SHARED_CREDENTIALS_FILE" => Some("/etc/aws/credentials".to_owned()),
            _ => None,
        };
        let refused = check_aws_files_with(named, denied);
        assert!(
            matches!(
                refused,
                Err(IdentityError::AwsFile {
                    variable: "AWS_SHARED_CREDENTIALS_FILE",
                    ..
                })
            ),
            "{refused:?}"
        );
    }
}
