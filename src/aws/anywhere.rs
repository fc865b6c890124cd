//! Credentials outside AWS (EKS Anywhere, ECS Anywhere, on-premises): the buyer's License
//! Manager token (a refresh token, in a mounted secret) is exchanged for an access token with
//! GetAccessToken, and that for role credentials with STS AssumeRoleWithWebIdentity, both
//! unsigned. Used after the SDK's default chain found nothing, as AWS's own providers do.
//!
//! AWS's material names the token file two ways (the Java provider and Helm snippet
//! `AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE`, the Go provider `AWS_LICENSE_ACCESS_FILE`): both are
//! read, and a conflict between them is refused rather than guessed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_config::Region;
use aws_credential_types::provider::{self, error::CredentialsError, ProvideCredentials};
use aws_credential_types::Credentials;
use aws_sdk_sts::error::SdkError;
use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError;
use tokio::time::Instant;

use super::endpoint::{self, Pinning, Service};
use super::identity::CredentialSource;
use super::license_manager::{self, LicenseManager, LicenseManagerError};
use super::retry::{self, Attempt, GaveUp, RetryError, RetryPolicy, TransientKind};
use super::sdk_call::{self, Undocumented};
use crate::domain::files::{self, FileError};
use crate::domain::text;

/// The token file variables, the first preferred.
pub const TOKEN_FILE_VARIABLES: [&str; 2] = [
    "AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE",
    "AWS_LICENSE_ACCESS_FILE",
];
/// Where the role ARN comes from (or an `iam_role` file beside the token, as the secret has).
pub const ROLE_VARIABLE: &str = "AWS_ROLE_ARN";
/// The Region outside AWS when nothing sets one: AWS's guidance for Anywhere charts.
pub const DEFAULT_REGION: &str = "us-east-1";
/// License Manager tokens are JWTs of at most 4096 characters (the model's TokenString).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// How long one exchange may take when the SDK asks for fresh credentials.
const REFRESH_DEADLINE: Duration = Duration::from_secs(60);

/// The Anywhere configuration, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnywhereSettings {
    pub token_file: PathBuf,
    /// Which variable named it.
    pub token_variable: &'static str,
    pub role_arn: String,
    pub session_name: String,
}

/// Why the Anywhere credentials could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AnywhereError {
    #[error("{} and {} name different files ({} and {})", TOKEN_FILE_VARIABLES[0], TOKEN_FILE_VARIABLES[1], first.display(), second.display())]
    ConflictingTokenFiles { first: PathBuf, second: PathBuf },
    #[error("{token_variable} is set but no role: neither {ROLE_VARIABLE} nor an iam_role file beside the token")]
    NoRole { token_variable: &'static str },
    #[error("the license token file {} ({variable}) cannot be read: {source}", path.display())]
    TokenFile {
        variable: &'static str,
        path: PathBuf,
        source: FileError,
    },
    #[error("the license token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("GetAccessToken: {0}")]
    AccessToken(LicenseManagerError),
    #[error("AssumeRoleWithWebIdentity for {role_arn}: {code}: {aws_message}")]
    AssumeRoleRefused {
        role_arn: String,
        code: String,
        aws_message: String,
        request_id: Option<String>,
    },
    #[error("AssumeRoleWithWebIdentity at {endpoint} did not answer in time ({} attempts); last: {}", gave_up.attempts, gave_up.last.detail)]
    StsUnreachable { endpoint: String, gave_up: GaveUp },
    #[error("AssumeRoleWithWebIdentity failed: {0}")]
    Sts(String),
}

impl AnywhereSettings {
    /// The settings when a token file variable is set, `None` when neither is (not Anywhere).
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<AnywhereSettings>, AnywhereError> {
        let named: Vec<(&'static str, PathBuf)> = TOKEN_FILE_VARIABLES
            .iter()
            .filter_map(|name| {
                env(name)
                    .filter(|value| !value.trim().is_empty())
                    .map(|value| (*name, PathBuf::from(value.trim())))
            })
            .collect();
        let (token_variable, token_file) = match named.as_slice() {
            [] => return Ok(None),
            [(_, first), (_, second)] if first != second => {
                return Err(AnywhereError::ConflictingTokenFiles {
                    first: first.clone(),
                    second: second.clone(),
                })
            }
            [(name, path), ..] => (*name, path.clone()),
        };
        let role_arn = match env(ROLE_VARIABLE).filter(|arn| !arn.trim().is_empty()) {
            Some(arn) => arn.trim().to_owned(),
            None => role_beside(&token_file).ok_or(AnywhereError::NoRole { token_variable })?,
        };
        let session_name = env("AWS_ROLE_SESSION_NAME")
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| {
                format!(
                    "entitlement-gate-{}",
                    crate::domain::time::epoch_seconds(SystemTime::now())
                )
            });
        Ok(Some(AnywhereSettings {
            token_file,
            token_variable,
            role_arn,
            session_name,
        }))
    }
}

