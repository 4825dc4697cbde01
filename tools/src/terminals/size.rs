//! A terminal's size and its bounds.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Size {
    /// Width in columns.
    pub cols: u16,
    /// Height in rows.
    pub rows: u16,
}

impl Size {
    /// A size checked to be usable (1..=1000 each way).
    pub fn checked(cols: u16, rows: u16) -> Result<Self> {
        if !(1..=1000).contains(&cols) || !(1..=1000).contains(&rows) {
            return Err(Error::InvalidArgument(format!(
                "terminal size {cols}x{rows} is out of range: cols and rows must be 1..=1000"
            )));
        }
        Ok(Self { cols, rows })
    }
}
