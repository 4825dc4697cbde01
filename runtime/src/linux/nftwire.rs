//! Sends a list of [`NftOp`]s to nf_tables as one netlink batch (one atomic transaction).
//!
//! Written by hand because a policy update must not cost more with more sandboxes, and
//! libnftables (what `nft` runs, and what the daemon used for this) dumps every chain of the
//! ruleset into its cache before each `add rule`: one chain per sandbox made an update cost
//! ~1 ms more per 1000 sandboxes. A batch built here costs the same at any size. The crates
//! that encode nf_tables messages either link libnftnl (`nftnl`) or are GPL (`rustables`), and
//! only a handful of message and expression types are needed: chains, rules made of meta,
//! payload, bitwise, cmp, range and immediate expressions, and set elements.
//!
//! Message and attribute numbers are those of <linux/netfilter/nf_tables.h> and
//! <linux/netfilter/nfnetlink.h>, a stable kernel ABI.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, OnceLock};

use ipnet::IpNet;
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::net::NFT_TABLE;
use crate::error::{Error, Result};
use crate::linux::nftcompile::{ElemData, ElemKey, NftOp, NftRule, REJECT_CHAIN, Verdict};

// nlmsghdr flags and types.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;

// nfnetlink.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

// nf_tables message types.
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

// Attributes.
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;

// Expressions' attributes and values.
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_RANGE_EQ: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_JUMP: u32 = -3i32 as u32;
const NFT_GOTO: u32 = -4i32 as u32;
/// libnftnl's userdata tag for a rule comment (NFTNL_UDATA_RULE_COMMENT).
const UDATA_RULE_COMMENT: u8 = 0;

/// Attribute writer: type-length-value records, 4-byte aligned, nests patched on close.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v);
    }

    fn u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    /// One expression of a rule's expression list.
    fn expr(&mut self, name: &str, f: impl FnOnce(&mut Attrs)) {
        self.nest(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, name);
            e.nest(NFTA_EXPR_DATA, f);
        });
    }

    fn data(&mut self, ty: u16, value: &[u8]) {
        self.nest(ty, |d| d.put(NFTA_DATA_VALUE, value));
    }

    fn verdict(&mut self, ty: u16, code: u32, chain: Option<&str>) {
        self.nest(ty, |d| {
            d.nest(NFTA_DATA_VERDICT, |v| {
                v.u32(NFTA_VERDICT_CODE, code);
                if let Some(c) = chain {
                    v.str(NFTA_VERDICT_CHAIN, c);
                }
            })
        });
    }
}

/// A batch under construction: nlmsghdr + nfgenmsg + attributes per message.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Messages that will be acknowledged, with what each did (for error messages).
    acked: Vec<(u32, String)>,
}

