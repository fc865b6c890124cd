//! The domain: what the gate knows and decides without AWS and without a command line. Its only
//! I/O is files (keys, handoffs), always bounded.
//!
//! - [`anchor_rules`]: the product code, key and lock rules, shared with `build.rs`
//! - [`product_code`], [`key`], [`trust`]: what to check, with which key, and what a locked
//!   build trusts
//! - [`workload`], [`nonce`]: the workload a run belongs to, and the nonce bound to it
//! - [`token`]: PS256 token verification
//! - [`handoff`]: `entitlement.json` for the main container
//! - [`license`]: License Manager checkouts, what a grant must match, and `license.json` for the
//!   main container
//! - [`lease`]: how long a checkout is good for by AWS's clock, and when to extend it
//! - [`quantity`]: exact usage quantities (six decimal places, integer micro-units)
//! - [`mesh`]: the service mesh a pod may be in, which init containers must get past
//! - [`files`], [`text`], [`time`]: bounded file access, escaping of network text, time formats

pub mod anchor_rules;
pub mod files;
pub mod handoff;
pub mod key;
pub mod lease;
pub mod license;
pub mod mesh;
pub mod nonce;
pub mod product_code;
pub mod quantity;
pub mod text;
pub mod time;
pub mod token;
pub mod trust;
pub mod workload;
