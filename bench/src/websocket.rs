//! MQTT over WebSocket (RFC 6455): the opening handshake and binary framing
//! of the bench client.
//!
//! The client sends every flush as one masked binary frame and unwraps the
//! broker's frames into the MQTT read buffer, so an MQTT packet may span
//! frames and a frame may carry several packets, as MQTT 5.0 section 6
//! allows. The client replies to ping frames with pong frames, and a close
//! frame ends the connection.

use bytes::{Buf, BufMut, BytesMut};

use crate::error::BenchError;

/// Largest handshake response accepted before the blank line ending it.
const MAX_RESPONSE_HEADER: usize = 8 * 1024;

/// Largest frame payload accepted from the broker, a guard against a corrupt
/// length field. Larger MQTT packets may still arrive split over frames.
const MAX_FRAME_PAYLOAD: u64 = 64 * 1024 * 1024;

const OPCODE_CONTINUATION: u8 = 0x0;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

/// Returns the HTTP upgrade request for `path` on `host`, offering the `mqtt`
/// subprotocol.
pub fn handshake_request(host: &str, path: &str, key_seed: u64) -> String {
    // The key must be 16 bytes in base64. Any 16 bytes do because the bench
    // does not verify the Sec-WebSocket-Accept header of the response.
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&key_seed.to_le_bytes());
    key[8..].copy_from_slice(&key_seed.rotate_left(29).to_le_bytes());
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        base64(&key)
    )
}

/// Checks the handshake response at the start of `buffer` and removes it.
///
/// Returns `Ok(false)` while the response is incomplete.
///
/// # Errors
///
/// Fails when the status is not 101 or the header is too long.
pub fn take_handshake_response(buffer: &mut BytesMut) -> Result<bool, BenchError> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buffer.len() > MAX_RESPONSE_HEADER {
            return Err(BenchError::WebSocket(format!(
                "handshake response header exceeds {MAX_RESPONSE_HEADER} bytes"
            )));
        }
        return Ok(false);
    };
    let header = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let status_line = header.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1);
    if status != Some("101") {
        return Err(BenchError::WebSocket(format!(
            "upgrade rejected: expected status 101, got {status_line:?}; \
             check --ws-path and that the port is a WebSocket listener"
        )));
    }
    buffer.advance(end + 4);
    Ok(true)
}

/// Appends `payload` to `out` as one masked binary frame.
pub fn append_frame(out: &mut BytesMut, payload: &[u8], mask: [u8; 4]) {
    append_frame_with_opcode(out, OPCODE_BINARY, payload, mask);
}