/// The `iam_role` key of the buyer's secret, mounted beside `license_token`.
fn role_beside(token_file: &Path) -> Option<String> {
    let path = token_file.parent()?.join("iam_role");
    files::read_limited_to_string(&path, 2048)
        .ok()
        .map(|arn| arn.trim().to_owned())
        .filter(|arn| !arn.is_empty())
}

/// The Anywhere credential provider: each refresh re-reads the token file (a rotated secret is
/// picked up), exchanges it and assumes the role.
#[derive(Debug)]
pub struct AnywhereProvider {
    settings: AnywhereSettings,
    license_manager: LicenseManager,
    sts: aws_sdk_sts::Client,
    sts_endpoint: String,
    retry: RetryPolicy,
    /// Credentials from the exchange made at start-up (for its precise failure), handed to the
    /// SDK's cache on its first ask instead of a second exchange.
    primed: std::sync::Mutex<Option<Credentials>>,
}

impl AnywhereProvider {
    pub async fn new(
        settings: AnywhereSettings,
        region: Region,
        retry: RetryPolicy,
        pinning: Pinning,
    ) -> AnywhereProvider {
        let license_manager = LicenseManager::new(
            region.clone(),
            None,
            CredentialSource::LicenseToken,
            retry,
            pinning,
        )
        .await;
        let sdk = sdk_call::sdk_config(region.clone(), None, retry.attempt_timeout, pinning).await;
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(&sdk)
                .interceptor(sdk_call::ResponseSizeLimit)
                .build(),
        );
        let sts_endpoint = endpoint::resolve(Service::Sts, region.as_ref(), pinning).await;
        AnywhereProvider {
            settings,
            license_manager,
            sts,
            sts_endpoint,
            retry,
            primed: std::sync::Mutex::new(None),
        }
    }

    /// Exchanges once now, by `deadline`, so a refusal is reported precisely at start-up; the
    /// credentials serve the first call.
    pub async fn prime(&self, deadline: Instant) -> Result<(), AnywhereError> {
        let credentials = self.exchange(deadline).await?;
        *self.primed.lock().unwrap_or_else(|e| e.into_inner()) = Some(credentials);
        Ok(())
    }

    /// The primed credentials, once, while they have a minute left.
    fn take_primed(&self) -> Option<Credentials> {
        let credentials = self
            .primed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let fresh = credentials
            .expiry()
            .is_none_or(|expiry| expiry > SystemTime::now() + Duration::from_secs(60));
        fresh.then_some(credentials)
    }

    pub fn settings(&self) -> &AnywhereSettings {
        &self.settings
    }

    /// One exchange: token file, GetAccessToken, AssumeRoleWithWebIdentity, by `deadline`.
    async fn exchange(&self, deadline: Instant) -> Result<Credentials, AnywhereError> {
        let settings = &self.settings;
        let raw = files::read_limited_to_string(&settings.token_file, MAX_TOKEN_BYTES).map_err(
            |source| AnywhereError::TokenFile {
                variable: settings.token_variable,
                path: settings.token_file.clone(),
                source,
            },
        )?;
        // AWS's own instructions (`jq '.Token'`) leave the JSON quotes on.
        let token = raw.trim().trim_matches('"').trim();
        if token.is_empty() {
            return Err(AnywhereError::EmptyToken {
                path: settings.token_file.clone(),
            });
        }
        let access_token =
            license_manager::get_access_token(&self.license_manager, token, deadline)
                .await
                .map_err(AnywhereError::AccessToken)?;
        self.assume_role(&access_token, deadline).await
    }

    async fn assume_role(
        &self,
        access_token: &str,
        deadline: Instant,
    ) -> Result<Credentials, AnywhereError> {
        let settings = &self.settings;
        let answer = retry::until_deadline(
            "AssumeRoleWithWebIdentity",
            self.retry,
            deadline,
            || async {
                let sent = self
                    .sts
                    .assume_role_with_web_identity()
                    .role_arn(&settings.role_arn)
                    .role_session_name(&settings.session_name)
                    .web_identity_token(access_token)
                    .send()
                    .await;
                match sent {
                    Ok(output) => Attempt::Answered(output),
                    Err(error) => classify_sts(&error, &settings.role_arn),
                }
            },
        )
        .await
        .map_err(|error| match error {
            RetryError::Failed(error) => error,
            RetryError::GaveUp(gave_up) => AnywhereError::StsUnreachable {
                endpoint: self.sts_endpoint.clone(),
                gave_up,
            },
        })?;
        let credentials = answer
            .credentials()
            .ok_or_else(|| AnywhereError::Sts("the answer holds no credentials".to_owned()))?;
        let expiry = SystemTime::try_from(*credentials.expiration()).ok();
        Ok(Credentials::new(
            credentials.access_key_id(),
            credentials.secret_access_key(),
            Some(credentials.session_token().to_owned()),
            expiry,
            "entitlement-gate-anywhere",
        ))
    }
}

