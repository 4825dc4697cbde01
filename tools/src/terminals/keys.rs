//! Named keys (`Enter`, `C-c`, `Up`, `F5`…) as the bytes an xterm sends for them, so an agent
//! can drive full-screen programs without writing escape sequences.

use crate::{Error, Result};

/// The bytes for one named key. `application_cursor`: the program asked for DECCKM (vim,
/// less), where arrows send `ESC O x` instead of `ESC [ x`.
pub fn key_bytes(name: &str, application_cursor: bool) -> Result<Vec<u8>> {
    let arrow = |c: u8| {
        if application_cursor {
            vec![0x1b, b'O', c]
        } else {
            vec![0x1b, b'[', c]
        }
    };
    let csi = |s: &str| [b"\x1b[".as_slice(), s.as_bytes()].concat();
    let bytes = match name.to_ascii_lowercase().as_str() {
        "enter" | "return" => vec![b'\r'],
        "tab" => vec![b'\t'],
        "backtab" | "s-tab" => csi("Z"),
        "backspace" | "bs" => vec![0x7f],
        "escape" | "esc" => vec![0x1b],
        "space" => vec![b' '],
        "up" => arrow(b'A'),
        "down" => arrow(b'B'),
        "right" => arrow(b'C'),
        "left" => arrow(b'D'),
        "home" => arrow(b'H'),
        "end" => arrow(b'F'),
        "insert" => csi("2~"),
        "delete" | "del" => csi("3~"),
        "pageup" | "pgup" => csi("5~"),
        "pagedown" | "pgdn" => csi("6~"),
        "f1" => b"\x1bOP".to_vec(),
        "f2" => b"\x1bOQ".to_vec(),
        "f3" => b"\x1bOR".to_vec(),
        "f4" => b"\x1bOS".to_vec(),
        "f5" => csi("15~"),
        "f6" => csi("17~"),
        "f7" => csi("18~"),
        "f8" => csi("19~"),
        "f9" => csi("20~"),
        "f10" => csi("21~"),
        "f11" => csi("23~"),
        "f12" => csi("24~"),
        other => return modified(other, name),
    };
    Ok(bytes)
}

/// `C-x` (control) and `M-x` (meta: ESC then the key) combinations.
fn modified(lower: &str, name: &str) -> Result<Vec<u8>> {
    if let Some(rest) = lower
        .strip_prefix("m-")
        .or_else(|| lower.strip_prefix("alt-"))
    {
        let tail = &name[name.len() - rest.len()..];
        let inner = if tail.chars().count() == 1 {
            tail.as_bytes().to_vec()
        } else {
            key_bytes(tail, false)?
        };
        return Ok([vec![0x1b], inner].concat());
    }
    if let Some(rest) = lower
        .strip_prefix("c-")
        .or_else(|| lower.strip_prefix("ctrl-"))
    {
        let mut chars = rest.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            let code = match c {
                'a'..='z' => Some(c as u8 - b'a' + 1),
                '@' | ' ' | '2' => Some(0),
                '[' => Some(0x1b),
                '\\' => Some(0x1c),
                ']' => Some(0x1d),
                '^' | '6' => Some(0x1e),
                '_' | '/' => Some(0x1f),
                '?' => Some(0x7f),
                _ => None,
            };
            if let Some(code) = code {
                return Ok(vec![code]);
            }
        }
    }
    Err(Error::InvalidArgument(format!(
        "unknown key '{name}': use Enter, Tab, BackTab, Backspace, Escape, Space, Up, Down, \
         Left, Right, Home, End, Insert, Delete, PageUp, PageDown, F1..F12, C-<letter> \
         (e.g. C-c, C-d) or M-<key>"
    )))
}

#[cfg(test)]
mod tests {
    use super::key_bytes;

    #[test]
    fn names_map_to_xterm_bytes() {
        assert_eq!(key_bytes("Enter", false).unwrap(), b"\r");
        assert_eq!(key_bytes("C-c", false).unwrap(), [3]);
        assert_eq!(key_bytes("C-d", false).unwrap(), [4]);
        assert_eq!(key_bytes("ctrl-[", false).unwrap(), [0x1b]);
        assert_eq!(key_bytes("Up", false).unwrap(), b"\x1b[A");
        assert_eq!(key_bytes("Up", true).unwrap(), b"\x1bOA");
        assert_eq!(key_bytes("F5", false).unwrap(), b"\x1b[15~");
        assert_eq!(key_bytes("M-x", false).unwrap(), b"\x1bx");
        assert_eq!(key_bytes("M-Left", false).unwrap(), b"\x1b\x1b[D");
        let err = key_bytes("Hyper", false).unwrap_err().to_string();
        assert!(err.contains("unknown key 'Hyper'"), "{err}");
    }
}