fn append_frame_with_opcode(out: &mut BytesMut, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.put_u8(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.put_u8(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(0x80 | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(0x80 | 127);
        out.put_u64(len as u64);
    }
    out.put_slice(&mask);
    let start = out.len();
    out.put_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with the repeating 4-byte `mask`, eight bytes at a time.
fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunk of 8"));
        chunk.copy_from_slice(&(word ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so at mask[0], and may be
    // longer than the mask.
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Reassembles the broker's frames into an MQTT byte stream.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Raw bytes read from the socket that do not yet form a whole frame.
    raw: BytesMut,
}

/// Control frames found by [`FrameReader::feed`] besides MQTT bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FeedOutcome {
    /// Payloads of ping frames, to be echoed in pong frames.
    pub pings: Vec<Vec<u8>>,
    /// The broker sent a close frame.
    pub closed: bool,
}

impl FrameReader {
    /// Appends `bytes` from the socket and moves the payload of every whole
    /// data frame to the end of `mqtt`.
    ///
    /// # Errors
    ///
    /// Fails on a masked or oversized frame from the broker, a text frame, or
    /// an unknown opcode.
    pub fn feed(&mut self, bytes: &[u8], mqtt: &mut BytesMut) -> Result<FeedOutcome, BenchError> {
        self.raw.extend_from_slice(bytes);
        let mut outcome = FeedOutcome::default();
        while let Some((opcode, header_len, payload_len)) = self.next_frame_header()? {
            let frame_len = header_len + payload_len;
            if self.raw.len() < frame_len {
                break;
            }
            let payload = &self.raw[header_len..frame_len];
            match opcode {
                OPCODE_BINARY | OPCODE_CONTINUATION => mqtt.extend_from_slice(payload),
                OPCODE_PING => outcome.pings.push(payload.to_vec()),
                OPCODE_PONG => {}
                OPCODE_CLOSE => outcome.closed = true,
                OPCODE_TEXT => {
                    return Err(BenchError::WebSocket(
                        "broker sent a text frame; MQTT uses binary frames only".into(),
                    ))
                }
                other => {
                    return Err(BenchError::WebSocket(format!(
                        "broker sent a frame with unknown opcode 0x{other:X}"
                    )))
                }
            }
            self.raw.advance(frame_len);
            if outcome.closed {
                break;
            }
        }
        Ok(outcome)
    }

    /// Parses the header of the first buffered frame: opcode, header length
    /// and payload length, or `None` while the header is incomplete.
    fn next_frame_header(&self) -> Result<Option<(u8, usize, usize)>, BenchError> {
        let raw = &self.raw[..];
        if raw.len() < 2 {
            return Ok(None);
        }
        let opcode = raw[0] & 0x0F;
        if raw[1] & 0x80 != 0 {
            return Err(BenchError::WebSocket(
                "broker sent a masked frame; RFC 6455 forbids masking server frames".into(),
            ));
        }
        let (header_len, payload_len) = match raw[1] & 0x7F {
            126 if raw.len() < 4 => return Ok(None),
            126 => (4, u64::from(u16::from_be_bytes([raw[2], raw[3]]))),
            127 if raw.len() < 10 => return Ok(None),
            127 => (
                10,
                u64::from_be_bytes(raw[2..10].try_into().expect("8 bytes")),
            ),
            short => (2, u64::from(short)),
        };
        if payload_len > MAX_FRAME_PAYLOAD {
            return Err(BenchError::WebSocket(format!(
                "broker sent a frame of {payload_len} bytes, above the bench's limit of \
                 {MAX_FRAME_PAYLOAD}"
            )));
        }
        Ok(Some((opcode, header_len, payload_len as usize)))
    }
}

/// Appends a masked pong frame echoing `payload`.
pub fn append_pong(out: &mut BytesMut, payload: &[u8], mask: [u8; 4]) {
    append_frame_with_opcode(out, OPCODE_PONG, payload, mask);
}

/// Encodes `bytes` in standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unmasks a client frame the way a server does, for the tests.
    fn unmask_client_frame(frame: &[u8]) -> (u8, Vec<u8>) {
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let (len, offset) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                10,
            ),
            short => (short as usize, 2),
        };
        let mask: [u8; 4] = frame[offset..offset + 4].try_into().unwrap();
        let mut payload = frame[offset + 4..offset + 4 + len].to_vec();
        apply_mask(&mut payload, mask);
        (frame[0] & 0x0F, payload)
    }

    #[test]
    fn mask_matches_bytewise_xor() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let original: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut masked = original.clone();
            apply_mask(&mut masked, mask);
            for (i, (byte, plain)) in masked.iter().zip(&original).enumerate() {
                assert_eq!(*byte, plain ^ mask[i % 4], "byte {i} of {len}");
            }
        }
    }

    #[test]
    fn base64_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn frame_lengths_round_trip() {
        for len in [0usize, 5, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = BytesMut::new();
            append_frame(&mut out, &payload, [1, 2, 3, 4]);
            let (opcode, unmasked) = unmask_client_frame(&out);
            assert_eq!(opcode, OPCODE_BINARY);
            assert_eq!(unmasked.len(), len);
            assert_eq!(unmasked, payload, "payload of length {len}");
        }
    }

    #[test]
    fn reader_splits_and_joins() {
        // Two server frames, the second split across feeds.
        let mut wire = vec![0x82, 3, b'a', b'b', b'c', 0x82, 126, 0, 2];
        wire.extend_from_slice(b"de");
        let mut reader = FrameReader::default();
        let mut mqtt = BytesMut::new();
        let outcome = reader.feed(&wire[..7], &mut mqtt).unwrap();
        assert_eq!(outcome, FeedOutcome::default());
        assert_eq!(&mqtt[..], b"abc");
        reader.feed(&wire[7..], &mut mqtt).unwrap();
        assert_eq!(&mqtt[..], b"abcde");
    }

    #[test]
    fn reader_reports_ping_and_close() {
        let wire = [0x89, 1, b'p', 0x88, 0];
        let mut reader = FrameReader::default();
        let mut mqtt = BytesMut::new();
        let outcome = reader.feed(&wire, &mut mqtt).unwrap();
        assert_eq!(outcome.pings, vec![b"p".to_vec()]);
        assert!(outcome.closed);
        assert!(mqtt.is_empty());
    }

    #[test]
    fn reader_rejects_masked_frame() {
        let wire = [0x82, 0x81, 0, 0, 0, 0, b'x'];
        let err = FrameReader::default()
            .feed(&wire, &mut BytesMut::new())
            .unwrap_err();
        assert!(err.to_string().contains("masked"), "{err}");
    }

    #[test]
    fn handshake_status_checked() {
        let mut ok = BytesMut::from(
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x20\x02"[..],
        );
        assert!(take_handshake_response(&mut ok).unwrap());
        assert_eq!(&ok[..], b"\x20\x02", "bytes after the header stay");

        let mut partial = BytesMut::from(&b"HTTP/1.1 101 Switching"[..]);
        assert!(!take_handshake_response(&mut partial).unwrap());

        let mut rejected = BytesMut::from(&b"HTTP/1.1 404 Not Found\r\n\r\n"[..]);
        let err = take_handshake_response(&mut rejected).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
    }
}
