//! `audience-sync demo`: the README's first command runs end to end and its own check passes.

use super::harness::Env;

#[test]
fn the_demo_runs_and_intercom_matches_the_snapshots() {
    let env = Env::new();
    let run = env.run(&["demo"]).success();
    for needle in [
        "1. Load the initial snapshots",
        "2. Initial sync",
        "4. Incremental sync",
        "Audience Entered",
        "Yes: every user's attributes, companies and events match the snapshots.",
    ] {
        assert!(
            run.stdout.contains(needle),
            "demo output lacks {needle:?}:\n{}",
            run.stdout
        );
    }
    assert!(
        !env.path("audience-sync.db").exists(),
        "the demo leaves no database behind"
    );
}
