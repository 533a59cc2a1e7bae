//! Share a lead for 30 minutes, check it, watch it expire.
//!
//! `cargo run --release --example quickstart`

use chrono::{Duration, TimeZone, Utc};
use grantwheel::{Context, Engine, EntityId, Event, Expiry, Level, ManualClock, UserId};

use std::sync::Arc;

/// Run the example, printing each line.
pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(Arc::new(|line: &str| println!("{line}")))
}

/// The example, writing each line it prints to `say`.
pub fn run(say: Arc<dyn Fn(&str) + Send + Sync>) -> Result<(), Box<dyn std::error::Error>> {
    // A manual clock, so the example can move time; hosts use the system
    // clock (the default).
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap());
    let engine = Engine::builder()
        .clock(clock.clone())
        .warn_before([Duration::minutes(5)])
        .build()?;
    let events = say.clone();
    engine.subscribe(move |event: &Event| match event {
        Event::Granted(g) => events(&format!(
            "  event: granted {} until {}",
            g.id.entity, g.expires_at
        )),
        Event::ExpiringSoon { grant, .. } => events(&format!(
            "  event: {} expires soon, at {}",
            grant.id.entity, grant.expires_at
        )),
        Event::Expired(g) => events(&format!("  event: expired {}", g.id.entity)),
        other => events(&format!("  event: {other:?}")),
    });

    // The share API's example: lead 869196 shared with a sales user through
    // an activity, with write access, for 30 minutes.
    let sales_user: UserId = "0203f172-8642-11e7-9bed-069b743e848f".parse()?;
    let lead = EntityId::lead(869196);
    let activity = Context::Activity("f2dbf1d5-bbab-418b-bddc-4c92ecdef214".parse()?);

    say(&format!(
        "{}: share {} with {sales_user} (edit, 30 minutes)",
        engine.now(),
        lead
    ));
    let grant = engine.share(
        sales_user,
        lead,
        activity,
        Level::Edit,
        Expiry::After(Duration::minutes(30)),
    )?;
    say(&format!(
        "{}: can read: {}, can edit: {}",
        engine.now(),
        engine.can_read(&sales_user, &lead),
        engine.can_edit(&sales_user, &lead)
    ));
    assert!(engine.can_edit(&sales_user, &lead));

    clock.advance(Duration::minutes(26));
    engine.advance();
    say(&format!(
        "{}: 26 minutes later, can edit: {}",
        engine.now(),
        engine.can_edit(&sales_user, &lead)
    ));

    clock.advance(Duration::minutes(4));
    say(&format!(
        "{}: at the expiry ({}), can read: {} (before any reclaiming)",
        engine.now(),
        grant.expires_at,
        engine.can_read(&sales_user, &lead)
    ));
    assert!(!engine.can_read(&sales_user, &lead));

    let reclaimed = engine.advance();
    say(&format!(
        "{}: advance reclaimed {reclaimed} grant(s); {} held",
        engine.now(),
        engine.len()
    ));
    assert_eq!(reclaimed, 1);
    Ok(())
}
