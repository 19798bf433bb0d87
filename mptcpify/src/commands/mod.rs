//! One module per CLI command, each thin over the layers below: [`rules`] (enable, exclude,
//! disable), [`status`], [`sync`], [`lifecycle`] (reset, probe, logs), [`run`], [`monitor`],
//! [`connections`], [`doctor`], [`paths`], [`guard`]. Every command validates all its input before it changes anything.
pub mod connections;
pub mod doctor;
pub mod guard;
pub mod lifecycle;
pub mod monitor;
pub mod paths;
pub mod rules;
pub mod run;
pub mod status;
pub mod sync;

/// Text from the kernel or the system (command names, cgroup paths, user names) as a terminal
/// may show it: control characters escaped, so a name cannot rewrite the screen or fake lines.
pub fn shown(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped_for_terminals() {
        assert_eq!(super::shown("worker-3"), "worker-3");
        assert_eq!(super::shown("/a b/ü"), "/a b/ü");
        assert_eq!(super::shown("x\x1b[2J\nfake: line\r"), "x\\u{1b}[2J\\nfake: line\\r");
    }
}
