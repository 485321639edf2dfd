//! The diff engine and Personas emitter: newest snapshots against planned state, to messages in the outbox.
