//! The few facts mptcpify needs from the running kernel's BTF: the hook's type id and a handful
//! of struct member offsets.
//!
//! General parsers (aya-obj, btf-rs) decode all of its ~150k types into owned values first:
//! measured at ~500 ms under emulation, the largest part of a cold load. This reads the type
//! section once to learn where each type starts and decodes only the types asked about. The
//! format is the kernel's UAPI (`include/uapi/linux/btf.h`); the unit tests check every answer
//! against btf-rs on the build machine's kernel.
use anyhow::{Result, anyhow, bail};

pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_HEADER_LEN: usize = 12;

// BTF kinds (`BTF_KIND_*`).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;
const MAX_KIND: u32 = 20;

pub struct KernelBtf {
    data: Vec<u8>,
    /// Byte offset in `data` of each type; index = type id - 1 (id 0 is `void`).
    types: Vec<usize>,
    strings: std::ops::Range<usize>,
    /// Ids of the named functions and structs by (kind, hash of the name), built at the first
    /// look-up: one pass
    /// over the ~150k types instead of one per look-up (seconds under emulation).
    by_name: std::cell::OnceCell<std::collections::HashMap<(u32, u64), Vec<u32>>>,
}

fn name_hash(name: &[u8]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// One type's fixed header.
struct TypeHeader {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
}

impl KernelBtf {
    /// Reads and indexes the running kernel's BTF.
    pub fn read() -> Result<Self> {
        let data = std::fs::read(KERNEL_BTF).map_err(|e| anyhow!("{KERNEL_BTF}: {e}"))?;
        Self::parse(data).map_err(|e| anyhow!("{KERNEL_BTF}: {e}"))
    }

    pub fn parse(data: Vec<u8>) -> Result<Self> {
        if data.len() < HEADER_LEN || u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            bail!("not BTF of this machine's byte order (bad magic)");
        }
        let u32_at = |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (u32_at(4), u32_at(8), u32_at(12), u32_at(16), u32_at(20));
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            let end = start.checked_add(len)?;
            (end <= data.len()).then_some(start..end)
        };
        let (Some(type_section), Some(strings)) = (section(type_off, type_len), section(str_off, str_len)) else {
            bail!("section bounds beyond the end of the data");
        };
        let mut btf = KernelBtf { data, types: Vec::with_capacity(200_000), strings, by_name: Default::default() };
        let mut at = type_section.start;
        while at < type_section.end {
            let header = btf.header_at(at).filter(|_| at + TYPE_HEADER_LEN <= type_section.end);
            let Some(header) = header else { bail!("type {} truncated", btf.types.len() + 1) };
            let trailer = match header.kind {
                INT | VAR | DECL_TAG => 4,
                ARRAY => 12,
                STRUCT | UNION | DATASEC | ENUM64 => 12 * header.vlen,
                ENUM | FUNC_PROTO => 8 * header.vlen,
                k if k < MAX_KIND && k != 0 => 0,
                k => bail!("type {} has unknown kind {k}", btf.types.len() + 1),
            };
            btf.types.push(at);
            at += TYPE_HEADER_LEN + trailer;
        }
        if at != type_section.end {
            bail!("last type runs past the type section");
        }
        Ok(btf)
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(self.data.get(at..at + 4)?.try_into().ok()?))
    }

    fn header_at(&self, at: usize) -> Option<TypeHeader> {
        let info = self.u32_at(at + 4)?;
        Some(TypeHeader {
            name_off: self.u32_at(at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32_at(at + 8)?,
        })
    }

    fn header(&self, id: u32) -> Option<(usize, TypeHeader)> {
        let at = *self.types.get((id as usize).checked_sub(1)?)?;
        Some((at, self.header_at(at)?))
    }

    /// The NUL-terminated string at `off` in the string section.
    fn name(&self, off: u32) -> &[u8] {
        let strings = &self.data[self.strings.clone()];
        let rest = strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// Ids of the types of `kind` named `name`, in id order.
    fn ids(&self, kind: u32, name: &str) -> impl Iterator<Item = u32> {
        let index = self.by_name.get_or_init(|| self.index_names());
        let candidates = index.get(&(kind, name_hash(name.as_bytes()))).map_or(&[][..], Vec::as_slice);
        candidates.iter().copied().filter(move |&id| {
            self.header(id).is_some_and(|(_, h)| h.kind == kind && self.name(h.name_off) == name.as_bytes())
        })
    }

    fn index_names(&self) -> std::collections::HashMap<(u32, u64), Vec<u32>> {
        let mut index: std::collections::HashMap<(u32, u64), Vec<u32>> = std::collections::HashMap::new();
        for id in 1..=self.types.len() as u32 {
            // Only the kinds looked up by name.
            let Some((_, h)) = self.header(id).filter(|(_, h)| matches!(h.kind, FUNC | STRUCT)) else { continue };
            let name = self.name(h.name_off);
            if !name.is_empty() {
                index.entry((h.kind, name_hash(name))).or_default().push(id);
            }
        }
        index
    }

    /// The type id of the kernel function `name` (what a tracing program attaches to).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.ids(FUNC, name).next()
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous struct and union
    /// members. Forward declarations (no members) are skipped.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        Ok(self.member_bit_offset(name, member)? / 8)
    }

    /// Bit offset of `member` in `struct name`: where a bitfield starts.
    pub fn member_bit_offset(&self, name: &str, member: &str) -> Result<u32> {
        Ok(self.member(name, member)?.0)
    }

    /// The struct that `member` of `struct name` points to (`struct x *member`), by name: how a
    /// caller follows a pointer whose type changed between kernels.
    pub fn member_pointee(&self, name: &str, member: &str) -> Result<String> {
        let ty = self.skip_modifiers(self.member(name, member)?.1);
        match self.header(ty) {
            Some((_, h)) if h.kind == PTR => self.struct_name(h.size_or_type),
            _ => None,
        }
        .ok_or_else(|| anyhow!("{name}.{member} is not a pointer to a named struct"))
    }

    /// The named struct that `member` of `struct name` is an array of (`struct x member[]`).
    pub fn member_array_of(&self, name: &str, member: &str) -> Result<String> {
        let ty = self.skip_modifiers(self.member(name, member)?.1);
        match self.header(ty) {
            // An array's trailer: element type, index type, number of elements.
            Some((at, h)) if h.kind == ARRAY => self.u32_at(at + TYPE_HEADER_LEN).and_then(|e| self.struct_name(e)),
            _ => None,
        }
        .ok_or_else(|| anyhow!("{name}.{member} is not an array of a named struct"))
    }

    /// Size in bytes of `member` of `struct name`, when it is an integer, enum, struct or union.
    pub fn member_size(&self, name: &str, member: &str) -> Result<u32> {
        let ty = self.skip_modifiers(self.member(name, member)?.1);
        match self.header(ty) {
            Some((_, h)) if matches!(h.kind, INT | ENUM | ENUM64 | STRUCT | UNION) => Some(h.size_or_type),
            _ => None,
        }
        .ok_or_else(|| anyhow!("{name}.{member} has no size of its own (a pointer or an array)"))
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, name: &str) -> Result<u32> {
        let id = self.struct_id(name)?;
        Ok(self.header(id).map_or(0, |(_, h)| h.size_or_type))
    }

    fn struct_name(&self, id: u32) -> Option<String> {
        let (_, h) = self.header(self.skip_modifiers(id))?;
        let name = self.name(h.name_off);
        (h.kind == STRUCT && !name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
    }

    /// The first definition (with members) of `struct name`; forward declarations are skipped.
    fn struct_id(&self, name: &str) -> Result<u32> {
        self.ids(STRUCT, name)
            .find(|&id| self.header(id).is_some_and(|(_, h)| h.vlen > 0))
            .ok_or_else(|| anyhow!("struct {name} is not in this kernel's BTF"))
    }

    /// Bit offset and type id of `member` in `struct name`.
    fn member(&self, name: &str, member: &str) -> Result<(u32, u32)> {
        let id = self.struct_id(name)?;
        self.find_member(id, member, 0, &mut std::collections::HashSet::new())
            .ok_or_else(|| anyhow!("struct {name} has no member {member} in this kernel"))
    }

    /// Bit offset and type of `member` in the struct or union `id`. Each type is searched once
    /// (`seen`), so malformed BTF whose anonymous members nest into themselves, or fan out level
    /// after level, costs one visit per type; `depth` bounds the stack.
    fn find_member(
        &self,
        id: u32,
        member: &str,
        depth: u32,
        seen: &mut std::collections::HashSet<u32>,
    ) -> Option<(u32, u32)> {
        let (at, h) = self.header(id)?;
        if !matches!(h.kind, STRUCT | UNION) || depth > 32 || !seen.insert(id) {
            return None;
        }
        for i in 0..h.vlen {
            let m = at + TYPE_HEADER_LEN + 12 * i;
            let (name_off, ty, offset) = (self.u32_at(m)?, self.u32_at(m + 4)?, self.u32_at(m + 8)?);
            // With kind_flag the top 8 bits hold a bitfield's size.
            let bits = if h.kind_flag { offset & 0xff_ffff } else { offset };
            let name = self.name(name_off);
            if name == member.as_bytes() {
                return Some((bits, ty));
            }
            if name.is_empty()
                && let Some((inner, inner_ty)) = self.find_member(self.skip_modifiers(ty), member, depth + 1, seen)
            {
                // An offset past 4 Gbit is malformed: not found, rather than wrapped.
                return Some((bits.checked_add(inner)?, inner_ty));
            }
        }
        None
    }

    /// Follows typedef/const/volatile/restrict/type-tag links to the type they qualify.
    fn skip_modifiers(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.header(id) {
                Some((_, h)) if matches!(h.kind, TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG) => {
                    id = h.size_or_type
                }
                _ => break,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build machine's BTF, read by us and by the reference. Its absence fails the tests:
    /// they check nothing without it (every Linux with BTF has the file; ours and CI's do).
    fn kernel_btf_bytes() -> Vec<u8> {
        std::fs::read(KERNEL_BTF)
            .unwrap_or_else(|e| panic!("{KERNEL_BTF}: {e}: the BTF reader is tested against this machine's kernel"))
    }

    fn kernels() -> (KernelBtf, btf_rs::Btf) {
        let bytes = kernel_btf_bytes();
        (KernelBtf::parse(bytes.clone()).unwrap(), btf_rs::Btf::from_bytes(&bytes).unwrap())
    }

    #[test]
    fn every_type_is_indexed() {
        let (btf, reference) = kernels();
        assert!(btf.types.len() > 10_000, "{}", btf.types.len());
        let last = btf.types.len() as u32;
        assert!(reference.resolve_type_by_id(last).is_ok());
        assert!(reference.resolve_type_by_id(last + 1).is_err(), "btf-rs knows more types than we indexed");
    }

    #[test]
    fn function_ids_agree_with_btf_rs() {
        let (btf, reference) = kernels();
        for name in ["update_socket_protocol", "__sys_socket", "tcp_connect", "do_sys_openat2"] {
            let expected = reference
                .resolve_ids_by_name(name)
                .unwrap_or_default()
                .into_iter()
                .find(|&id| matches!(reference.resolve_type_by_id(id), Ok(btf_rs::Type::Func(_))));
            assert_eq!(btf.func_id(name), expected, "{name}");
        }
        assert_eq!(btf.func_id("no_such_function_xyz"), None);
    }

    /// Every member of a few large structs, anonymous unions included, at btf-rs's offset.
    #[test]
    fn member_offsets_agree_with_btf_rs() {
        let (btf, reference) = kernels();
        let mut checked = 0;
        // The last two hold the bitfields the outcome programs read.
        for name in ["task_struct", "nsproxy", "net", "sock", "sk_buff", "tcp_sock", "mptcp_subflow_context"] {
            let ty = reference
                .resolve_types_by_name(name)
                .unwrap()
                .into_iter()
                .find(|t| matches!(t, btf_rs::Type::Struct(s) if !s.members.is_empty()))
                .unwrap();
            let btf_rs::Type::Struct(s) = ty else { unreachable!() };
            for m in &s.members {
                let member = reference.resolve_name(m).unwrap_or_default();
                if member.is_empty() {
                    continue;
                }
                assert_eq!(btf.member_bit_offset(name, &member).unwrap(), m.bit_offset(), "{name}.{member}");
                assert_eq!(btf.member_offset(name, &member).unwrap(), m.bit_offset() / 8, "{name}.{member}");
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked}");
        // Through anonymous members: sk_buff starts with union { struct { next; prev;
        // union { dev; dev_scratch; }; }; rbnode; ... }.
        assert_eq!(btf.member_offset("sk_buff", "prev").unwrap(), 8);
        assert_eq!(btf.member_offset("sk_buff", "dev").unwrap(), 16);
        // A named member's fields are not the outer struct's.
        assert!(btf.member_offset("sock", "skc_family").is_err());
        let e = btf.member_offset("nsproxy", "no_such_member").unwrap_err().to_string();
        assert!(e.contains("has no member no_such_member"), "{e}");
        let e = btf.member_offset("no_such_struct_xyz", "a").unwrap_err().to_string();
        assert!(e.contains("not in this kernel's BTF"), "{e}");
    }

    fn refusal(data: Vec<u8>) -> String {
        match KernelBtf::parse(data) {
            Ok(btf) => panic!("accepted, {} types", btf.types.len()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn damaged_data_is_refused_not_misread() {
        assert!(refusal(vec![0; 10]).contains("bad magic"));
        assert!(refusal(vec![0; 64]).contains("bad magic"));
        let bytes = kernel_btf_bytes();
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() / 2);
        assert!(refusal(cut).contains("beyond the end"));
        // A type section that ends inside a type.
        let mut short = bytes;
        let type_len = u32::from_ne_bytes(short[12..16].try_into().unwrap());
        short[12..16].copy_from_slice(&(type_len - 2).to_ne_bytes());
        let e = refusal(short);
        assert!(e.contains("runs past") || e.contains("truncated"), "{e}");
    }

    /// A struct member: name, type id, bit offset.
    type Member<'a> = (&'a str, u32, u32);
    /// A struct: name and members.
    type Struct<'a> = (&'a str, &'a [Member<'a>]);

    /// BTF of `structs`, ids from 1.
    fn synthetic(structs: &[Struct<'_>]) -> Vec<u8> {
        synthetic_with(structs, &[])
    }

    /// BTF of `structs`, ids from 1, then anonymous types given as raw words (header and trailer).
    fn synthetic_with(structs: &[Struct<'_>], raw: &[&[u32]]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut string = |s: &str| {
            if s.is_empty() {
                return 0u32;
            }
            let at = strings.len() as u32;
            strings.extend(s.as_bytes());
            strings.push(0);
            at
        };
        let mut types = Vec::new();
        for (name, members) in structs {
            let words = [string(name), STRUCT << 24 | members.len() as u32, 8];
            types.extend(words.iter().flat_map(|w| w.to_ne_bytes()));
            for (member, ty, offset) in *members {
                types.extend([string(member), *ty, *offset].iter().flat_map(|w| w.to_ne_bytes()));
            }
        }
        for words in raw {
            types.extend(words.iter().flat_map(|w| w.to_ne_bytes()));
        }
        let mut data = MAGIC.to_ne_bytes().to_vec();
        data.extend([1, 0]);
        let (type_len, str_len) = (types.len() as u32, strings.len() as u32);
        for word in [HEADER_LEN as u32, 0, type_len, type_len, str_len] {
            data.extend(word.to_ne_bytes());
        }
        data.extend(types);
        data.extend(strings);
        data
    }

    /// Malformed BTF whose anonymous members nest into themselves or fan out: each lookup still
    /// ends at once (found while writing the fuzz target: a search of 2^32 paths before).
    #[test]
    fn cyclic_and_fanned_out_anonymous_members_are_searched_once() {
        let cyclic = synthetic(&[("s", &[("", 1, 0), ("", 1, 0)])]);
        let btf = KernelBtf::parse(cyclic).unwrap();
        assert!(btf.member_offset("s", "x").is_err());
        // 40 levels, each with two anonymous members of the next: a DAG of 2^40 paths.
        let levels: Vec<(String, [Member<'_>; 3])> =
            (1..=40u32).map(|i| (format!("t{i}"), [("leaf", 1, 0), ("", i + 1, 8), ("", i + 1, 16)])).collect();
        let structs: Vec<Struct<'_>> = levels.iter().map(|(n, m)| (n.as_str(), &m[..])).collect();
        let btf = KernelBtf::parse(synthetic(&structs)).unwrap();
        assert!(btf.member_offset("t1", "absent").is_err());
        assert_eq!(btf.member_offset("t1", "leaf").unwrap(), 0);
        // Offsets that overflow are refused, not wrapped.
        let huge = synthetic(&[("o", &[("", 2, u32::MAX)]), ("i", &[("m", 1, u32::MAX)])]);
        assert!(KernelBtf::parse(huge).unwrap().member_offset("o", "m").is_err());
    }

    /// Pointers and arrays are followed to the struct they name, through typedefs; anything else
    /// is refused, as is a pointer to an anonymous struct.
    #[test]
    fn pointers_and_arrays_name_their_struct() {
        // 1 cred { ptr domain (4); masks[] (5); anon (6) }, 2 domain (size 8), 3 access_masks,
        // 4 PTR -> 2, 5 ARRAY of 7, 6 PTR -> anonymous struct 8, 7 TYPEDEF -> 3, 8 anonymous struct.
        let btf = KernelBtf::parse(synthetic_with(
            &[
                ("cred", &[("domain", 4, 0), ("masks", 5, 64), ("anon", 6, 128), ("plain", 3, 192)]),
                ("domain", &[("x", 3, 0)]),
                ("access_masks", &[("net", 3, 0)]),
            ],
            &[
                &[0, PTR << 24, 2],
                &[0, ARRAY << 24, 0, 7, 3, 0],
                &[0, PTR << 24, 8],
                &[0, TYPEDEF << 24, 3],
                &[0, STRUCT << 24 | 1, 4, 0, 3, 0],
            ],
        ))
        .unwrap();
        assert_eq!(btf.member_pointee("cred", "domain").unwrap(), "domain");
        assert_eq!(btf.member_array_of("cred", "masks").unwrap(), "access_masks");
        assert!(btf.member_pointee("cred", "anon").is_err());
        assert!(btf.member_pointee("cred", "masks").is_err());
        assert!(btf.member_array_of("cred", "domain").is_err());
        assert!(btf.member_pointee("cred", "plain").is_err());
        assert_eq!(btf.struct_size("domain").unwrap(), 8);
        assert_eq!(btf.member_size("cred", "plain").unwrap(), 8, "a struct member");
        assert!(btf.member_size("cred", "domain").is_err(), "a pointer");
        assert_eq!(btf.member_offset("cred", "masks").unwrap(), 8);
    }

    #[test]
    fn pointees_agree_with_the_running_kernel() {
        let (btf, _) = kernels();
        assert_eq!(btf.member_pointee("task_struct", "mm").unwrap(), "mm_struct");
        assert_eq!(btf.member_pointee("task_struct", "cred").unwrap(), "cred");
        assert!(btf.struct_size("task_struct").unwrap() > 1000);
        assert_eq!(btf.member_size("task_struct", "pid").unwrap(), 4);
    }
}
