//! Sans-IO frame codec: bytes in, values out. No sockets, no tokio, fully deterministic.

use serde::{de::DeserializeOwned, Serialize};

/// Largest payload of one frame, in bytes. Checked on the length header *before* the
/// receiver allocates or buffers the payload, and on encode before anything is sent.
/// It bounds the largest tool result (e.g. a media file read as base64 is smaller than this
/// because the worker caps file reads well below it).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Largest packet written to the socket. `SOCK_SEQPACKET` datagrams must fit the socket
/// send buffer, so larger frames are split into packets of at most this size.
pub const MAX_PACKET: usize = 64 * 1024;

/// Size of the length header in front of every frame.
pub const FRAME_HEADER: usize = 4;

/// Everything that can go wrong turning bytes into messages or back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The length header announces a payload larger than the receiver's limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// announced or actual payload size
        len: usize,
        /// the limit in force
        max: usize,
    },
    /// A frame with an empty payload: never produced by a well-behaved peer.
    #[error("empty frame")]
    EmptyFrame,
    /// The payload is not a valid encoding of the expected message type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The payload decoded but bytes were left over.
    #[error("{0} trailing bytes after message")]
    TrailingBytes(usize),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
}

/// Encode one message as a complete frame (header + payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; FRAME_HEADER];
    let mut out = postcard::to_extend(msg, std::mem::take(&mut out))
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    let len = out.len() - FRAME_HEADER;
    if len > MAX_FRAME {
        return Err(CodecError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let header = u32::try_from(len)
        .map_err(|_| CodecError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        })?
        .to_le_bytes();
    out[..FRAME_HEADER].copy_from_slice(&header);
    Ok(out)
}

/// Decode one frame payload (without its header) into a message. The whole payload must be
/// consumed: trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    if payload.is_empty() {
        return Err(CodecError::EmptyFrame);
    }
    let (msg, rest) = postcard::take_from_bytes::<T>(payload)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Incremental frame reassembly. Feed it bytes as they arrive; take complete payloads out.
/// The buffered amount never exceeds `FRAME_HEADER + max` because the header is checked
/// against `max` before a single payload byte is kept.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME)
    }
}

impl FrameDecoder {
    /// A decoder that refuses payloads larger than `max` bytes (never more than [`MAX_FRAME`]).
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max.min(MAX_FRAME),
        }
    }

    fn announced(&self) -> Option<usize> {
        let h: [u8; FRAME_HEADER] = self.buf.get(..FRAME_HEADER)?.try_into().ok()?;
        Some(u32::from_le_bytes(h) as usize)
    }

    /// Append received bytes. Fails as soon as a header announces an oversized or empty frame,
    /// or when more bytes arrive than the current frame can hold before it is taken out.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), CodecError> {
        while !bytes.is_empty() {
            // Complete the header first, so the length is known before buffering payload.
            if self.buf.len() < FRAME_HEADER {
                let need = FRAME_HEADER - self.buf.len();
                let take = need.min(bytes.len());
                self.buf.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if let Some(len) = self.announced() {
                    if len > self.max {
                        return Err(CodecError::FrameTooLarge { len, max: self.max });
                    }
                    if len == 0 {
                        return Err(CodecError::EmptyFrame);
                    }
                    self.buf.reserve_exact(len);
                }
                continue;
            }
            let len = self.announced().unwrap_or(0);
            let have = self.buf.len() - FRAME_HEADER;
            if have >= len {
                // A complete frame is waiting; the caller must take it before pushing more.
                return Err(CodecError::FrameTooLarge {
                    len: have + bytes.len(),
                    max: len,
                });
            }
            let take = (len - have).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if !bytes.is_empty() {
                // Bytes beyond this frame in the same push: only allowed if they start the next
                // frame, which this simple decoder does not buffer. Packets never straddle frames.
                return Err(CodecError::Malformed(
                    "packet straddles a frame boundary".into(),
                ));
            }
        }
        Ok(())
    }

    /// Take the next complete payload, if any.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        let len = self.announced()?;
        if self.buf.len() - FRAME_HEADER < len {
            return None;
        }
        let payload = self.buf.split_off(FRAME_HEADER);
        self.buf.clear();
        Some(payload)
    }

    /// True when no partial frame is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
    }

    /// Call at end of stream: a partial frame is an error.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Truncated(self.buf.len()))
        }
    }
}

