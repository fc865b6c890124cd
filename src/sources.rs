//! Where the Region and the credentials came from: named in logs, in `doctor`, and in the
//! sentence an operator reads when they are wrong.

use std::fmt;

/// Where the Region came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    /// `--region`/`ENTITLEMENT_GATE_REGION`, for local testing only.
    Override,
    Environment,
    Profile,
    InstanceMetadata,
}

impl fmt::Display for RegionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegionSource::Override => "the --region override (testing only)",
            RegionSource::Environment => "the environment (AWS_REGION/AWS_DEFAULT_REGION)",
            RegionSource::Profile => "the AWS config file profile",
            RegionSource::InstanceMetadata => "EC2 instance metadata (IMDS)",
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
            CredentialSource::InstanceMetadata => {
                "EC2 instance metadata (the node's instance role)"
            }
        })
    }
}
