//! What operators set at run time that every instance follows, kept in the runs store:
//! paused triggers (`pauses.rs`).

mod pauses;

pub(crate) use pauses::Pauses;
