use std::collections::BTreeMap;

use kube::core::watch::{Bookmark, BookmarkMeta};
use kube::core::{ListMeta, Status, TypeMeta};

use super::super::catch_up::CATCH_UP_TIMEOUT_SECS;
use super::*;

/// Stands for a watch stream: the machine only carries it from phase to phase.
#[derive(Debug, PartialEq)]
struct Stream;

fn machine() -> Machine {
    Machine::new(false, ("v1".into(), "ConfigMap".into()))
}

fn refusal(code: u16) -> kube::Error {
    kube::Error::Api(
        Status::failure("refused", "Refused")
            .with_code(code)
            .boxed(),
    )
}

fn object(uid: &str, rv: &str) -> RawObject {
    RawObject::from_json(format!(
        r#"{{"metadata":{{"name":"{uid}","uid":"{uid}","resourceVersion":"{rv}"}}}}"#
    ))
    .expect("json")
}

fn page(kind: &str, rv: &str, token: Option<&str>, items: Vec<RawObject>) -> ObjectList<RawObject> {
    ObjectList {
        types: TypeMeta {
            api_version: "v1".into(),
            kind: kind.into(),
        },
        metadata: ListMeta {
            resource_version: Some(rv.into()),
            continue_: token.map(str::to_owned),
            ..ListMeta::default()
        },
        items,
    }
}

fn bookmark(rv: &str, end_of_initial_events: bool) -> WatchEvent<RawObject> {
    let mut annotations = BTreeMap::new();
    if end_of_initial_events {
        annotations.insert(INITIAL_EVENTS_END.to_owned(), "true".to_owned());
    }
    WatchEvent::Bookmark(Bookmark {
        types: TypeMeta::default(),
        metadata: BookmarkMeta {
            resource_version: rv.into(),
            annotations,
        },
    })
}

fn failure(step: &Option<Step>) -> (FailureReason, bool) {
    match step {
        Some(Step::Failed(f)) => (f.reason, f.relist),
        other => panic!("not a failure: {other:?}"),
    }
}

fn after_backoff(phase: Phase<Stream>) -> Phase<Stream> {
    match phase {
        Phase::Backoff { next } => *next,
        _ => panic!("no backoff"),
    }
}

#[test]
fn the_start_decides_the_first_phase() {
    assert!(matches!(
        Phase::<Stream>::first(Start::List),
        Phase::List { consistent: false }
    ));
    assert!(matches!(
        Phase::<Stream>::first(Start::Resume(7)),
        Phase::Resume {
            from: Some(7),
            newest: 7
        }
    ));
    // A resume point above the table's newest row still bounds the server's history.
    assert!(matches!(
        Phase::<Stream>::first(Start::Checked {
            resume: Some(9),
            newest: 5
        }),
        Phase::Resume {
            from: Some(9),
            newest: 9
        }
    ));
    assert!(matches!(
        Phase::<Stream>::first(Start::Checked {
            resume: None,
            newest: 5
        }),
        Phase::Resume {
            from: None,
            newest: 5
        }
    ));
}

#[test]
fn a_server_behind_the_stored_history_lists_consistently() {
    let mut m = machine();
    let (step, next) = m.on_current::<Stream>(Some(10), 12, Ok(Some("11".into())));
    assert!(matches!(
        step,
        Some(Step::HistoryBehind {
            newest: 12,
            current: 11
        })
    ));
    assert!(matches!(next, Phase::List { consistent: true }));
}

#[test]
fn a_resume_watches_from_the_stored_point_and_catches_up_to_the_collection() {
    let mut m = machine();
    let (step, next) = m.on_current::<Stream>(Some(10), 10, Ok(Some("15".into())));
    assert!(step.is_none());
    assert!(matches!(
        next,
        Phase::ResumeWatch {
            from: 10,
            newest: 10,
            current: Some(15)
        }
    ));
    let params = m.watch_params(false, Instant::now());
    assert_eq!(
        params.timeout,
        Some(CATCH_UP_TIMEOUT_SECS),
        "short while catching up"
    );
    let (step, next) = m.on_resumed_watch(10, 10, Some(15), Ok(Stream));
    assert!(matches!(
        step,
        Some(Step::Resumed {
            from: 10,
            current: Some(15)
        })
    ));
    assert!(matches!(next, Phase::Watching { ref from, .. } if from == "10"));

    // The server shows it is past the collection's version: watches are long again.
    let (step, _) = m.on_watched(
        "10".into(),
        Stream,
        Ok(Some(bookmark("15", false))),
        Instant::now(),
    );
    assert!(matches!(step, Some(Step::Progress(15))));
    assert_eq!(
        m.watch_params(false, Instant::now()).timeout,
        Some(WATCH_TIMEOUT_SECS)
    );
}

