//! Faults injected into a running server, with figures: uploads cut off at random points,
//! clients that vanish mid-command, SIGTERM during transfers, and masses of idle connections.
//!
//! Sizes are small here (seconds each); `bench/soak` runs the same code at length through the
//! `FERRY_SOAK_*` variables and prints the figures as a table.

#[path = "../common/mod.rs"]
mod common;
mod idle;
mod procs;
mod raw;
mod served;
mod sigterm;
mod uploads;

use raw::{figure, scale};

#[tokio::test(flavor = "multi_thread")]
async fn uploads_cut_off_leave_no_partial_file() {
    let n = scale("UPLOADS", 21);
    let (bad, left) = uploads::run(n).await;
    let note = format!("{bad} partial or corrupt under a final name, {left} temp files left");
    figure(
        "uploads cut off (TCP put, HTTP PUT, PATCH)",
        n,
        bad + left,
        0,
        &note,
    );
    assert_eq!((bad, left), (0, 0), "{note}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_and_disconnects_leave_no_process() {
    let (n_exec, n_disc) = (scale("EXECS", 50), scale("DISCONNECTS", 10));
    let (left, failed) = procs::run(n_exec, n_disc).await;
    let note = format!("{left} zombies or orphans left, {failed} operations failed");
    figure(
        "execs + disconnects mid-command",
        n_exec + n_disc,
        left + failed,
        0,
        &note,
    );
    assert_eq!((left, failed), (0, 0), "{note}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_transfers_is_clean() {
    let n = scale("TRANSFERS", 20);
    let (bad, note) = sigterm::run(n, 3).await;
    figure("SIGTERM during transfers", n, bad, 0, &note);
    assert_eq!(bad, 0, "{note}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_all_closed() {
    let (n, rounds) = (scale("IDLE", 200), scale("IDLE_ROUNDS", 2));
    let (bad, note) = idle::run(n, rounds).await;
    let fault = format!("idle connections ({rounds} rounds)");
    figure(&fault, rounds * n, bad, 0, &note);
    assert_eq!(bad, 0, "{note}");
}
