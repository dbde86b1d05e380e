//! Packet framing: a length word, a six-word header, then the XDR payload.

use super::xdr::XdrError;

/// The REMOTE program (the main API).
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
/// The QEMU program (monitor passthrough; not served).
pub const QEMU_PROGRAM: u32 = 0x2000_8087;
/// The LXC program (not served).
pub const LXC_PROGRAM: u32 = 0x0006_8000;
/// The KEEPALIVE program (PING/PONG messages).
pub const KEEPALIVE_PROGRAM: u32 = 0x6b65_6570;
/// The ADMIN program (admin socket).
pub const ADMIN_PROGRAM: u32 = 0x0690_0690;
/// Every program is at version 1.
pub const PROTOCOL_VERSION: u32 = 1;

/// Length word plus header.
pub const HEADER_LEN: usize = 28;
/// Largest packet this daemon accepts (length word included). libvirt allows
/// 32 MiB; nothing we serve needs more than a domain XML of at most 1 MiB, and
/// a smaller cap bounds what one client can make us buffer.
pub const MAX_PACKET: usize = 4 * 1024 * 1024 + HEADER_LEN;
/// Largest packet this daemon sends: libvirt's `VIR_NET_MESSAGE_MAX`, what
/// every client accepts.
pub const MAX_REPLY: usize = 32 * 1024 * 1024;

/// `virNetMessageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// Client call.
    Call = 0,
    /// Reply to a call.
    Reply = 1,
    /// Asynchronous message (events, keepalive).
    Message = 2,
    /// Stream data.
    Stream = 3,
    /// Call with fds (not supported here).
    CallWithFds = 4,
    /// Reply with fds.
    ReplyWithFds = 5,
    /// Stream hole.
    StreamHole = 6,
}

impl MessageType {
    fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::Call,
            1 => Self::Reply,
            2 => Self::Message,
            3 => Self::Stream,
            4 => Self::CallWithFds,
            5 => Self::ReplyWithFds,
            6 => Self::StreamHole,
            _ => return None,
        })
    }
}

/// `virNetMessageStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success (and every call).
    Ok = 0,
    /// Error reply.
    Error = 1,
    /// Stream data follows.
    Continue = 2,
}

/// The packet header (`virNetMessageHeader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Program number.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// Procedure number.
    pub proc_: i32,
    /// Message type.
    pub kind: MessageType,
    /// Serial, echoed by replies.
    pub serial: u32,
    /// Raw status word (validated by the dispatcher, which must answer bad ones).
    pub status: i32,
}

impl Header {
    /// The reply header for this call.
    pub fn reply(&self, status: Status) -> Header {
        Header { kind: MessageType::Reply, status: status as i32, ..*self }
    }
}

/// Why bytes could not be framed. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length word is below a header or above [`MAX_PACKET`].
    #[error("packet length {0} out of range")]
    BadLength(u32),
    /// The type word is not a known message type.
    #[error("unknown message type {0}")]
    BadType(i32),
}

/// Splits one complete packet off the front of `buf`.
/// Returns `Ok(None)` when more bytes are needed, else the header, the
/// payload range within `buf` and the packet's total length.
pub fn split(buf: &[u8]) -> Result<Option<(Header, std::ops::Range<usize>, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if (len as usize) < HEADER_LEN || len as usize > MAX_PACKET {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let kind_raw = word(16) as i32;
    let kind = MessageType::from_i32(kind_raw).ok_or(FrameError::BadType(kind_raw))?;
    let header = Header {
        prog: word(4),
        vers: word(8),
        proc_: word(12) as i32,
        kind,
        serial: word(20),
        status: word(24) as i32,
    };
    Ok(Some((header, HEADER_LEN..len, len)))
}

/// Appends a complete packet (length, header, `payload`) to `out`.
pub fn encode(out: &mut Vec<u8>, header: &Header, payload: &[u8]) -> Result<(), XdrError> {
    let len = HEADER_LEN + payload.len();
    let len32 = u32::try_from(len).map_err(|_| XdrError::TooLong(len as u64))?;
    for w in
        [len32, header.prog, header.vers, header.proc_ as u32, header.kind as u32, header.serial, header.status as u32]
    {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CONNECT_GET_VERSION, serial 5, from the protocol reference.
    const CALL: [u8; 28] =
        [0, 0, 0, 0x1c, 0x20, 0, 0x80, 0x86, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0];

    #[test]
    fn the_reference_call_splits_into_its_header() {
        let (h, payload, len) = split(&CALL).unwrap().unwrap();
        assert_eq!(len, 28);
        assert!(payload.is_empty());
        assert_eq!(
            h,
            Header { prog: REMOTE_PROGRAM, vers: 1, proc_: 4, kind: MessageType::Call, serial: 5, status: 0 }
        );
    }

    #[test]
    fn the_reference_reply_encodes_byte_for_byte() {
        let (h, _, _) = split(&CALL).unwrap().unwrap();
        let mut out = Vec::new();
        encode(&mut out, &h.reply(Status::Ok), &7_002_000u64.to_be_bytes()).unwrap();
        let want = [
            0, 0, 0, 0x24, 0x20, 0, 0x80, 0x86, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0x6a, 0xd7, 0x90,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn every_message_type_and_status_round_trips() {
        let types = [
            MessageType::Call,
            MessageType::Reply,
            MessageType::Message,
            MessageType::Stream,
            MessageType::CallWithFds,
            MessageType::ReplyWithFds,
            MessageType::StreamHole,
        ];
        for (i, kind) in types.into_iter().enumerate() {
            for status in [Status::Ok, Status::Error, Status::Continue] {
                let h = Header { prog: KEEPALIVE_PROGRAM, vers: 1, proc_: -3, kind, serial: 77, status: status as i32 };
                let mut out = Vec::new();
                encode(&mut out, &h, b"abcd").unwrap();
                assert_eq!(out[19], i as u8, "type word of {kind:?}");
                assert_eq!(out[27], status as u8);
                let (back, payload, len) = split(&out).unwrap().unwrap();
                assert_eq!((back, &out[payload], len), (h, &b"abcd"[..], 32));
            }
        }
    }

    #[test]
    fn partial_packets_wait_for_more_bytes() {
        assert_eq!(split(&CALL[..3]), Ok(None));
        assert_eq!(split(&CALL[..27]), Ok(None));
    }

    #[test]
    fn bad_lengths_and_types_are_errors() {
        assert_eq!(split(&[0, 0, 0, 4]), Err(FrameError::BadLength(4)));
        assert_eq!(split(&[0x7f, 0, 0, 0]), Err(FrameError::BadLength(0x7f00_0000)));
        let mut bad = CALL;
        bad[19] = 9;
        assert_eq!(split(&bad), Err(FrameError::BadType(9)));
    }

    #[test]
    fn pipelined_packets_split_one_at_a_time() {
        let mut two = CALL.to_vec();
        two.extend_from_slice(&CALL);
        two[28 + 23] = 6;
        let (_, _, len) = split(&two).unwrap().unwrap();
        let (h2, _, _) = split(&two[len..]).unwrap().unwrap();
        assert_eq!(h2.serial, 6);
    }
}