impl Batch {
    fn new(seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(4096),
            seq,
            acked: Vec::new(),
        };
        b.msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            Attrs::default(),
            None,
        );
        b
    }

    fn msg(&mut self, ty: u16, flags: u16, family: u8, attrs: Attrs, what: Option<String>) {
        let batch_marker = ty == NFNL_MSG_BATCH_BEGIN || ty == NFNL_MSG_BATCH_END;
        let (ty, res_id) = if batch_marker {
            (ty, NFNL_SUBSYS_NFTABLES)
        } else {
            ((NFNL_SUBSYS_NFTABLES << 8) | ty, 0)
        };
        let flags = if what.is_some() {
            flags | NLM_F_ACK
        } else {
            flags
        };
        let len = 16 + 4 + attrs.0.len();
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(&attrs.0);
        if let Some(w) = what {
            self.acked.push((self.seq, w));
        }
        self.seq = self.seq.wrapping_add(1);
    }

    fn op(&mut self, op: &NftOp) {
        let mut a = Attrs::default();
        let create = NLM_F_REQUEST | NLM_F_CREATE;
        let ty = match op {
            NftOp::AddChain(c) | NftOp::DelChain(c) => {
                a.str(NFTA_CHAIN_TABLE, NFT_TABLE);
                a.str(NFTA_CHAIN_NAME, c);
                if matches!(op, NftOp::AddChain(_)) {
                    NFT_MSG_NEWCHAIN
                } else {
                    NFT_MSG_DELCHAIN
                }
            }
            NftOp::FlushChain(c) => {
                a.str(NFTA_RULE_TABLE, NFT_TABLE);
                a.str(NFTA_RULE_CHAIN, c);
                NFT_MSG_DELRULE
            }
            NftOp::AddRule { chain, rule } => {
                a.str(NFTA_RULE_TABLE, NFT_TABLE);
                a.str(NFTA_RULE_CHAIN, chain);
                a.nest(NFTA_RULE_EXPRESSIONS, |e| rule_exprs(e, rule));
                if let Some(c) = rule.comment {
                    let mut u = vec![UDATA_RULE_COMMENT, (c.len() + 1) as u8];
                    u.extend_from_slice(c.as_bytes());
                    u.push(0);
                    a.put(NFTA_RULE_USERDATA, &u);
                }
                NFT_MSG_NEWRULE
            }
            NftOp::AddElem { set, key, data } => {
                elements(&mut a, set, key, Some(data));
                NFT_MSG_NEWSETELEM
            }
            NftOp::DelElem { set, key } => {
                elements(&mut a, set, key, None);
                NFT_MSG_DELSETELEM
            }
        };
        let flags = match op {
            NftOp::AddRule { .. } => create | NLM_F_APPEND,
            NftOp::AddChain(_) | NftOp::AddElem { .. } => create,
            _ => NLM_F_REQUEST,
        };
        self.msg(ty, flags, NFPROTO_INET, a, Some(op.to_string()));
    }

    fn finish(mut self) -> (Vec<u8>, Vec<(u32, String)>) {
        self.msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, Attrs::default(), None);
        (self.buf, self.acked)
    }
}

fn elements(a: &mut Attrs, set: &str, key: &ElemKey, data: Option<&ElemData>) {
    a.str(NFTA_SET_ELEM_LIST_TABLE, NFT_TABLE);
    a.str(NFTA_SET_ELEM_LIST_SET, set);
    a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
        l.nest(NFTA_LIST_ELEM, |e| {
            let bytes = match key {
                ElemKey::Addr(IpAddr::V4(ip)) => ip.octets().to_vec(),
                ElemKey::Addr(IpAddr::V6(ip)) => ip.octets().to_vec(),
                // Concatenations: each field padded to a 4-byte register.
                ElemKey::Pair(s, d) => [s.octets(), d.octets()].concat(),
                // 16-byte fields are already register-aligned.
                ElemKey::Pair6(s, d) => [s.octets(), d.octets()].concat(),
            };
            e.data(NFTA_SET_ELEM_KEY, &bytes);
            match data {
                Some(ElemData::Goto(c)) => e.verdict(NFTA_SET_ELEM_DATA, NFT_GOTO, Some(c)),
                Some(ElemData::Jump(c)) => e.verdict(NFTA_SET_ELEM_DATA, NFT_JUMP, Some(c)),
                Some(ElemData::None) | None => {}
            }
        })
    });
}

