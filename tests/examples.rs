//! The examples the README points to run as tests, so they cannot rot.

#[allow(dead_code)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

#[allow(dead_code)]
#[path = "../examples/persistent.rs"]
mod persistent;

#[test]
fn quickstart_runs() {
    quickstart::main().expect("the quickstart runs to the end");
}

#[test]
fn persistent_quickstart_keeps_its_grants_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quickstart.db");
    assert_eq!(persistent::run(&path).unwrap(), 1);
    // The second run finds the first run's grant and adds its own.
    assert_eq!(persistent::run(&path).unwrap(), 2);
}