impl ProvideCredentials for AnywhereProvider {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            if let Some(credentials) = self.take_primed() {
                return Ok(credentials);
            }
            self.exchange(Instant::now() + REFRESH_DEADLINE)
                .await
                .map_err(CredentialsError::provider_error)
        })
    }
}

/// Sorts a failed AssumeRoleWithWebIdentity: a refused token or role ends the exchange, an
/// unreachable identity provider is retried.
fn classify_sts<T>(
    error: &SdkError<AssumeRoleWithWebIdentityError>,
    role_arn: &str,
) -> Attempt<T, AnywhereError> {
    let refused = |code: &str, message: &str, request_id: &Option<String>| {
        Some(Attempt::Failed(AnywhereError::AssumeRoleRefused {
            role_arn: text::quoted(role_arn),
            code: code.to_owned(),
            aws_message: message.to_owned(),
            request_id: request_id.clone(),
        }))
    };
    sdk_call::classify(
        error,
        |error, code, message, request_id| {
            use AssumeRoleWithWebIdentityError as A;
            match error {
                A::IdpCommunicationErrorException(_) => Some(sdk_call::retry_later(
                    TransientKind::ServerError,
                    code,
                    message,
                    request_id,
                )),
                A::ExpiredTokenException(_)
                | A::IdpRejectedClaimException(_)
                | A::InvalidIdentityTokenException(_)
                | A::MalformedPolicyDocumentException(_)
                | A::PackedPolicyTooLargeException(_)
                | A::RegionDisabledException(_) => refused(code, message, request_id),
                _ => None,
            }
        },
        |failure| match failure {
            Undocumented::AccessDenied {
                code,
                aws_message,
                request_id,
            } => AnywhereError::AssumeRoleRefused {
                role_arn: text::quoted(role_arn),
                code,
                aws_message,
                request_id,
            },
            other => AnywhereError::Sts(other.to_string()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(vars: &'a [(&'static str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn either_token_variable_works_and_a_conflict_is_refused() {
        assert_eq!(AnywhereSettings::from_env(env_of(&[])).unwrap(), None);
        let role = (
            ROLE_VARIABLE,
            "arn:aws:iam::111122223333:role/buyer".to_owned(),
        );
        for variable in TOKEN_FILE_VARIABLES {
            let settings = AnywhereSettings::from_env(env_of(&[
                (
                    variable,
                    "/var/run/secrets/product-license/license_token".to_owned(),
                ),
                role.clone(),
            ]))
            .unwrap()
            .unwrap();
            assert_eq!(settings.token_variable, variable);
            assert_eq!(settings.role_arn, "arn:aws:iam::111122223333:role/buyer");
            assert!(settings.session_name.starts_with("entitlement-gate-"));
        }
        let same = "/t".to_owned();
        assert!(AnywhereSettings::from_env(env_of(&[
            (TOKEN_FILE_VARIABLES[0], same.clone()),
            (TOKEN_FILE_VARIABLES[1], same),
            role.clone(),
        ]))
        .is_ok());
        assert!(matches!(
            AnywhereSettings::from_env(env_of(&[
                (TOKEN_FILE_VARIABLES[0], "/a".to_owned()),
                (TOKEN_FILE_VARIABLES[1], "/b".to_owned()),
                role,
            ])),
            Err(AnywhereError::ConflictingTokenFiles { .. })
        ));
    }

    #[test]
    fn the_role_may_come_from_the_secrets_iam_role_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("license_token");
        let token_text = token.display().to_string();
        assert!(matches!(
            AnywhereSettings::from_env(env_of(&[(TOKEN_FILE_VARIABLES[0], token_text.clone())])),
            Err(AnywhereError::NoRole { .. })
        ));
        std::fs::write(dir.path().join("iam_role"), "arn:aws:iam::1:role/r\n").unwrap();
        let settings = AnywhereSettings::from_env(env_of(&[(TOKEN_FILE_VARIABLES[1], token_text)]))
            .unwrap()
            .unwrap();
        assert_eq!(settings.role_arn, "arn:aws:iam::1:role/r");
    }
}
