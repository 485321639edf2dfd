//! Command-line tests: the real binary against a real SQLite file in a fresh temporary directory.

mod cli {
    mod broken_pipe;
    mod compute;
    mod daemon;
    mod demo;
    mod disk_full;
    pub mod harness;
    mod load;
    mod prune;
    mod sandbox;
    mod settings;
    mod status;
}
