//! `GET /api/v1/workers/schedules`: the registered schedules with their next fire times.

use axum::Json;
use axum::extract::State;

use crate::runtime::Runtime;
use crate::scheduler::ScheduleInfo;

/// Every schedule registered with `#[scheduled]`, by id: expression, timezone, tags and the
/// next five fire times from the runtime's clock.
pub(super) async fn list_schedules(State(rt): State<Runtime>) -> Json<Vec<ScheduleInfo>> {
    let now = rt.clock().now();
    Json(rt.schedules().iter().filter_map(|s| ScheduleInfo::of(s, now)).collect())
}