#[test]
fn without_a_resume_point_a_checked_start_lists_from_the_cache() {
    let mut m = machine();
    let (step, next) = m.on_current::<Stream>(None, 10, Ok(Some("15".into())));
    assert!(step.is_none());
    assert!(matches!(next, Phase::List { consistent: false }));
}

#[test]
fn a_resume_the_server_no_longer_has_lists() {
    let mut m = machine();
    let (step, next) = m.on_resumed_watch::<Stream>(10, 10, Some(15), Err(refusal(410)));
    assert_eq!(failure(&step), (FailureReason::Expired, true));
    assert!(matches!(
        after_backoff(next),
        Phase::List { consistent: true }
    ));

    let (step, next) = m.on_resumed_watch::<Stream>(10, 10, Some(15), Err(refusal(500)));
    assert_eq!(failure(&step), (FailureReason::ApiError, false));
    assert!(matches!(
        after_backoff(next),
        Phase::Resume {
            from: Some(10),
            newest: 10
        }
    ));

    let (step, next) = m.on_current::<Stream>(Some(10), 10, Err(refusal(410)));
    assert_eq!(
        failure(&step),
        (FailureReason::Expired, false),
        "reading the collection's version retries as is"
    );
    assert!(matches!(after_backoff(next), Phase::Resume { .. }));
}

#[test]
fn a_server_without_streaming_lists_gets_pages_with_the_same_permit() {
    let mut m = Machine::new(true, ("v1".into(), "ConfigMap".into()));
    let (_, next) = m.on_permit::<Stream>(false, None);
    assert!(matches!(
        next,
        Phase::ListStreaming {
            consistent: false,
            ..
        }
    ));
    assert_eq!(Machine::streaming_list_from(false), "0");
    assert_eq!(Machine::streaming_list_from(true), "");
    let (step, next) = m.on_streaming_list::<Stream>(false, None, Err(refusal(422)));
    assert!(step.is_none());
    assert!(matches!(
        next,
        Phase::ListPaged {
            consistent: false,
            ..
        }
    ));
    let (_, next) = m.on_permit::<Stream>(true, None);
    assert!(
        matches!(
            next,
            Phase::ListPaged {
                consistent: true,
                ..
            }
        ),
        "for good"
    );

    let mut m = Machine::new(true, ("v1".into(), "ConfigMap".into()));
    let (step, next) = m.on_streaming_list::<Stream>(false, None, Err(refusal(503)));
    assert_eq!(failure(&step), (FailureReason::ApiError, true));
    assert!(matches!(
        after_backoff(next),
        Phase::List { consistent: false }
    ));
    let (step, next) = m.on_streaming_list(false, None, Ok(Stream));
    assert!(matches!(step, Some(Step::ListStarted { .. })));
    assert!(matches!(next, Phase::StreamingList { stream: Stream }));
}

#[test]
fn a_streaming_list_ends_at_its_bookmark_and_watches_on_the_same_stream() {
    let mut m = machine();
    let (step, next) = m.on_streamed(Stream, Ok(Some(WatchEvent::Added(object("a", "5")))));
    assert!(matches!(step, Some(Step::Listed(_))));
    assert!(matches!(next, Phase::StreamingList { .. }));
    let (step, next) = m.on_streamed(Stream, Ok(Some(bookmark("6", false))));
    assert!(
        step.is_none(),
        "a bookmark among initial events says nothing"
    );
    assert!(matches!(next, Phase::StreamingList { .. }));
    let (step, next) = m.on_streamed(Stream, Ok(Some(WatchEvent::Deleted(object("a", "5")))));
    assert!(step.is_none());
    assert!(matches!(next, Phase::StreamingList { .. }));
    let (step, next) = m.on_streamed(Stream, Ok(Some(bookmark("7", true))));
    assert!(matches!(
        step,
        Some(Step::ListDone {
            resource_version: Some(7)
        })
    ));
    assert!(matches!(next, Phase::Watching { ref from, stream: Stream } if from == "7"));
}

