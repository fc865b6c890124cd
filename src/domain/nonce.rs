//! The nonce that binds a RegisterUsage token to one run of the gate in one workload.
//!
//! `wb1.<random>.<binding>`: 256 bits of fresh OS randomness, and a SHA-256 commitment to the
//! random part and the workload identity. AWS signs the nonce into the token, so the binding
//! cannot be edited; `verify` recomputes it with its own workload identity and refuses a token
//! from any other pod or task, including a genuine one copied from an older pod of the same
//! buyer or from another buyer.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::TryRngCore as _;

use super::workload::WorkloadId;

/// Bytes of OS randomness per nonce: 256 bits, comfortably above the 128-bit floor.
const RANDOM_BYTES: usize = 32;
/// Names this format (and its version) in every nonce.
const PREFIX: &str = "wb1";
/// Separates this commitment from any other use of SHA-256 over similar input.
const DOMAIN: &[u8] = b"entitlement-gate workload-bound nonce v1\0";

/// A fresh nonce bound to a workload: 91 URL-safe characters, well under RegisterUsage's 255.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce(String);

/// Why a nonce does not belong to this workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceProblem {
    /// Not in the `wb1.<random>.<binding>` format (made by hand, or by an older gate).
    NotWorkloadBound,
    /// Bound to another workload identity.
    OtherWorkload,
}

impl Nonce {
    /// Draws a new nonce for `workload` from the operating system's CSPRNG; fails rather than
    /// fall back.
    pub fn generate(workload: &WorkloadId) -> Result<Self, rand::rand_core::OsError> {
        let mut random = [0u8; RANDOM_BYTES];
        OsRng.try_fill_bytes(&mut random)?;
        Ok(Self(format!(
            "{PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(random),
            URL_SAFE_NO_PAD.encode(binding(&random, workload))
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks that `nonce` was generated for `workload`.
pub fn check_binding(nonce: &str, workload: &WorkloadId) -> Result<(), NonceProblem> {
    let mut parts = nonce.split('.');
    let (Some(PREFIX), Some(random), Some(bound), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(NonceProblem::NotWorkloadBound);
    };
    let (Ok(random), Ok(bound)) = (
        URL_SAFE_NO_PAD.decode(random),
        URL_SAFE_NO_PAD.decode(bound),
    ) else {
        return Err(NonceProblem::NotWorkloadBound);
    };
    if random.len() != RANDOM_BYTES {
        return Err(NonceProblem::NotWorkloadBound);
    }
    if bound != binding(&random, workload) {
        return Err(NonceProblem::OtherWorkload);
    }
    Ok(())
}

/// SHA-256 over the domain, the random part, and the workload identity.
fn binding(random: &[u8], workload: &WorkloadId) -> Vec<u8> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(DOMAIN);
    context.update(random);
    context.update(workload.id.as_bytes());
    context.finish().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::workload::WorkloadIdSource;
    use std::collections::HashSet;

    fn workload(id: &str) -> WorkloadId {
        WorkloadId {
            id: id.to_owned(),
            source: WorkloadIdSource::Configured,
        }
    }

    #[test]
    fn nonces_are_url_safe_fresh_and_bound_to_their_workload() {
        let pod = workload("8d5c7a2e-pod-uid");
        let nonces: HashSet<String> = (0..1000)
            .map(|_| Nonce::generate(&pod).unwrap().0)
            .collect();
        assert_eq!(nonces.len(), 1000, "a nonce repeated");
        for nonce in &nonces {
            assert_eq!(nonce.len(), 91);
            assert!(nonce
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
            assert_eq!(check_binding(nonce, &pod), Ok(()));
        }
    }

    #[test]
    fn another_workload_or_format_is_refused() {
        let nonce = Nonce::generate(&workload("pod-a")).unwrap();
        assert_eq!(
            check_binding(nonce.as_str(), &workload("pod-b")),
            Err(NonceProblem::OtherWorkload)
        );
        // The source does not matter, only the identity: the same pod UID from any source binds.
        let same = WorkloadId {
            source: WorkloadIdSource::Hostname,
            ..workload("pod-a")
        };
        assert_eq!(check_binding(nonce.as_str(), &same), Ok(()));
        let parts: Vec<&str> = nonce.as_str().split('.').collect();
        for bad in [
            "n".to_owned(),
            "vbA-R5nl_iITKSCEi-US_mvieMvdgpU8xAe32NUbcRw".to_owned(),
            format!("wb2.{}.{}", parts[1], parts[2]),
            format!("wb1.{}", parts[1]),
            format!("wb1.{}.{}.x", parts[1], parts[2]),
            format!("wb1.{}.{}", &parts[1][..20], parts[2]),
            format!("wb1.!!!.{}", parts[2]),
        ] {
            assert_eq!(
                check_binding(&bad, &workload("pod-a")),
                Err(NonceProblem::NotWorkloadBound),
                "{bad}"
            );
        }
    }
}
