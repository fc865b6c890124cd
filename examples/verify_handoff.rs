//! The main container's side: re-check, in-process, the entitlement the init container verified.
//!
//! Reads the same environment the gate uses: `ENTITLEMENT_GATE_HANDOFF_DIR`,
//! `ENTITLEMENT_GATE_PRODUCT_CODE`, `ENTITLEMENT_GATE_PUBLIC_KEY_FILE`,
//! `ENTITLEMENT_GATE_PUBLIC_KEY_VERSION` (default 1), and the workload identity the gate bound
//! its nonce to (`ENTITLEMENT_GATE_WORKLOAD_ID`, else the ECS task ARN, else the hostname).
//!
//!   cargo run --example verify_handoff
//!
//! Exits 0 when the handoff verifies, 4 when it does not, 2 when the configuration is unusable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use entitlement_gate::aws::workload;
use entitlement_gate::domain::handoff;
use entitlement_gate::domain::key::{KeySource, VerifyingKey};
use entitlement_gate::domain::product_code::ProductCode;
use entitlement_gate::gate::verify::Requirements;

fn main() -> ExitCode {
    let setting = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let configured = || -> Result<(PathBuf, ProductCode, VerifyingKey), String> {
        let dir = PathBuf::from(setting("ENTITLEMENT_GATE_HANDOFF_DIR")?);
        let product_code = ProductCode::parse(&setting("ENTITLEMENT_GATE_PRODUCT_CODE")?)
            .map_err(|e| e.to_string())?;
        let key_file = PathBuf::from(setting("ENTITLEMENT_GATE_PUBLIC_KEY_FILE")?);
        let version = setting("ENTITLEMENT_GATE_PUBLIC_KEY_VERSION")
            .unwrap_or_else(|_| "1".to_owned())
            .parse()
            .map_err(|e| format!("ENTITLEMENT_GATE_PUBLIC_KEY_VERSION: {e}"))?;
        let pem = std::fs::read_to_string(&key_file)
            .map_err(|e| format!("{}: {e}", key_file.display()))?;
        let key = VerifyingKey::from_pem(&pem, version, KeySource::File(key_file))
            .map_err(|e| e.to_string())?;
        Ok((handoff::path_in(&dir), product_code, key))
    };
    let (path, product_code, key) = match configured() {
        Ok(configuration) => configuration,
        Err(problem) => {
            eprintln!("verify_handoff: {problem}");
            return ExitCode::from(2);
        }
    };

    // The ECS task metadata lookup is asynchronous; a synchronous app runs it on a small runtime.
    let workload = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(workload::resolve(
                    |name| std::env::var(name).ok(),
                    Duration::from_secs(2),
                ))
                .map_err(|e| e.to_string())
        });
    let workload = match workload {
        Ok(workload) => workload,
        Err(problem) => {
            eprintln!("verify_handoff: {problem}");
            return ExitCode::from(2);
        }
    };
    let requirements = Requirements {
        product_code: &product_code,
        key: &key,
        workload: &workload,
        max_age: None,
    };
    match requirements.verify_handoff_file(&path, SystemTime::now()) {
        Ok(token) => {
            println!(
                "verify_handoff: {} is entitled (token issued at {}, nonce {})",
                token.product_code, token.issued_at, token.nonce
            );
            ExitCode::SUCCESS
        }
        Err(refusal) => {
            eprintln!("verify_handoff: refused: {refusal}");
            ExitCode::from(4)
        }
    }
}
