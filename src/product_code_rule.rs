//! The RegisterUsage model's rule for a product code: 1-255 of `[-a-zA-Z0-9/=:_.@]`.
//! Shared by the library and `build.rs` (which checks embedded trust anchors with it).

/// Why `code` breaks the rule, or `None` when it is valid.
pub fn product_code_problem(code: &str) -> Option<&'static str> {
    if code.is_empty() {
        Some("it is empty")
    } else if code.len() > 255 {
        Some("it is longer than 255 characters")
    } else if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-/=:_.@".contains(c))
    {
        Some("only letters, digits and -/=:_.@ are allowed")
    } else {
        None
    }
}
