//! CoreMQ durability: the message log and the `Store` trait behind it.
