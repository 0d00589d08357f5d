//! `crmprof run`: a profile document per interval, appended to the data directory.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::time::Duration;

use integration_tests::{Agent, Scratch, privileged, validate_profile};

#[test]
fn run_appends_a_profile_per_interval() {
    if !privileged("run_appends_a_profile_per_interval") {
        return;
    }
    let scratch = Scratch::new("run");
    let data = scratch.0.join("data");
    let data_arg = data.to_str().expect("UTF-8 path");
    let agent = Agent::start(&["run", "--interval", "1s", "--data-dir", data_arg]);
    // The live summary goes to stdout; wait for three windows on the file.
    let file = data.join("profiles.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let lines = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count();
        if lines >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stdout = agent.interrupt_and_output();
    assert!(
        stdout.contains("services"),
        "live summary missing:\n{stdout}"
    );
    let text = std::fs::read_to_string(&file).expect("profiles.jsonl written");
    let docs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON document"))
        .collect();
    assert!(
        docs.len() >= 3,
        "expected at least 3 windows, got {}",
        docs.len()
    );
    let mut any_busy = false;
    for doc in &docs {
        validate_profile(doc);
        any_busy |= doc["services"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| !s["syscalls"].as_array().is_some_and(Vec::is_empty))
        });
    }
    assert!(
        any_busy,
        "auto-discovery profiled no process making syscalls"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "profiles are private to the agent's user");
}
