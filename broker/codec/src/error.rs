//! Decoding errors, each with the MQTT 5.0 reason code it maps to.

use thiserror::Error;

use crate::reason::ReasonCode;

/// A packet that cannot be accepted. "Need more bytes" is not an error:
/// [`crate::decode`] returns `Ok(None)` for it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes do not follow the packet format (reason code 0x81).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// The bytes parse, but break a rule of the protocol (reason code 0x82).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The packet is larger than the receiver's Maximum Packet Size (0x95).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: u64, max: u32 },
    /// CONNECT names a protocol name or level this codec does not speak
    /// (0x84, or 3.1.1 return code 1).
    #[error("unsupported protocol: name {name:?}, level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    /// A Topic Name with a wildcard or otherwise invalid (0x90).
    #[error("invalid topic name: {0}")]
    TopicNameInvalid(String),
    /// A Topic Alias of 0 or above the receiver's maximum (0x94).
    #[error("invalid topic alias {alias}: aliases run from 1 to {max}")]
    TopicAliasInvalid { alias: u16, max: u16 },
}

impl DecodeError {
    /// The reason code a DISCONNECT or CONNACK reporting this error carries.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
            DecodeError::TopicAliasInvalid { .. } => ReasonCode::TOPIC_ALIAS_INVALID,
        }
    }
}