/// Split a complete frame into packets of at most [`MAX_PACKET`] bytes. Packets never
/// straddle two frames.
pub fn packets(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    frame.chunks(MAX_PACKET)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::messages::*;
    use proptest::prelude::*;

    fn roundtrip(msg: &BrokerToWorker) -> BrokerToWorker {
        let frame = encode(msg).unwrap();
        let mut d = FrameDecoder::default();
        for p in packets(&frame) {
            d.push(p).unwrap();
        }
        let payload = d.next_frame().unwrap();
        assert!(d.is_idle());
        decode(&payload).unwrap()
    }

    #[test]
    fn call_roundtrips() {
        let m = BrokerToWorker::Call {
            id: 7,
            tool: "read_text_file".into(),
            arguments_json: r#"{"path":"/x"}"#.into(),
            progress: true,
            input: Some(InputRound {
                client_caps_json: "{}".into(),
                responses_json: None,
                state: Some(vec![1, 2, 3]),
            }),
        };
        assert_eq!(roundtrip(&m), m);
    }

    #[test]
    fn large_frame_spans_packets_and_roundtrips() {
        let m = WorkerToBroker::Result {
            id: 1,
            result: ToolResult {
                content: vec![Content::Text {
                    text: "x".repeat(3 * MAX_PACKET + 17),
                }],
                structured_json: None,
                is_error: false,
                input_required: None,
            },
        };
        let frame = encode(&m).unwrap();
        assert!(frame.len() > 3 * MAX_PACKET);
        let mut d = FrameDecoder::default();
        let mut n = 0;
        for p in packets(&frame) {
            assert!(d.next_frame().is_none());
            d.push(p).unwrap();
            n += 1;
        }
        assert_eq!(n, 4);
        let back: WorkerToBroker = decode(&d.next_frame().unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn oversized_header_rejected_before_payload_is_buffered() {
        let mut d = FrameDecoder::new(1024);
        let err = d.push(&(1025u32).to_le_bytes()).unwrap_err();
        assert_eq!(
            err,
            CodecError::FrameTooLarge {
                len: 1025,
                max: 1024
            }
        );
        // The global maximum also applies to a decoder created with a larger limit.
        let mut d = FrameDecoder::new(usize::MAX);
        let err = d.push(&u32::MAX.to_le_bytes()).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { .. }));
    }

    #[test]
    fn oversized_message_refused_on_encode() {
        let m = WorkerToBroker::Result {
            id: 1,
            result: ToolResult {
                content: vec![Content::Text {
                    text: "y".repeat(MAX_FRAME + 1),
                }],
                structured_json: None,
                is_error: false,
                input_required: None,
            },
        };
        assert!(matches!(encode(&m), Err(CodecError::FrameTooLarge { .. })));
    }

    #[test]
    fn truncated_frame_detected_at_end_of_stream() {
        let frame = encode(&BrokerToWorker::Shutdown).unwrap();
        let mut d = FrameDecoder::default();
        d.push(&frame[..frame.len() - 1]).unwrap();
        assert!(d.next_frame().is_none());
        assert_eq!(d.finish(), Err(CodecError::Truncated(frame.len() - 1)));
        // A truncated payload handed to decode is malformed, never a panic.
        let m = BrokerToWorker::Call {
            id: 1,
            tool: "t".into(),
            arguments_json: "{}".into(),
            progress: false,
            input: None,
        };
        let frame = encode(&m).unwrap();
        for cut in 1..frame.len() - FRAME_HEADER {
            let r = decode::<BrokerToWorker>(&frame[FRAME_HEADER..FRAME_HEADER + cut]);
            assert!(r.is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn empty_and_trailing_bytes_rejected() {
        let mut d = FrameDecoder::default();
        assert_eq!(d.push(&0u32.to_le_bytes()), Err(CodecError::EmptyFrame));
        let frame = encode(&BrokerToWorker::Shutdown).unwrap();
        let mut payload = frame[FRAME_HEADER..].to_vec();
        payload.push(0);
        assert_eq!(
            decode::<BrokerToWorker>(&payload),
            Err(CodecError::TrailingBytes(1))
        );
    }

    #[test]
    fn packet_straddling_frames_rejected() {
        let mut two = encode(&BrokerToWorker::Shutdown).unwrap();
        two.extend(encode(&BrokerToWorker::Shutdown).unwrap());
        let mut d = FrameDecoder::default();
        assert!(d.push(&two).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<WorkerToBroker>(&bytes);
            let _ = decode::<BrokerToWorker>(&bytes);
            let mut d = FrameDecoder::new(256);
            if d.push(&bytes).is_ok() {
                if let Some(p) = d.next_frame() {
                    let _ = decode::<WorkerToBroker>(&p);
                }
            }
        }

        #[test]
        fn calls_roundtrip(id in any::<u64>(), tool in "[a-z_]{1,40}", args in ".{0,300}", progress in any::<bool>()) {
            let m = BrokerToWorker::Call { id, tool, arguments_json: args, progress, input: None };
            prop_assert_eq!(roundtrip(&m), m);
        }

        #[test]
        fn results_roundtrip(id in any::<u64>(), text in ".{0,2000}", data in proptest::collection::vec(any::<u8>(), 0..2000), is_error in any::<bool>()) {
            let m = WorkerToBroker::Result { id, result: ToolResult {
                content: vec![Content::Text { text }, Content::Image { data, mime_type: "image/png".into() }],
                structured_json: Some("{}".into()), is_error, input_required: None } };
            let frame = encode(&m).unwrap();
            let mut d = FrameDecoder::default();
            for p in packets(&frame) { d.push(p).unwrap(); }
            let back: WorkerToBroker = decode(&d.next_frame().unwrap()).unwrap();
            prop_assert_eq!(back, m);
        }
    }
}
