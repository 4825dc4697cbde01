//! A memory fork in a uid range of its own: CRIU's images name the sandbox's host uids in two
//! places only (everything else it stores as seen inside the sandbox's user namespace): the
//! user namespace's maps (`userns-*.img`) and the options of the mounts made inside it
//! (`mountpoints-*.img`, e.g. devpts's `gid=`). A fork gets a view of the snapshot's images
//! (hard links beside them: CRIU opens some images from inside the restored user namespace,
//! which cannot follow a symlink through the root-only state directory) with those two
//! rewritten to its own range; the tmpfs copies are re-owned by the helper
//! (`Step::ShiftOwners`).
//!
//! The protobuf is walked by hand on purpose: the rewrite must keep every other field byte
//! for byte, and prost (the well-kept protobuf crate) drops the fields its schema does not
//! name; CRIU's schemas are not ours to vendor for two fields.

use std::path::Path;

use super::spawn::IdShift;
use crate::error::{Error, IoContext, Result};

/// Rewrites one image message for a shift.
type Rewrite = fn(&[u8], &IdShift) -> Result<Vec<u8>>;

/// Fills `out` (on the same filesystem) with the images of `images`: hard links, but the user
/// namespace and mount images rewritten for `shift` (with the same permissions).
pub fn shifted_images(images: &Path, out: &Path, shift: &IdShift) -> Result<()> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).ctx(|| format!("creating {}", out.display()))?;
    let entries = std::fs::read_dir(images).ctx(|| format!("reading {}", images.display()))?;
    for entry in entries {
        let entry = entry.ctx(|| format!("reading {}", images.display()))?;
        let name = entry.file_name();
        let text = name.to_string_lossy();
        let from = entry.path();
        let to = out.join(&name);
        let rewrite: Option<Rewrite> = if text.starts_with("userns-") {
            Some(shift_userns)
        } else if text.starts_with("mountpoints-") {
            Some(shift_mount_options)
        } else {
            None
        };
        match rewrite {
            Some(f) => {
                let data = std::fs::read(&from).ctx(|| format!("reading {}", from.display()))?;
                let new = rewrite_entries(&data, |m| f(m, shift))
                    .map_err(|e| Error::Internal(format!("{}: {e}", from.display())))?;
                std::fs::write(&to, new).ctx(|| format!("writing {}", to.display()))?;
                let perms = std::fs::metadata(&from)
                    .ctx(|| format!("reading {}", from.display()))?
                    .permissions();
                std::fs::set_permissions(&to, perms)
                    .ctx(|| format!("setting the mode of {}", to.display()))?;
            }
            None => std::fs::hard_link(&from, &to).ctx(|| format!("linking {}", to.display()))?,
        }
    }
    Ok(())
}

