//! Connect-RPC framing (JSON codec): envelopes, error codes, end-of-stream messages.
//!
//! Hand-written because no maintained Rust crate serves the Connect protocol over axum with the
//! JSON codec only; the protocol surface we need is a few dozen lines.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Content type of unary Connect requests and responses.
pub const UNARY_CONTENT_TYPE: &str = "application/json";
/// Content type of streaming Connect requests and responses. Must be exact: Python's
/// connectrpc rejects any `;charset=` parameter on streams.
pub const STREAM_CONTENT_TYPE: &str = "application/connect+json";

/// Envelope flag: compressed payload (never used; compression is off in both directions).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;

/// Connect error codes, written as lower_snake strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The operation was cancelled, typically by the caller.
    Canceled,
    /// An error with no better code.
    Unknown,
    /// The request is malformed or names something invalid.
    InvalidArgument,
    /// The deadline passed before the operation finished.
    DeadlineExceeded,
    /// The named process, file or watcher does not exist.
    NotFound,
    /// The entry to create already exists.
    AlreadyExists,
    /// The caller may not do this.
    PermissionDenied,
    /// A limit was hit (quota, disk space, message size).
    ResourceExhausted,
    /// The system is not in the state the operation needs.
    FailedPrecondition,
    /// The operation was aborted, e.g. by a conflict.
    Aborted,
    /// A value was past the valid range.
    OutOfRange,
    /// The operation or feature is not implemented.
    Unimplemented,
    /// A bug or broken invariant on the server.
    Internal,
    /// The service cannot be reached right now; retrying may help.
    Unavailable,
    /// Data was lost or corrupted.
    DataLoss,
    /// The request carried no valid credentials.
    Unauthenticated,
}

impl Code {
    /// The conventional HTTP status for a unary error response.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }

    /// Maps a plain HTTP status back to a code, for non-Connect error bodies.
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::AlreadyExists,
            429 | 502..=504 => Code::Unavailable,
            499 => Code::Canceled,
            501 => Code::Unimplemented,
            _ => Code::Unknown,
        }
    }
}

/// A Connect error: `{"code":"not_found","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ConnectError {
    /// What kind of failure this is.
    pub code: Code,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
}

impl ConnectError {
    /// An error with this code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// A `not_found` error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    /// An `invalid_argument` error.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    /// An `internal` error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
    /// Maps an I/O error on a path to the code the SDKs expect.
    pub fn from_io(err: &std::io::Error, what: &str) -> Self {
        use std::io::ErrorKind::*;
        let code = match err.kind() {
            NotFound => Code::NotFound,
            AlreadyExists => Code::AlreadyExists,
            PermissionDenied => Code::PermissionDenied,
            InvalidInput | NotADirectory | IsADirectory | DirectoryNotEmpty | InvalidFilename => {
                Code::InvalidArgument
            }
            StorageFull | QuotaExceeded => Code::ResourceExhausted,
            _ => Code::Internal,
        };
        Self::new(code, format!("{what}: {err}"))
    }
}

/// The JSON of the final (flag 0x02) envelope of a stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndStream {
    /// Why the stream failed; absent when it ended normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
}

/// One decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Envelope flags (`FLAG_COMPRESSED`, `FLAG_END_STREAM`).
    pub flags: u8,
    /// The payload, JSON for both data and end-of-stream envelopes.
    pub data: Bytes,
}

impl Envelope {
    /// Whether this is the stream's final envelope.
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Encodes one envelope: flag byte, big-endian u32 length, payload.
pub fn encode_envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + payload.len());
    buf.put_u8(flags);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.freeze()
}

/// Encodes a data envelope holding `msg` as JSON.
pub fn encode_message<T: Serialize>(msg: &T) -> Bytes {
    let json = serde_json::to_vec(msg).expect("envd messages always serialize");
    encode_envelope(0, &json)
}

/// Encodes the end-of-stream envelope, carrying `error` if the stream failed.
pub fn encode_end_stream(error: Option<ConnectError>) -> Bytes {
    let json = serde_json::to_vec(&EndStream { error }).expect("end stream serializes");
    encode_envelope(FLAG_END_STREAM, &json)
}

/// Incremental envelope decoder for bodies that arrive in arbitrary chunks.
#[derive(Debug, Default)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
}

/// Largest single message accepted (stdin chunks and events are far smaller).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

impl EnvelopeDecoder {
    /// Appends bytes as they arrive; [`Self::next_envelope`] takes the finished envelopes out.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Returns the next complete envelope, if one has fully arrived.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, ConnectError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE_BYTES {
            return Err(ConnectError::new(
                Code::ResourceExhausted,
                "message too large",
            ));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(ConnectError::new(
                Code::Unimplemented,
                "compressed envelopes are not supported",
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let data = self.buf.split_to(len).freeze();
        Ok(Some(Envelope { flags, data }))
    }

    /// True when bytes of an unfinished envelope remain.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_in_odd_chunks() {
        let a = encode_message(&serde_json::json!({"event":{"start":{"pid":7}}}));
        let b = encode_end_stream(Some(ConnectError::not_found("gone")));
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let mut dec = EnvelopeDecoder::default();
        let mut got = Vec::new();
        for chunk in all.chunks(3) {
            dec.push(chunk);
            while let Some(env) = dec.next_envelope().unwrap() {
                got.push(env);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].flags, 0);
        assert_eq!(&got[0].data[..], br#"{"event":{"start":{"pid":7}}}"#);
        assert!(got[1].is_end_stream());
        let end: EndStream = serde_json::from_slice(&got[1].data).unwrap();
        assert_eq!(end.error.unwrap().code, Code::NotFound);
        assert!(!dec.has_partial());
    }

    #[test]
    fn codes_are_snake_case_on_the_wire() {
        let e = ConnectError::invalid_argument("bad cwd");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"invalid_argument","message":"bad cwd"}"#
        );
        assert_eq!(Code::InvalidArgument.http_status(), 400);
    }
}
