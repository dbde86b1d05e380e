//! Building reply, error, stream and keepalive packets: the one place a
//! frontend turns a result into wire bytes.

use serde::Serialize;

use crate::rpc::error::{RpcError, to_remote};
use crate::rpc::frame::{self, Header, KEEPALIVE_PROGRAM, MessageType, Status};
use crate::rpc::xdr;

/// Object-safe serialization, so `ok` can take any return struct.
pub(super) trait ErasedRet {
    /// XDR bytes of the value.
    fn encode(&self) -> Result<Vec<u8>, xdr::XdrError>;
}

impl<T: Serialize> ErasedRet for T {
    fn encode(&self) -> Result<Vec<u8>, xdr::XdrError> {
        xdr::to_bytes(self)
    }
}

pub(super) fn ok_reply(h: &Header, ret: &dyn ErasedRet) -> Result<Vec<u8>, RpcError> {
    let payload = ret.encode().map_err(|_| RpcError::Internal("reply encoding"))?;
    let mut out = Vec::with_capacity(frame::HEADER_LEN + payload.len());
    frame::encode(&mut out, &h.reply(Status::Ok), &payload).map_err(|_| RpcError::Internal("reply encoding"))?;
    Ok(out)
}

/// The error reply to the call `h`.
pub fn error_reply(h: &Header, e: &RpcError) -> Vec<u8> {
    let payload = xdr::to_bytes(&to_remote(e)).unwrap_or_default();
    let mut out = Vec::new();
    let header = Header { prog: h.prog, vers: h.vers, ..h.reply(Status::Error) };
    let _ = frame::encode(&mut out, &header, &payload);
    out
}

/// A stream packet for the stream opened by call `h`.
pub fn stream_packet(h: &Header, status: Status, data: &[u8]) -> Vec<u8> {
    let header = Header { kind: MessageType::Stream, status: status as i32, ..*h };
    let mut out = Vec::with_capacity(frame::HEADER_LEN + data.len());
    let _ = frame::encode(&mut out, &header, data);
    out
}

/// A keepalive message (PING or PONG).
pub fn keepalive(proc_: i32) -> Vec<u8> {
    let h = Header { prog: KEEPALIVE_PROGRAM, vers: 1, proc_, kind: MessageType::Message, serial: 0, status: 0 };
    let mut out = Vec::new();
    let _ = frame::encode(&mut out, &h, &[]);
    out
}