#[test]
fn a_streaming_list_that_breaks_is_void() {
    let mut m = machine();
    let (step, next) = m.on_streamed(Stream, Ok(None));
    assert_eq!(failure(&step), (FailureReason::Incomplete, true));
    assert!(matches!(
        after_backoff(next),
        Phase::List { consistent: true }
    ));
    let (step, _) = m.on_streamed(Stream, Ok(Some(bookmark("", true))));
    assert_eq!(failure(&step), (FailureReason::ApiError, true));
    let (step, _) = m.on_streamed(Stream, Err((FailureReason::Connection, "reset".into())));
    assert_eq!(failure(&step), (FailureReason::Connection, true));
    let (step, _) = m.on_streamed(
        Stream,
        Ok(Some(WatchEvent::Error(
            Status::failure("gone", "Expired").with_code(410).boxed(),
        ))),
    );
    assert_eq!(failure(&step), (FailureReason::Expired, true));
}

#[test]
fn a_paged_list_hands_out_its_pages_then_watches_from_its_version() {
    let mut m = machine();
    let first = page("SecretList", "20", Some("more"), vec![object("a", "3")]);
    let (step, next) = m.on_first_page::<Stream>(true, None, Ok(first));
    assert!(matches!(step, Some(Step::ListStarted { .. })));
    let Phase::Paging {
        items,
        continue_token,
        resource_version,
    } = next
    else {
        panic!("not paging")
    };
    let (step, next) = m.on_paging::<Stream>(items, continue_token, resource_version);
    let Some(Step::Listed(obj)) = step else {
        panic!("not listed")
    };
    assert_eq!(obj.api_version.as_deref(), Some("v1"));
    assert_eq!(obj.kind(), Some("Secret"), "the kind as the list spells it");
    let Phase::Paging {
        items,
        continue_token,
        resource_version,
    } = next
    else {
        panic!("not paging")
    };
    let (step, next) = m.on_paging::<Stream>(items, continue_token, resource_version);
    assert!(step.is_none());
    let Phase::NextPage {
        continue_token,
        resource_version,
    } = next
    else {
        panic!("no next page")
    };
    assert_eq!(
        (continue_token.as_str(), resource_version.as_str()),
        ("more", "20")
    );
    let last = page("SecretList", "21", Some(""), vec![]);
    let (step, next) = m.on_next_page::<Stream>(resource_version, Ok(last));
    assert!(step.is_none());
    let Phase::Paging {
        items,
        continue_token,
        resource_version,
    } = next
    else {
        panic!("not paging")
    };
    assert_eq!(continue_token, None, "an empty token ends the list");
    let (step, next) = m.on_paging::<Stream>(items, continue_token, resource_version);
    assert!(
        matches!(
            step,
            Some(Step::ListDone {
                resource_version: Some(20)
            })
        ),
        "the list's version is the first page's"
    );
    assert!(matches!(next, Phase::Watch { ref from } if from == "20"));
}

#[test]
fn a_paged_list_that_breaks_is_void() {
    let mut m = machine();
    let (step, next) = m.on_next_page::<Stream>("20".into(), Err(refusal(410)));
    assert_eq!(failure(&step), (FailureReason::Expired, true));
    assert!(matches!(
        after_backoff(next),
        Phase::List { consistent: true }
    ));
    let (step, next) = m.on_first_page::<Stream>(false, None, Ok(page("List", "", None, vec![])));
    assert_eq!(
        failure(&step),
        (FailureReason::ApiError, true),
        "no resourceVersion"
    );
    assert!(matches!(
        after_backoff(next),
        Phase::List { consistent: true }
    ));
    let (step, next) = m.on_first_page::<Stream>(false, None, Err(refusal(403)));
    assert_eq!(failure(&step), (FailureReason::Forbidden, true));
    assert!(matches!(
        after_backoff(next),
        Phase::List { consistent: false }
    ));
}