/// A CRIU image: two magic words, then entries of a little-endian u32 length and a message.
fn rewrite_entries(
    data: &[u8],
    f: impl Fn(&[u8]) -> Result<Vec<u8>>,
) -> std::result::Result<Vec<u8>, String> {
    let head = data.get(..8).ok_or("shorter than its magic")?;
    let mut out = head.to_vec();
    let mut rest = &data[8..];
    while !rest.is_empty() {
        let len = rest.get(..4).ok_or("a cut entry length")?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let msg = rest.get(4..4 + len).ok_or("a cut entry")?;
        let new = f(msg).map_err(|e| e.to_string())?;
        out.extend_from_slice(&(new.len() as u32).to_le_bytes());
        out.extend_from_slice(&new);
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// `userns_entry`: `uid_map` (1) and `gid_map` (2) are `uid_gid_extent`s whose
/// `lower_first` (2) is a host id.
fn shift_userns(msg: &[u8], shift: &IdShift) -> Result<Vec<u8>> {
    map_fields(msg, |num, field| match (num, field) {
        (1 | 2, Field::Bytes(extent)) => {
            Ok(Field::Owned(map_fields(extent, |n, f| match (n, f) {
                (2, Field::Varint(v)) => Ok(Field::Varint(u64::from(shift.map(v as u32)))),
                (_, f) => Ok(f),
            })?))
        }
        (_, f) => Ok(f),
    })
}

/// `mnt_entry`: `options` (9) is the mount's option string; its `uid=` and `gid=` values are
/// host ids.
fn shift_mount_options(msg: &[u8], shift: &IdShift) -> Result<Vec<u8>> {
    map_fields(msg, |num, field| match (num, field) {
        (9, Field::Bytes(options)) => {
            let text = String::from_utf8_lossy(options);
            let shifted: Vec<String> = text
                .split(',')
                .map(|opt| match opt.split_once('=') {
                    Some((k @ ("uid" | "gid"), v)) => match v.parse::<u32>() {
                        Ok(id) => format!("{k}={}", shift.map(id)),
                        Err(_) => opt.to_string(),
                    },
                    _ => opt.to_string(),
                })
                .collect();
            Ok(Field::Owned(shifted.join(",").into_bytes()))
        }
        (_, f) => Ok(f),
    })
}

/// One field of a protobuf message on the wire.
enum Field<'a> {
    Varint(u64),
    Fixed64(&'a [u8]),
    Bytes(&'a [u8]),
    Owned(Vec<u8>),
    Fixed32(&'a [u8]),
}

/// Re-encodes `msg` with each field passed through `f` (field order and unknown fields kept).
fn map_fields<'a>(
    msg: &'a [u8],
    mut f: impl FnMut(u64, Field<'a>) -> Result<Field<'a>>,
) -> Result<Vec<u8>> {
    let bad = |what: &str| Error::Internal(format!("malformed CRIU image message: {what}"));
    let mut out = Vec::with_capacity(msg.len() + 8);
    let mut i = 0;
    while i < msg.len() {
        let key = read_varint(msg, &mut i).ok_or_else(|| bad("key"))?;
        let (num, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(read_varint(msg, &mut i).ok_or_else(|| bad("varint"))?),
            1 => Field::Fixed64(take(msg, &mut i, 8).ok_or_else(|| bad("fixed64"))?),
            2 => {
                let len = read_varint(msg, &mut i).ok_or_else(|| bad("length"))? as usize;
                Field::Bytes(take(msg, &mut i, len).ok_or_else(|| bad("bytes"))?)
            }
            5 => Field::Fixed32(take(msg, &mut i, 4).ok_or_else(|| bad("fixed32"))?),
            _ => return Err(bad("wire type")),
        };
        match f(num, field)? {
            Field::Varint(v) => {
                write_varint(&mut out, num << 3);
                write_varint(&mut out, v);
            }
            Field::Fixed64(b) | Field::Fixed32(b) => {
                write_varint(&mut out, key);
                out.extend_from_slice(b);
            }
            Field::Bytes(b) => {
                write_varint(&mut out, (num << 3) | 2);
                write_varint(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Field::Owned(b) => {
                write_varint(&mut out, (num << 3) | 2);
                write_varint(&mut out, b.len() as u64);
                out.extend_from_slice(&b);
            }
        }
    }
    Ok(out)
}

fn take<'a>(msg: &'a [u8], i: &mut usize, n: usize) -> Option<&'a [u8]> {
    let b = msg.get(*i..i.checked_add(n)?)?;
    *i += n;
    Some(b)
}

fn read_varint(msg: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *msg.get(*i)?;
        *i += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_field(num: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, num << 3);
        write_varint(&mut out, v);
        out
    }

    fn bytes_field(num: u64, b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, (num << 3) | 2);
        write_varint(&mut out, b.len() as u64);
        out.extend_from_slice(b);
        out
    }

    fn extent(first: u64, lower: u64, count: u64) -> Vec<u8> {
        [
            varint_field(1, first),
            varint_field(2, lower),
            varint_field(3, count),
        ]
        .concat()
    }

    fn image(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = 0x5456_4319u32.to_le_bytes().to_vec();
        out.extend_from_slice(&0x5547_4906u32.to_le_bytes());
        for e in entries {
            out.extend_from_slice(&(e.len() as u32).to_le_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    const SHIFT: IdShift = IdShift {
        from: 268_435_456,
        to: 268_500_992,
        count: 65_536,
    };

    #[test]
    fn user_namespace_maps_move_to_the_new_range() {
        let entry = [
            bytes_field(1, &extent(0, 268_435_456, 65_536)),
            bytes_field(2, &extent(0, 268_435_456, 65_536)),
        ]
        .concat();
        let out = rewrite_entries(&image(&[entry]), |m| shift_userns(m, &SHIFT)).unwrap();
        let want = [
            bytes_field(1, &extent(0, 268_500_992, 65_536)),
            bytes_field(2, &extent(0, 268_500_992, 65_536)),
        ]
        .concat();
        assert_eq!(out, image(&[want]));
    }

    #[test]
    fn mount_options_move_and_every_other_field_is_kept() {
        let mount = |options: &str| {
            [
                varint_field(1, 6),
                varint_field(2, 1234),
                bytes_field(7, b"/dev/pts"),
                bytes_field(9, options.as_bytes()),
                // A field this code does not know, kept as it was.
                varint_field(30, 7),
            ]
            .concat()
        };
        let input = image(&[
            mount("rw,gid=268435461,mode=620,ptmxmode=666"),
            mount("rw,uid=1000,size=1024k"),
        ]);
        let out = rewrite_entries(&input, |m| shift_mount_options(m, &SHIFT)).unwrap();
        assert_eq!(
            out,
            image(&[
                mount("rw,gid=268500997,mode=620,ptmxmode=666"),
                mount("rw,uid=1000,size=1024k"),
            ])
        );
    }

    #[test]
    fn a_cut_image_is_an_error_not_a_guess() {
        let mut cut = image(&[extent(0, 1, 2)]);
        cut.pop();
        assert!(rewrite_entries(&cut, |m| shift_userns(m, &SHIFT)).is_err());
    }
}
