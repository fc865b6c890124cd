//! The AWS layer: who we are (Region, credentials, workload) and the API clients, each with its
//! own error type, on the AWS SDK for Rust.
//!
//! - [`identity`]: Region and credentials from the SDK's chains, and where each came from
//! - [`workload`]: the pod or task this process belongs to (environment, ECS task metadata)
//! - [`endpoint`]: the endpoint the SDK will call, for messages and `doctor`
//! - [`retry`]: deadline-aware retries with jittered backoff, shared by every client
//! - [`sdk_call`]: the SDK configuration, answer size limit and failure sorting every client
//!   shares
//! - [`metering`]: the AWS Marketplace Metering API
//! - [`license_manager`]: AWS License Manager (contract pricing, and the Anywhere token)
//! - [`anywhere`]: credentials outside AWS, from the buyer's License Manager token

pub mod anywhere;
pub mod endpoint;
pub mod identity;
pub mod license_manager;
pub mod metering;
pub mod retry;
pub mod sdk_call;
pub mod workload;
