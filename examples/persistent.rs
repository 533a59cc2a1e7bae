//! The quickstart with durable state: grants, history and rules kept in a
//! SQLite file in the current directory. Run it twice: the second run finds
//! what the first one shared.
//!
//! `cargo run --release --example persistent` (or pass another file path)

use chrono::Duration;
use grantwheel::requests::{HistoryQuery, ShareRequest, Sharing};
use grantwheel::store::SqliteStore;
use grantwheel::{Context, Engine, EntityId, Level, UserId};

/// Open the store at `path`, share once more, and say what it holds;
/// returns the number of live grants.
pub fn run(path: &std::path::Path) -> Result<usize, Box<dyn std::error::Error>> {
    // Opening loads what the file holds: live grants are indexed again,
    // grants that expired meanwhile are dropped and recorded as expired.
    let store = SqliteStore::open(path)?;
    let engine = Engine::builder().store(store).build()?;
    let sharing = Sharing::new(engine.clone());
    let lead = EntityId::lead(869196);
    let sales_user: UserId = "0203f172-8642-11e7-9bed-069b743e848f".parse()?;
    let earlier = sharing
        .history(&lead, &HistoryQuery::default())?
        .records
        .len();
    println!(
        "{}: opened {}: {} live grant(s), {earlier} history record(s) for {lead}",
        engine.now(),
        path.display(),
        engine.len(),
    );
    println!(
        "  {sales_user} can edit {lead}: {}",
        engine.can_edit(&sales_user, &lead)
    );

    // A share is written to the file before it is visible or acknowledged.
    let activity = Context::Activity(uuid::Uuid::new_v4());
    let outcome = sharing.share(
        ShareRequest::new(sales_user, lead, Level::Edit)
            .context(activity)
            .duration(Duration::minutes(30)),
    );
    println!(
        "  shared through a new activity: request {} {}",
        outcome.request,
        outcome.status.name()
    );
    assert!(engine.can_edit(&sales_user, &lead));
    let history = sharing.history(&lead, &HistoryQuery::default())?;
    println!(
        "  now {} live grant(s), {} history record(s); run again to see them come back",
        engine.len(),
        history.records.len()
    );
    Ok(engine.len())
}

/// Run against the path given, or `grantwheel-quickstart.db` here.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "grantwheel-quickstart.db".into());
    run(std::path::Path::new(&path))?;
    Ok(())
}
