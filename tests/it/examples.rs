//! The examples the README points to run as tests, so they cannot rot.

#[path = "../../examples/quickstart.rs"]
mod quickstart;

#[cfg(feature = "sqlite")]
#[expect(dead_code, reason = "the example's main is not called here")]
#[path = "../../examples/persistent.rs"]
mod persistent;

#[test]
fn quickstart_runs() {
    quickstart::main().expect("the quickstart runs to the end");
}

#[test]
fn quickstart_names_each_record_once() {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    quickstart::run(std::sync::Arc::new(move |l: &str| {
        sink.lock().unwrap().push(l.to_string())
    }))
    .unwrap();
    let text = lines.lock().unwrap().join("\n");
    assert!(text.contains(": share lead:869196 with "), "{text}");
    assert!(!text.contains("lead lead"), "{text}");
    assert!(text.contains("advance reclaimed 1 grant(s)"), "{text}");
}

#[cfg(feature = "sqlite")]
#[test]
fn persistent_quickstart_keeps_its_grants_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quickstart.db");
    assert_eq!(persistent::run(&path).unwrap(), 1);
    // The second run finds the first run's grant and adds its own.
    assert_eq!(persistent::run(&path).unwrap(), 2);
}