/// The expressions `nft` generates for the same rule text (see [`NftRule`]'s `Display`).
fn rule_exprs(e: &mut Attrs, rule: &NftRule) {
    let load_meta = |e: &mut Attrs, key: u32| {
        e.expr("meta", |m| {
            m.u32(1, NFT_REG_1); // NFTA_META_DREG
            m.u32(2, key); // NFTA_META_KEY
        })
    };
    let cmp_eq = |e: &mut Attrs, value: &[u8]| {
        e.expr("cmp", |c| {
            c.u32(1, NFT_REG_1); // NFTA_CMP_SREG
            c.u32(2, NFT_CMP_EQ); // NFTA_CMP_OP
            c.data(3, value); // NFTA_CMP_DATA
        })
    };
    let load_payload = |e: &mut Attrs, base: u32, offset: u32, len: u32| {
        e.expr("payload", |p| {
            p.u32(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
            p.u32(2, base); // NFTA_PAYLOAD_BASE
            p.u32(3, offset); // NFTA_PAYLOAD_OFFSET
            p.u32(4, len); // NFTA_PAYLOAD_LEN
        })
    };
    if let Some(net) = &rule.daddr {
        // In an inet table an address match first checks the packet's family.
        let (nfproto, offset, addr, mask): (u8, u32, Vec<u8>, Vec<u8>) = match net {
            IpNet::V4(n) => (
                NFPROTO_IPV4,
                16,
                n.network().octets().to_vec(),
                n.netmask().octets().to_vec(),
            ),
            IpNet::V6(n) => (
                NFPROTO_IPV6,
                24,
                n.network().octets().to_vec(),
                n.netmask().octets().to_vec(),
            ),
        };
        load_meta(e, NFT_META_NFPROTO);
        cmp_eq(e, &[nfproto]);
        if net.prefix_len() > 0 {
            let len = addr.len() as u32;
            load_payload(e, NFT_PAYLOAD_NETWORK_HEADER, offset, len);
            if net.prefix_len() < net.max_prefix_len() {
                e.expr("bitwise", |b| {
                    b.u32(1, NFT_REG_1); // NFTA_BITWISE_SREG
                    b.u32(2, NFT_REG_1); // NFTA_BITWISE_DREG
                    b.u32(3, len); // NFTA_BITWISE_LEN
                    b.data(4, &mask); // NFTA_BITWISE_MASK
                    b.data(5, &vec![0; addr.len()]); // NFTA_BITWISE_XOR
                });
            }
            cmp_eq(e, &addr);
        }
    }
    if let Some(proto) = rule.l4proto {
        load_meta(e, NFT_META_L4PROTO);
        cmp_eq(e, &[proto]);
    }
    if let Some((lo, hi)) = rule.dport {
        load_payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
        if lo == hi {
            cmp_eq(e, &lo.to_be_bytes());
        } else {
            e.expr("range", |r| {
                r.u32(1, NFT_REG_1); // NFTA_RANGE_SREG
                r.u32(2, NFT_RANGE_EQ); // NFTA_RANGE_OP
                r.data(3, &lo.to_be_bytes()); // NFTA_RANGE_FROM_DATA
                r.data(4, &hi.to_be_bytes()); // NFTA_RANGE_TO_DATA
            });
        }
    }
    e.expr("immediate", |i| {
        i.u32(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
        match rule.verdict {
            Verdict::Accept => i.verdict(2, NF_ACCEPT, None), // NFTA_IMMEDIATE_DATA
            Verdict::Reject => i.verdict(2, NFT_GOTO, Some(REJECT_CHAIN)),
        }
    });
}

/// The encoded batch for `ops` (exposed for tests), and the acknowledged messages.
fn encode(ops: &[NftOp], seq: u32) -> (Vec<u8>, Vec<(u32, String)>) {
    let mut b = Batch::new(seq);
    for op in ops {
        b.op(op);
    }
    b.finish()
}

/// A `SOL_SOCKET` option set to `value`; setsockopt's return code.
fn set_sockopt<T>(sock: &Socket, name: libc::c_int, value: &T) -> libc::c_int {
    // SAFETY: setsockopt on a socket we own, with a value of the size we pass.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    }
}

/// A netfilter netlink socket, bound to the network namespace of the thread that opened it.
pub struct Conn {
    sock: Socket,
    seq: u32,
}

impl Conn {
    /// Opens and binds a netfilter socket in the calling thread's network namespace.
    pub fn open() -> Result<Conn> {
        let err =
            |e: std::io::Error| Error::Internal(format!("opening a netfilter netlink socket: {e}"));
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(err)?;
        sock.bind_auto().map_err(err)?;
        // Every acknowledged message of a batch gets its own reply, which by default echoes
        // the whole request message. A fan-out's group commit (hundreds of messages) then
        // overflowed the default receive buffer, replies were dropped and the batch waited out
        // the timeout below (5 s per start at cc=50). Acks carry only the header with
        // NETLINK_CAP_ACK, and a buffer forced to 8 MiB holds thousands of them (each costs
        // about 1 KiB of buffer accounting however small).
        sock.set_cap_ack(true).map_err(err)?;
        let size: libc::c_int = 8 << 20;
        if set_sockopt(&sock, libc::SO_RCVBUFFORCE, &size) != 0 {
            sock.set_rx_buf_sz(size as usize).map_err(err)?;
        }
        // A reply that never comes must not hang the daemon.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        set_sockopt(&sock, libc::SO_RCVTIMEO, &tv);
        Ok(Conn { sock, seq: 1 })
    }

    /// Runs `ops` as one nf_tables transaction: all of them or none. Blocking (a few
    /// syscalls). The error names the op the kernel refused and why.
    pub fn run(&mut self, ops: &[NftOp]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let (buf, acked) = encode(ops, self.seq);
        self.seq = self.seq.wrapping_add(acked.len() as u32 + 2);
        self.sock
            .send(&buf, 0)
            .map_err(|e| Error::Internal(format!("sending an nf_tables batch: {e}")))?;
        // Every acknowledged message gets one reply: 0, or the error that aborted the batch.
        // Replies are matched by sequence number, so a stray one from an earlier batch that
        // gave up waiting is skipped, not counted.
        let mut pending: Vec<u32> = acked.iter().map(|(seq, _)| *seq).collect();
        let mut first_err: Option<String> = None;
        let mut rx = Vec::with_capacity(16 * 1024);
        while !pending.is_empty() {
            rx.clear();
            let n = match self.sock.recv(&mut rx, 0) {
                Ok(n) => n,
                Err(e) if first_err.is_some() => {
                    tracing::debug!("nf_tables replies after an error: {e}");
                    break;
                }
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "reading nf_tables replies ({} missing): {e}",
                        pending.len()
                    )));
                }
            };
            let mut off = 0;
            while off + 16 <= n {
                let word = |at: usize| u32::from_ne_bytes(rx[at..at + 4].try_into().expect("4"));
                let len = word(off) as usize;
                let ty = u16::from_ne_bytes(rx[off + 4..off + 6].try_into().expect("2"));
                let seq = word(off + 8);
                if len < 16 || off + len > n {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 20 && pending.contains(&seq) {
                    pending.retain(|s| *s != seq);
                    let errno = word(off + 16) as i32;
                    if errno != 0 && first_err.is_none() {
                        let what = acked
                            .iter()
                            .find(|(s, _)| *s == seq)
                            .map_or("the batch", |(_, w)| w.as_str());
                        let err = std::io::Error::from_raw_os_error(-errno);
                        first_err = Some(format!("{what}: {err}"));
                    }
                }
                off += (len + 3) & !3;
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(Error::Internal(format!("nft transaction failed: {e}"))),
        }
    }
}

