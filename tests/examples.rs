//! The examples the README points to run as tests, so they cannot rot.

#[allow(dead_code)]
#[path = "../examples/quickstart.rs"]
mod quickstart;

#[test]
fn quickstart_runs() {
    quickstart::main().expect("the quickstart runs to the end");
}
