//! `/proc/kallsyms` as the fallback address source (the kernel writes it; a container or a
//! hardened kernel shapes what it shows): well-formed tables are answered as a line-by-line
//! reading answers them, and any text at all is searched without a panic.
#![no_main]
use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use mptcpify::bpf::kallsyms::kallsyms_address;

#[derive(Debug, Arbitrary)]
struct Entry {
    address: u64,
    kind: u8,
    name: u8,
    module: Option<u8>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    /// A table of the kernel's shape, from a few symbol names so that they repeat.
    Table {
        entries: Vec<Entry>,
        symbol: u8,
    },
    Raw {
        text: String,
        symbol: String,
    },
}

const NAMES: [&str; 6] = ["mptcp_pernet_id", "mptcp_pernet_id_x", "x_mptcp_pernet_id", "_text", "a", "init_net"];

/// The first line whose name is `symbol`, read field by field.
fn reference(text: &str, symbol: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| {
            let (fields, _module) = line.split_once('\t').unwrap_or((line, ""));
            let mut f = fields.split(' ');
            let (addr, _kind, name) = (f.next()?, f.next()?, f.next()?);
            (name == symbol && f.next().is_none()).then(|| u64::from_str_radix(addr, 16).ok())
        })?
        .filter(|&a| a != 0)
}

fuzz_target!(|input: Input| match input {
    Input::Table { entries, symbol } => {
        let mut text = String::new();
        for e in &entries {
            let kind = ["T", "t", "D", "d", "b", "r"][usize::from(e.kind % 6)];
            text.push_str(&format!("{:016x} {kind} {}", e.address, NAMES[usize::from(e.name) % NAMES.len()]));
            if let Some(m) = e.module {
                text.push_str(&format!("\t[mod{m}]"));
            }
            text.push('\n');
        }
        let symbol = NAMES[usize::from(symbol) % NAMES.len()];
        assert_eq!(kallsyms_address(&text, symbol), reference(&text, symbol), "{symbol} in\n{text}");
    }
    Input::Raw { text, symbol } => {
        if let Some(address) = kallsyms_address(&text, &symbol) {
            assert_ne!(address, 0);
        }
    }
});
