//! Which workload (Kubernetes pod or ECS task) a process belongs to: the identity the gate's
//! nonce commits to. Resolving it (environment, ECS task metadata, hostname) is the AWS layer's
//! job (`aws::workload`).

use std::fmt;

/// The variable the Helm chart and the plain manifest set, in the gate and the app container,
/// from the pod UID (downward API).
pub const WORKLOAD_ID_VARIABLE: &str = "ENTITLEMENT_GATE_WORKLOAD_ID";

/// The longest workload identity accepted (a pod UID is 36 characters, a task ARN about 100).
pub const MAX_WORKLOAD_ID_BYTES: usize = 1024;

/// Where the workload identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadIdSource {
    /// `ENTITLEMENT_GATE_WORKLOAD_ID`: the pod UID when the chart or manifest sets it.
    Configured,
    /// The task ARN from the ECS task metadata endpoint, the same for every container of a task.
    EcsTaskArn,
    /// The hostname: shared by a pod's containers, but weaker (a buyer can choose it).
    Hostname,
}

impl WorkloadIdSource {
    /// A short stable name, for the handoff and JSON logs.
    pub fn key(self) -> &'static str {
        match self {
            WorkloadIdSource::Configured => "configured",
            WorkloadIdSource::EcsTaskArn => "ecs-task-arn",
            WorkloadIdSource::Hostname => "hostname",
        }
    }
}

impl fmt::Display for WorkloadIdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadIdSource::Configured => "ENTITLEMENT_GATE_WORKLOAD_ID",
            WorkloadIdSource::EcsTaskArn => "the ECS task ARN (task metadata endpoint)",
            WorkloadIdSource::Hostname => "the hostname",
        })
    }
}

/// This workload's identity and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadId {
    pub id: String,
    pub source: WorkloadIdSource,
}