/// Runs `ops` as one transaction on the daemon's socket (opened on first use).
pub fn run(ops: &[NftOp]) -> Result<()> {
    static CONN: OnceLock<std::result::Result<Mutex<Conn>, String>> = OnceLock::new();
    let conn = CONN
        .get_or_init(|| Conn::open().map(Mutex::new).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Internal(e.clone()))?;
    conn.lock().unwrap_or_else(|e| e.into_inner()).run(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::nftcompile::IPPROTO_TCP;

    #[test]
    fn attributes_are_aligned_and_nested() {
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, "coppice");
        assert_eq!(a.0.len(), 12, "4 + 8 bytes incl. NUL, no padding needed");
        assert_eq!(&a.0[..4], &[12, 0, 1, 0]);
        let mut b = Attrs::default();
        b.nest(NFTA_RULE_EXPRESSIONS, |n| n.put(7, &[1]));
        assert_eq!(b.0.len(), 12);
        assert_eq!(u16::from_ne_bytes([b.0[0], b.0[1]]), 12);
        assert_eq!(
            u16::from_ne_bytes([b.0[2], b.0[3]]),
            NFTA_RULE_EXPRESSIONS | NLA_F_NESTED
        );
        assert_eq!(&b.0[4..9], &[5, 0, 7, 0, 1]);
    }

    /// The attribute payloads of the one message between the batch markers.
    fn only_message(buf: &[u8]) -> (u16, Vec<u8>) {
        let word = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        let first = word(0);
        let len = word(first);
        let ty = u16::from_ne_bytes(buf[first + 4..first + 6].try_into().unwrap());
        assert_eq!(
            first + len + word(first + len),
            buf.len(),
            "begin, one, end"
        );
        (ty, buf[first + 20..first + len].to_vec())
    }

    #[test]
    fn domain_admission_elements() {
        use crate::linux::nftcompile::{DOMAIN_SET4, DOMAIN_SET6, SandboxAddrs};
        let addrs = SandboxAddrs {
            ip: "10.88.0.7".parse().unwrap(),
            ip6: Some("fd88::7".parse().unwrap()),
        };
        let nested = |ty: u16| ty | NLA_F_NESTED;
        for (dst, set) in [
            ("198.51.100.41", DOMAIN_SET4),
            ("2001:db8:10::29", DOMAIN_SET6),
        ] {
            let key = addrs.admission(dst.parse().unwrap()).unwrap();
            assert_eq!(key.domain_set(), Some(set));
            let want_key: Vec<u8> = match key {
                ElemKey::Pair(s, d) => [s.octets(), d.octets()].concat(),
                ElemKey::Pair6(s, d) => [s.octets(), d.octets()].concat(),
                ElemKey::Addr(_) => unreachable!(),
            };
            // table, set, then elements > element > key > value (key bytes, no padding).
            let mut want = Attrs::default();
            want.str(NFTA_SET_ELEM_LIST_TABLE, "coppice");
            want.str(NFTA_SET_ELEM_LIST_SET, set);
            let v = want_key.len() as u16;
            let hdr = |len: u16, ty: u16| [len.to_ne_bytes(), ty.to_ne_bytes()].concat();
            want.0
                .extend(hdr(4 + 4 + 4 + 4 + v, nested(NFTA_SET_ELEM_LIST_ELEMENTS)));
            want.0.extend(hdr(4 + 4 + 4 + v, nested(NFTA_LIST_ELEM)));
            want.0.extend(hdr(4 + 4 + v, nested(NFTA_SET_ELEM_KEY)));
            want.0.extend(hdr(4 + v, NFTA_DATA_VALUE));
            want.0.extend(&want_key);
            let del = NftOp::DelElem { set, key };
            let (ty, attrs) = only_message(&encode(&[del], 1).0);
            assert_eq!(ty, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM);
            assert_eq!(attrs, want.0, "{dst}");
            let add = NftOp::AddElem {
                set,
                key,
                data: ElemData::None,
            };
            let (ty, attrs) = only_message(&encode(&[add], 1).0);
            assert_eq!(ty, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM);
            assert_eq!(attrs, want.0, "{dst}");
        }
    }

    #[test]
    fn batch_framing() {
        let rule = NftRule {
            daddr: Some("198.51.100.0/24".parse().unwrap()),
            l4proto: Some(IPPROTO_TCP),
            dport: Some((8000, 8100)),
            verdict: Verdict::Accept,
            comment: None,
        };
        let ops = vec![
            NftOp::AddChain("sbx5".into()),
            NftOp::AddRule {
                chain: "sbx5".into(),
                rule,
            },
        ];
        let (buf, acked) = encode(&ops, 100);
        assert_eq!(acked.len(), 2);
        assert_eq!(acked[0], (101, "add chain inet coppice sbx5".to_string()));
        // Begin, two messages, end; each length-prefixed and 4-byte aligned.
        let mut off = 0;
        let mut types = vec![];
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            types.push(u16::from_ne_bytes(
                buf[off + 4..off + 6].try_into().unwrap(),
            ));
            assert_eq!(len % 4, 0);
            off += len;
        }
        assert_eq!(off, buf.len());
        assert_eq!(
            types,
            [
                NFNL_MSG_BATCH_BEGIN,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE,
                NFNL_MSG_BATCH_END
            ]
        );
        for name in ["meta", "cmp", "payload", "bitwise", "range", "immediate"] {
            let needle = [name.as_bytes(), &[0]].concat();
            assert!(
                buf.windows(needle.len()).any(|w| w == needle),
                "{name} expression"
            );
        }
    }
}