#[test]
fn a_watch_moves_on_with_its_events_and_watches_again_where_it_was() {
    let mut m = machine();
    let start = Instant::now();
    m.watch_params(false, start);
    let (step, next) = m.on_watched(
        "5".into(),
        Stream,
        Ok(Some(WatchEvent::Modified(object("a", "6")))),
        start,
    );
    assert!(matches!(step, Some(Step::Applied(_))));
    assert!(matches!(next, Phase::Watching { ref from, .. } if from == "6"));
    let (step, next) = m.on_watched(
        "6".into(),
        Stream,
        Ok(Some(WatchEvent::Deleted(object("a", "")))),
        start,
    );
    assert!(matches!(step, Some(Step::Deleted(_))));
    assert!(
        matches!(next, Phase::Watching { ref from, .. } if from == "6"),
        "an empty version would mean from now"
    );
    let (step, next) = m.on_watched("6".into(), Stream, Ok(Some(bookmark("", false))), start);
    assert!(step.is_none());
    assert!(matches!(next, Phase::Watching { ref from, .. } if from == "6"));
    let (step, next) = m.on_watched("6".into(), Stream, Ok(Some(bookmark("9", false))), start);
    assert!(matches!(step, Some(Step::Progress(9))));
    assert!(matches!(next, Phase::Watching { ref from, .. } if from == "9"));
    // Ended by the server after events: watch again at once.
    let (step, next) = m.on_watched("9".into(), Stream, Ok(None), start);
    assert!(step.is_none());
    assert!(matches!(next, Phase::Watch { ref from } if from == "9"));
    // A break re-watches after the backoff; a 410 relists.
    let (step, next) = m.on_watched(
        "9".into(),
        Stream,
        Err((FailureReason::Connection, "reset".into())),
        start,
    );
    assert_eq!(failure(&step), (FailureReason::Connection, false));
    assert!(matches!(after_backoff(next), Phase::Watch { ref from } if from == "9"));
    let gone = WatchEvent::Error(Status::failure("gone", "Expired").with_code(410).boxed());
    let (step, next) = m.on_watched("9".into(), Stream, Ok(Some(gone)), start);
    assert_eq!(failure(&step), (FailureReason::Expired, true));
    assert!(matches!(
        after_backoff(next),
        Phase::List { consistent: true }
    ));
    let (step, next) = m.on_watch_opened::<Stream>("9".into(), Err(refusal(410)));
    assert_eq!(failure(&step), (FailureReason::Expired, true));
    assert!(matches!(
        after_backoff(next),
        Phase::List { consistent: true }
    ));
}

#[test]
fn a_watch_that_ends_at_once_without_an_event_backs_off() {
    let mut m = machine();
    let start = Instant::now();
    m.watch_params(false, start);
    let (step, next) = m.on_watched("5".into(), Stream, Ok(None), start + SHORT_WATCH / 2);
    assert_eq!(failure(&step), (FailureReason::Connection, false));
    assert!(matches!(after_backoff(next), Phase::Watch { ref from } if from == "5"));
    m.watch_params(false, start);
    let (step, next) = m.on_watched("5".into(), Stream, Ok(None), start + SHORT_WATCH);
    assert!(
        step.is_none(),
        "a watch held open a while is a server timeout"
    );
    assert!(matches!(next, Phase::Watch { .. }));
}

#[test]
fn a_catching_up_watch_ended_at_its_deadline_is_caught_up() {
    let mut m = machine();
    let _ = m.on_current::<Stream>(Some(10), 10, Ok(Some("15".into())));
    let start = Instant::now();
    m.watch_params(false, start);
    let deadline = start + Duration::from_secs(u64::from(CATCH_UP_TIMEOUT_SECS));
    let (step, next) = m.on_watched("10".into(), Stream, Ok(None), deadline);
    assert!(matches!(step, Some(Step::Progress(15))));
    assert!(matches!(next, Phase::Watch { ref from } if from == "10"));
    assert_eq!(
        m.watch_params(false, deadline).timeout,
        Some(WATCH_TIMEOUT_SECS)
    );
}

#[test]
fn a_list_ends_the_catch_up() {
    let mut m = machine();
    let _ = m.on_current::<Stream>(Some(10), 10, Ok(Some("15".into())));
    let _ = m.on_permit::<Stream>(true, None);
    assert_eq!(
        m.watch_params(true, Instant::now()).timeout,
        Some(WATCH_TIMEOUT_SECS)
    );
}

#[test]
fn the_backoff_doubles_up_to_its_cap_and_resets_on_progress() {
    let mut m = machine();
    assert_eq!(m.backoff(), BACKOFF_MIN);
    for _ in 0..10 {
        let _ = m.backed_off(Phase::<Stream>::Watch { from: "1".into() });
    }
    assert_eq!(m.backoff(), BACKOFF_MAX);
    let _ = m.on_watched(
        "1".into(),
        Stream,
        Ok(Some(WatchEvent::Added(object("a", "2")))),
        Instant::now(),
    );
    assert_eq!(m.backoff(), BACKOFF_MIN, "an event resets it");
    let _ = m.backed_off(Phase::<Stream>::Watch { from: "1".into() });
    let _ = m.on_paging::<Stream>(VecDeque::new(), None, "3".into());
    assert_eq!(m.backoff(), BACKOFF_MIN, "a complete list resets it");
}
