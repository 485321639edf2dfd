//! Proof (issue 8) of how audience-sync treats bad input: the bad-input corpus for `load`,
//! `load-members` and `send` (files under `tests/corpus/`), and an upstream writer adding a
//! snapshot with plain SQL while a run plans. Run with `cargo test --test all proof_inputs::`.

mod concurrency;
pub mod corpus;
mod load_corpus;
mod send_corpus;
