//! CoreMQ per-core engine.
