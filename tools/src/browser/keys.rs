//! Key names as playwright-mcp's `browser_press_key` takes them (`Enter`, `ArrowLeft`, `a`,
//! `Control+a`, `Shift+Tab`) turned into what `Input.dispatchKeyEvent` needs: the DOM `key`
//! and `code`, the Windows virtual key code pages read as `keyCode`, and the text a printable
//! key inserts.

use crate::Error;

/// CDP's modifier bits.
pub const ALT: u32 = 1;
pub const CONTROL: u32 = 2;
pub const META: u32 = 4;
pub const SHIFT: u32 = 8;

/// One key of a chord.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub key: String,
    pub code: String,
    pub key_code: u32,
    pub text: Option<String>,
}

/// A chord: modifiers held while `key` is pressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chord {
    pub modifiers: u32,
    pub modifier_keys: Vec<Key>,
    pub key: Key,
}

/// Non-printable keys: DOM key (= code, but for the few listed), virtual key code.
const NAMED: &[(&str, &str, u32)] = &[
    ("Enter", "Enter", 13),
    ("Tab", "Tab", 9),
    ("Escape", "Escape", 27),
    ("Backspace", "Backspace", 8),
    ("Delete", "Delete", 46),
    ("Insert", "Insert", 45),
    ("ArrowLeft", "ArrowLeft", 37),
    ("ArrowUp", "ArrowUp", 38),
    ("ArrowRight", "ArrowRight", 39),
    ("ArrowDown", "ArrowDown", 40),
    ("Home", "Home", 36),
    ("End", "End", 35),
    ("PageUp", "PageUp", 33),
    ("PageDown", "PageDown", 34),
    ("Shift", "ShiftLeft", 16),
    ("Control", "ControlLeft", 17),
    ("Alt", "AltLeft", 18),
    ("Meta", "MetaLeft", 91),
    ("CapsLock", "CapsLock", 20),
    ("ContextMenu", "ContextMenu", 93),
];

fn modifier_bit(name: &str) -> Option<u32> {
    match name {
        "Alt" => Some(ALT),
        "Control" | "Ctrl" => Some(CONTROL),
        "Meta" | "ControlOrMeta" | "Command" => Some(META),
        "Shift" => Some(SHIFT),
        _ => None,
    }
}

/// One key by name.
pub fn key(name: &str) -> Result<Key, Error> {
    let name = match name {
        "Ctrl" => "Control",
        "Esc" => "Escape",
        "Return" => "Enter",
        "Space" => " ",
        "ControlOrMeta" | "Command" => "Meta",
        other => other,
    };
    if let Some((key, code, key_code)) = NAMED.iter().find(|(k, _, _)| *k == name) {
        let text = (*key == "Enter").then(|| "\r".to_string());
        return Ok(Key {
            key: key.to_string(),
            code: code.to_string(),
            key_code: *key_code,
            text,
        });
    }
    if let Some(n) = name.strip_prefix('F').and_then(|n| n.parse::<u32>().ok())
        && (1..=12).contains(&n)
    {
        return Ok(Key {
            key: name.into(),
            code: name.into(),
            key_code: 111 + n,
            text: None,
        });
    }
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        let upper = c.to_ascii_uppercase();
        let (code, key_code) = match c {
            'a'..='z' | 'A'..='Z' => (format!("Key{upper}"), upper as u32),
            '0'..='9' => (format!("Digit{c}"), c as u32),
            ' ' => ("Space".into(), 32),
            _ => (String::new(), 0),
        };
        return Ok(Key {
            key: c.to_string(),
            code,
            key_code,
            text: Some(c.to_string()),
        });
    }
    Err(Error::InvalidArgument(format!(
        "unknown key '{name}': use a character (a, 7, /) or a key name (Enter, Tab, Escape, \
         Backspace, Delete, ArrowLeft/Up/Right/Down, Home, End, PageUp, PageDown, F1..F12), \
         optionally with modifiers (Control+a, Shift+Tab)"
    )))
}

/// `Control+Shift+a` and the like; a lone `+` is the plus key.
pub fn chord(spec: &str) -> Result<Chord, Error> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(Error::InvalidArgument("key is empty".into()));
    }
    let (mods, last) = match spec.rsplit_once('+') {
        Some((mods, "")) => (mods.strip_suffix('+').unwrap_or(mods), "+"),
        Some((mods, last)) => (mods, last),
        None => ("", spec),
    };
    let mut modifiers = 0;
    let mut modifier_keys = Vec::new();
    for m in mods.split('+').filter(|m| !m.is_empty()) {
        let bit = modifier_bit(m).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown modifier '{m}' in '{spec}': use Control, Shift, Alt or Meta"
            ))
        })?;
        modifiers |= bit;
        modifier_keys.push(key(m)?);
    }
    let mut key = key(last)?;
    // With Control, Alt or Meta held, a printable key inserts nothing (it is a shortcut).
    if modifiers & (CONTROL | ALT | META) != 0 {
        key.text = None;
    } else if modifiers & SHIFT != 0
        && let Some(t) = &key.text
        && t.len() == 1
    {
        key.text = Some(t.to_uppercase());
    }
    Ok(Chord {
        modifiers,
        modifier_keys,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_chars_and_chords() {
        let enter = key("Enter").unwrap();
        assert_eq!((enter.key_code, enter.text.as_deref()), (13, Some("\r")));
        let a = key("a").unwrap();
        assert_eq!((a.code.as_str(), a.key_code), ("KeyA", 65));
        let c = chord("Control+a").unwrap();
        assert_eq!(c.modifiers, CONTROL);
        assert_eq!(c.key.text, None);
        let plus = chord("+").unwrap();
        assert_eq!(plus.key.key, "+");
        assert_eq!(chord("Shift+Tab").unwrap().modifiers, SHIFT);
        assert!(key("Hyper").is_err());
        assert!(chord("Super+a").is_err());
        assert_eq!(key("F5").unwrap().key_code, 116);
    }
}
