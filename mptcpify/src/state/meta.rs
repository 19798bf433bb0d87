//! The pinned state's own facts (the `META` map): which layout pinned it, so that a version
//! meeting another one's state refuses it instead of misreading it, and the edit journal that
//! makes a killed edit repaired by the next one.
use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, Map, MapData, MapError};
use mptcpify_common::{LAYOUT_UNNUMBERED, LAYOUT_VERSION, META_MAP, MetaSlot};

use super::maps::open_map;

/// Pinned state this version must not edit or trust.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the pinned state has layout {found}; this mptcpify reads layout {LAYOUT_VERSION}: use the mptcpify that \
         pinned it, or `mptcpify reset` (new sockets are TCP until rules are added again)"
    )]
    Other { found: u32 },
    #[error(
        "the pinned state's map {map} does not have this version's shape (layout {LAYOUT_VERSION}): it was pinned \
         by an older mptcpify; `mptcpify reset`, then add the rules again ({reason})"
    )]
    Unreadable { map: &'static str, reason: String },
}

/// The `META` map of the pinned state.
pub struct Meta(Array<MapData, u32>);

impl Meta {
    /// `None` for state pinned before layouts were numbered.
    pub fn open() -> Result<Option<Self>> {
        let path = std::path::Path::new(mptcpify_common::PIN_DIR).join(META_MAP);
        if !path.exists() {
            return Ok(None);
        }
        let map = Array::try_from(Map::Array(open_map(META_MAP)?))
            .map_err(|e| LayoutError::Unreadable { map: META_MAP, reason: e.to_string() })?;
        Ok(Some(Self(map)))
    }

    fn get(&self, slot: MetaSlot) -> Result<u32> {
        match self.0.get(&(slot as u32), 0) {
            Ok(v) => Ok(v),
            Err(MapError::OutOfBounds { .. }) => Ok(0),
            Err(e) => Err(anyhow!(e).context("reading the pinned state's META map")),
        }
    }

    fn set(&mut self, slot: MetaSlot, value: u32) -> Result<()> {
        self.0.set(slot as u32, value, 0).context("writing the pinned state's META map")
    }

    pub fn layout(&self) -> Result<u32> {
        self.get(MetaSlot::Layout)
    }

    /// The PID of an edit under way (or killed midway), if any.
    pub fn edit_pid(&self) -> Result<Option<u32>> {
        Ok(Some(self.get(MetaSlot::EditPid)?).filter(|&p| p != 0))
    }

    pub fn edits(&self) -> Result<u32> {
        self.get(MetaSlot::Edits)
    }

    pub fn begin_edit(&mut self) -> Result<()> {
        self.set(MetaSlot::EditPid, std::process::id())
    }

    /// The edit is complete: clears the journal and counts the edit.
    pub fn end_edit(&mut self) -> Result<()> {
        let edits = self.edits()?.wrapping_add(1);
        self.set(MetaSlot::Edits, edits)?;
        self.set(MetaSlot::EditPid, 0)
    }
}

/// Whether this version may read state of layout `found` (`None`: unnumbered).
pub fn check(found: Option<u32>) -> Result<(), LayoutError> {
    match found.unwrap_or(LAYOUT_UNNUMBERED) {
        LAYOUT_VERSION | LAYOUT_UNNUMBERED => Ok(()),
        found => Err(LayoutError::Other { found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_layout_and_the_unnumbered_one_are_read() {
        assert!(check(Some(LAYOUT_VERSION)).is_ok());
        assert!(check(None).is_ok(), "unnumbered state is adopted once its maps open with this shape");
        let e = check(Some(LAYOUT_VERSION + 1)).unwrap_err().to_string();
        assert!(e.contains(&format!("layout {}", LAYOUT_VERSION + 1)) && e.contains("mptcpify reset"), "{e}");
        assert!(check(Some(0)).is_err());
    }
}
