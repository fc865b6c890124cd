//! Embeds the seller's trust anchors when the build environment names them.
//!
//! `ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES` (comma-separated) and
//! `ENTITLEMENT_GATE_TRUSTED_KEYS_DIR` (a directory of `<version>.pem` files) turn an open build,
//! which takes both at run time, into a locked one that a buyer cannot reconfigure.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

#[path = "src/domain/anchor_rules.rs"]
mod anchor_rules;

const CODES_VAR: &str = "ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES";
const KEYS_VAR: &str = "ENTITLEMENT_GATE_TRUSTED_KEYS_DIR";

fn main() {
    println!("cargo:rerun-if-env-changed={CODES_VAR}");
    println!("cargo:rerun-if-changed=src/domain/anchor_rules.rs");
    println!("cargo:rerun-if-env-changed={KEYS_VAR}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // A lower bound on the time for `doctor`'s clock check; SOURCE_DATE_EPOCH keeps builds
    // reproducible.
    let build_epoch = env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|epoch| epoch.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=ENTITLEMENT_GATE_BUILD_EPOCH={build_epoch}");

    let codes = trusted_product_codes();
    let keys = match env::var_os(KEYS_VAR).filter(|dir| !dir.is_empty()) {
        Some(dir) => trusted_keys(Path::new(&dir)),
        None => Vec::new(),
    };
    if let Some(problem) = anchor_rules::lock_problem(codes.is_some(), keys.len()) {
        fail(&format!("{CODES_VAR} is set: {problem}"));
    }

    let mut generated = String::new();
    match &codes {
        Some(codes) => writeln!(
            generated,
            "pub(crate) const PRODUCT_CODES: Option<&[&str]> = Some(&{codes:?});"
        ),
        None => writeln!(
            generated,
            "pub(crate) const PRODUCT_CODES: Option<&[&str]> = None;"
        ),
    }
    .unwrap();
    generated.push_str("pub(crate) const KEYS: &[(u32, &str)] = &[\n");
    for (version, path) in &keys {
        let path = path.canonicalize().expect("trusted key path");
        writeln!(
            generated,
            "    ({version}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    generated.push_str("];\n");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("trust_anchors.rs");
    fs::write(out, generated).expect("write trust_anchors.rs");
}

fn trusted_product_codes() -> Option<Vec<String>> {
    let raw = env::var(CODES_VAR)
        .ok()
        .filter(|raw| !raw.trim().is_empty())?;
    let codes: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|code| !code.is_empty())
        .map(str::to_owned)
        .collect();
    for code in &codes {
        // Checked here too, so a typo fails the build rather than a buyer's pod.
        if let Some(problem) = anchor_rules::product_code_problem(code) {
            fail(&format!(
                "{CODES_VAR}: {code:?} is not a valid product code: {problem}"
            ));
        }
    }
    Some(codes)
}

/// The `<version>.pem` files in `dir`, each checked by the rule run time applies, so a bad key
/// fails the seller's build instead of every buyer's pod.
fn trusted_keys(dir: &Path) -> Vec<(u32, PathBuf)> {
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| fail(&format!("{KEYS_VAR}={}: {e}", dir.display())));
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| fail(&format!("{KEYS_VAR}={}: {e}", dir.display())))
            .path();
        if path.extension().is_none_or(|ext| ext != "pem") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let version: u32 = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .and_then(|stem| stem.parse().ok())
            .filter(|version| *version >= 1)
            .unwrap_or_else(|| {
                fail(&format!(
                    "{}: trusted keys must be named <version>.pem",
                    path.display()
                ))
            });
        let pem =
            fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
        if let Err(problem) = anchor_rules::rsa_public_key(&pem) {
            fail(&format!(
                "{}: not a usable trusted key: {problem}",
                path.display()
            ));
        }
        keys.push((version, path));
    }
    if keys.is_empty() {
        fail(&format!(
            "{KEYS_VAR}={}: no <version>.pem files",
            dir.display()
        ));
    }
    keys.sort();
    keys
}

/// Fails the build with `message` as Cargo's error, rather than a panic's backtrace (Cargo
/// fails the build after a `cargo::error` line; the exit status stays 0 so that it does not
/// also dump the script's whole output).
fn fail(message: &str) -> ! {
    println!("cargo::error={message}");
    std::process::exit(0)
}
