//! The xenstore wire format (xen's docs/misc/xenstore.txt and
//! xen/include/public/io/xs_wire.h): a 16-byte header of four little-endian
//! `u32`s (type, request id, transaction id, payload length), then at most
//! 4096 bytes of payload.
//!
//! The simulator serves with it, and the reader uses it for the one request
//! the xenstore-rs client does not make, DIRECTORY_PART. Framing only: no
//! sockets, no store.

use std::io::{self, Read, Write};

/// Largest payload either side may send (XENSTORE_PAYLOAD_MAX).
pub const PAYLOAD_MAX: usize = 4096;

/// Message types, numbered as in xs_wire.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MessageType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MessageType {
    pub fn from_u32(value: u32) -> Option<MessageType> {
        use MessageType::*;
        const ALL: [MessageType; 22] = [
            Control,
            Directory,
            Read,
            GetPerms,
            Watch,
            Unwatch,
            TransactionStart,
            TransactionEnd,
            Introduce,
            Release,
            GetDomainPath,
            Write,
            Mkdir,
            Rm,
            SetPerms,
            WatchEvent,
            Error,
            IsDomainIntroduced,
            Resume,
            SetTarget,
            ResetWatches,
            DirectoryPart,
        ];
        ALL.into_iter().find(|t| *t as u32 == value)
    }
}

/// One message, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The raw type, kept as a number so that unknown types can be answered.
    pub kind: u32,
    pub request_id: u32,
    pub transaction_id: u32,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn new(
        kind: MessageType,
        request_id: u32,
        transaction_id: u32,
        payload: Vec<u8>,
    ) -> Message {
        Message {
            kind: kind as u32,
            request_id,
            transaction_id,
            payload,
        }
    }

    pub fn message_type(&self) -> Option<MessageType> {
        MessageType::from_u32(self.kind)
    }

    /// Reads one message; `Ok(None)` at a clean end of stream.
    pub fn read_from(reader: &mut impl Read) -> io::Result<Option<Message>> {
        let mut header = [0u8; 16];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let len = word(12) as usize;
        if len > PAYLOAD_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("xenstore message of {len} bytes exceeds the {PAYLOAD_MAX}-byte limit"),
            ));
        }
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload)?;
        Ok(Some(Message {
            kind: word(0),
            request_id: word(4),
            transaction_id: word(8),
            payload,
        }))
    }

    pub fn write_to(&self, writer: &mut impl Write) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(16 + self.payload.len());
        for word in [
            self.kind,
            self.request_id,
            self.transaction_id,
            self.payload.len() as u32,
        ] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.extend_from_slice(&self.payload);
        writer.write_all(&bytes)
    }

    /// The payload split at NULs, without the empty piece after a final NUL.
    pub fn strings(&self) -> Vec<&[u8]> {
        if self.payload.is_empty() {
            return Vec::new();
        }
        let body = self.payload.strip_suffix(b"\0").unwrap_or(&self.payload);
        body.split(|b| *b == 0).collect()
    }
}

/// Joins strings into a payload, each followed by a NUL.
pub fn nul_terminated<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut payload = Vec::new();
    for part in parts {
        payload.extend_from_slice(part);
        payload.push(0);
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let message = Message::new(MessageType::Write, 7, 3, b"/a/b\0value".to_vec());
        let mut bytes = Vec::new();
        message.write_to(&mut bytes).unwrap();
        assert_eq!(&bytes[..4], &11u32.to_le_bytes());
        assert_eq!(bytes.len(), 16 + 10);
        let back = Message::read_from(&mut bytes.as_slice()).unwrap().unwrap();
        assert_eq!(back, message);
        assert_eq!(back.strings(), vec![&b"/a/b"[..], &b"value"[..]]);
        assert_eq!(Message::read_from(&mut &[][..]).unwrap(), None);
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let mut bytes = Vec::new();
        for word in [2u32, 1, 0, 5000] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        assert!(Message::read_from(&mut bytes.as_slice()).is_err());
    }
}
