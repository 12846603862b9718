//! The control half's checks: paused triggers and schedules, shared by two handles.

use serde_json::json;
use topiq_adapter::MessageId;

use super::{Stores, at, topic, trigger};
use crate::control::{CatchUp, ScheduleSpec};

fn unique(prefix: &str) -> String {
    let id = MessageId::generate().to_string().replace('-', "");
    format!("{prefix}-{}", &id[id.len() - 12..])
}

fn spec(cron: &str) -> ScheduleSpec {
    ScheduleSpec {
        cron: Some(cron.into()),
        every: None,
        timezone: Some("Europe/Berlin".into()),
        topic: topic(),
        data: json!({"kind": "nightly"}),
        catch_up: CatchUp::Last,
    }
}

pub(super) async fn a_pause_is_seen_by_every_instance_until_resumed(stores: Stores) {
    let name = trigger(&unique("mailer"));
    stores[0].pause_trigger(&name, at(10)).await.expect("pause");
    stores[0]
        .pause_trigger(&name, at(20))
        .await
        .expect("pause again");
    let paused = stores[1].paused_triggers().await.expect("paused");
    let mine: Vec<_> = paused.iter().filter(|p| p.trigger == name).collect();
    assert_eq!(mine.len(), 1, "{paused:?}");
    assert_eq!(
        mine[0].paused_at,
        at(10),
        "pausing again keeps the first time"
    );
    assert!(stores[1].resume_trigger(&name).await.expect("resume"));
    assert!(!stores[0].resume_trigger(&name).await.expect("resume again"));
    let paused = stores[0].paused_triggers().await.expect("paused");
    assert!(paused.iter().all(|p| p.trigger != name), "{paused:?}");
}

pub(super) async fn a_schedule_keeps_its_pause_and_tick_when_declared_again(stores: Stores) {
    let name = unique("nightly");
    let first = spec("0 2 * * *");
    stores[0]
        .put_schedule(&name, &first, true, at(0))
        .await
        .expect("put");
    assert!(
        stores[1]
            .set_schedule_paused(&name, true)
            .await
            .expect("pause")
    );
    assert!(
        stores[1]
            .advance_schedule(&name, at(30))
            .await
            .expect("tick")
    );
    let second = spec("0 3 * * *");
    stores[0]
        .put_schedule(&name, &second, true, at(60))
        .await
        .expect("put again");
    let all = stores[1].schedules().await.expect("schedules");
    let schedule = all.iter().find(|s| s.name == name).expect("stored");
    assert_eq!(schedule.spec, second);
    assert!(schedule.paused, "declared again, it stays paused");
    assert!(schedule.from_config);
    assert_eq!((schedule.last_tick, schedule.updated_at), (at(30), at(60)));
    assert!(
        !stores[0]
            .set_schedule_paused("none", true)
            .await
            .expect("none")
    );
    assert!(stores[0].delete_schedule(&name).await.expect("delete"));
    assert!(!stores[1].delete_schedule(&name).await.expect("deleted"));
    let all = stores[0].schedules().await.expect("schedules");
    assert!(all.iter().all(|s| s.name != name));
}

pub(super) async fn a_schedules_last_tick_only_moves_forward(stores: Stores) {
    let name = unique("every");
    let mut every = spec("unused");
    every.cron = None;
    every.every = Some("30s".into());
    stores[0]
        .put_schedule(&name, &every, false, at(0))
        .await
        .expect("put");
    let created = stores[1].schedules().await.expect("schedules");
    let created = created.iter().find(|s| s.name == name).expect("stored");
    assert_eq!(
        created.last_tick,
        at(0),
        "a new schedule starts at its creation"
    );
    assert!(!created.paused && !created.from_config);
    let (one, other) = (stores[0].clone(), stores[1].clone());
    let (later, earlier) = futures::join!(
        one.advance_schedule(&name, at(60)),
        other.advance_schedule(&name, at(30)),
    );
    let (later, earlier) = (later.expect("advance"), earlier.expect("advance"));
    assert!(later, "the later tick is recorded whatever came first");
    let all = stores[0].schedules().await.expect("schedules");
    let stored = all.iter().find(|s| s.name == name).expect("stored");
    assert_eq!(
        stored.last_tick,
        at(60),
        "earlier recorded first: {earlier}"
    );
    assert!(
        !stores[1]
            .advance_schedule(&name, at(60))
            .await
            .expect("same")
    );
    assert!(
        !stores[1]
            .advance_schedule("none", at(90))
            .await
            .expect("none")
    );
    stores[0].delete_schedule(&name).await.expect("delete");
}
