//! Command-line tests: the real binary against a real SQLite file in a fresh temporary directory.

mod broken_pipe;
mod compute;
mod daemon;
mod demo;
mod disk_full;
mod load;
mod prune;
mod sandbox;
mod settings;
mod status;
