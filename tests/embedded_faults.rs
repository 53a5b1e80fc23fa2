//! The embedded store on a disk that fills up or a file system that is read-only (issue 8):
//! a clear error that names the condition and the file, no panic, no tight error loop,
//! nothing committed lost, a file that passes `PRAGMA integrity_check`, and writes that
//! succeed again once the disk has room or the directory is writable.
//!
//! ```text
//! cargo test --all-features --test embedded_faults
//! ```
//!
//! Each case runs a real [`Runtime`] whose data directory is a small tmpfs mounted for the
//! case (`mount -t tmpfs -o size=…`), so it needs root (or `CAP_SYS_ADMIN`). Linux refuses
//! `remount,ro` while the store holds its file open for writing, so the case of a directory
//! turning read-only under a running store uses what does do that: a loop-mounted ext4
//! image mounted `errors=remount-ro`, made to fail (reported as not run where there is no
//! loop device). The kernel keeps such a mount read-only until it is unmounted, so that
//! case recovers with a fsck, a fresh mount and a new runtime on the same file. Without
//! mount permission, the
//! disk-full case runs in a child process under a file size limit (`RLIMIT_FSIZE`, set with
//! `prlimit`) instead, and the read-only cases are reported as not run: the binary says so
//! on stdout and never passes silently. `NETSCRIPT_TEST_FAULTS_RLIMIT=1` forces that path.
//!
//! The cases count the process's log events and job runs in statics, so they run one after
//! another inside one test; the fallback's child is this very binary, running the ignored
//! test `rlimit_child`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netscript::prelude::*;
use netscript::store::ExecutionFilter;
use netscript::{ExecutionId, ExecutionStatus, QueueProvider};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The store's file in its data directory.
const FILE_NAME: &str = "netscript.db";
/// Set in the fallback child: the data directory to fill under `RLIMIT_FSIZE`.
const CHILD_DIR: &str = "NETSCRIPT_TEST_FAULTS_CHILD_DIR";
/// Forces the `RLIMIT_FSIZE` fallback even where mounting works.
const FORCE_RLIMIT: &str = "NETSCRIPT_TEST_FAULTS_RLIMIT";

/// Times each job ran, by its number.
static RUNS: Mutex<Option<HashMap<u32, u32>>> = Mutex::new(None);

/// Records that it ran. The payload carries filler so the queue fills faster.
#[job(id = "faults-note", retries = 3, timeout = "30s")]
async fn note(job: Note) -> JobResult<u32> {
    *RUNS.lock().unwrap().get_or_insert_with(HashMap::new).entry(job.n).or_default() += 1;
    Ok(job.n)
}

/// The payload of [`note`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Note {
    n: u32,
    filler: String,
}

fn job(n: u32) -> EnqueueJob<Note> {
    note::enqueue(Note { n, filler: "x".repeat(512) })
}

/// Opened once the disk is full: the [`gate`] jobs running then end on the full disk.
static GATE: AtomicBool = AtomicBool::new(false);

/// Records that it ran, then waits for [`GATE`] (at most 20 s).
#[job(id = "faults-gate", retries = 3, timeout = "30s")]
async fn gate(n: u32) -> JobResult<u32> {
    *RUNS.lock().unwrap().get_or_insert_with(HashMap::new).entry(n).or_default() += 1;
    let until = Instant::now() + Duration::from_secs(20);
    while !GATE.load(Ordering::SeqCst) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(n)
}

fn runs() -> HashMap<u32, u32> {
    RUNS.lock().unwrap().clone().unwrap_or_default()
}

/// Warnings and errors logged by the process, and a sample of them.
static LOGGED: AtomicUsize = AtomicUsize::new(0);
static LOG_SAMPLE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Panics anywhere in the process (the default hook still prints them).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts WARN and ERROR events.
struct CountWarnings;

impl<S: Subscriber> Layer<S> for CountWarnings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() <= Level::WARN {
            LOGGED.fetch_add(1, Ordering::SeqCst);
            let mut sample = LOG_SAMPLE.lock().unwrap();
            if sample.len() < 200 {
                let mut text = String::new();
                event.record(&mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                    text.push_str(&format!("{}={value:?} ", field.name()));
                });
                sample.push(format!("{} {}", event.metadata().level(), text));
            }
        }
    }
}

/// A tmpfs mounted on a fresh temporary directory; unmounted when dropped, even when the
/// case panics.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        sh("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &dir.path().display().to_string()])?;
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `mount -o remount,<mode>`; the error is mount's message.
    fn remount(&self, mode: &str) -> Result<(), String> {
        sh("mount", &["-o", &format!("remount,{mode}"), &self.path().display().to_string()])
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.path().display().to_string();
        if sh("umount", &[&path]).is_err() {
            // Still busy (a case failed with the store open): detach it now, freed when closed.
            let _ = sh("umount", &["-l", &path]);
        }
    }
}

fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

async fn open(dir: &Path) -> Result<Runtime, netscript::StartupError> {
    Runtime::builder()
        .ignore_env()
        .provider(QueueProvider::Embedded)
        .data_dir(dir)
        .configure(|c| {
            c.concurrency = 4;
            // Short leases, so a run whose record could not be written comes back soon.
            c.lease = Duration::from_secs(2);
        })
        .build()
        .await
}

/// Fills the file system holding `dir` with a file, to the last byte it accepts.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    // The last partial block: byte by byte.
    while file.write_all(&[0]).is_ok() {}
    let _ = file.sync_all();
    path
}

/// `PRAGMA integrity_check` on the store's file, from a connection of its own.
fn integrity(dir: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(dir.join(FILE_NAME), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.join("; ")
}

/// Waits until every execution in `ids` succeeded; panics naming the first that did not.
async fn all_succeed(rt: &Runtime, ids: &[ExecutionId]) {
    for &id in ids {
        let r = rt.wait_for(id, Duration::from_secs(60)).await.unwrap();
        let r = r.unwrap_or_else(|| panic!("execution {id} has no record"));
        assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    }
}

/// Enqueues one job at a time until the store refuses; the accepted receipts and the error.
async fn enqueue_until_refused(rt: &Runtime, from: u32, limit: u32) -> (Vec<(u32, ExecutionId)>, String) {
    let mut accepted = Vec::new();
    for n in from..from + limit {
        match rt.enqueue(job(n)).await {
            Ok(r) => accepted.push((n, r.execution_id)),
            Err(e) => return (accepted, e.to_string()),
        }
    }
    panic!("the store accepted {limit} enqueues on a full disk and never refused one");
}

/// Case 1: the disk fills up under a running worker, then space returns.
async fn disk_full() {
    let fs = Tmpfs::mount("2m").unwrap();
    let dir = fs.path().join("data");
    let rt = open(&dir).await.unwrap();

    // Accepted before the disk fills and due only once it is full: they wait through it.
    let receipts = rt.enqueue_many((0..20).map(|n| job(n).delay(Duration::from_secs(2))).collect()).await.unwrap();
    let before: Vec<(u32, ExecutionId)> = (0..20).zip(receipts.iter().map(|r| r.execution_id)).collect();
    // Two jobs running when the disk fills: they end on the full disk.
    let workers = rt.spawn_workers();
    let receipts = rt.enqueue_many(vec![gate::enqueue(100), gate::enqueue(101)]).await.unwrap();
    let running: Vec<(u32, ExecutionId)> = (100..102).zip(receipts.iter().map(|r| r.execution_id)).collect();
    while runs().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let filler = fill(fs.path());
    // The WAL reuses the room it already has, so a few enqueues may still fit: go on until
    // the store refuses.
    let (squeezed, error) = enqueue_until_refused(&rt, 1000, 5000).await;
    println!("  disk full after {} more enqueues: {error}", squeezed.len());
    assert!(error.contains("is full"), "the error names the condition: {error}");
    assert!(error.contains(&dir.join(FILE_NAME).display().to_string()), "and the file: {error}");
    assert!(!error.contains("SQLITE_") && !error.contains("code 13"), "no raw SQLite code: {error}");

    // The running jobs end, the delayed ones fall due: the workers go on for a while on the
    // full disk, with no panic and a bounded log rate.
    let logged_before = LOGGED.load(Ordering::SeqCst);
    GATE.store(true, Ordering::SeqCst);
    let window = Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let logged = LOGGED.load(Ordering::SeqCst) - logged_before;
    println!("  {logged} warnings/errors logged in {window:?} of a full disk with workers running:");
    for line in &LOG_SAMPLE.lock().unwrap()[logged_before.min(200)..] {
        println!("    {line}");
    }
    println!("  runs during the full disk: {:?}", runs());
    assert!(rt.enqueue(job(9999)).await.is_err(), "the disk is still full");
    assert!(logged <= 100, "no tight error loop: {logged} events in {window:?}: {:?}", LOG_SAMPLE.lock().unwrap());
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "nothing panicked");
    assert!(!workers.is_finished(), "the workers keep running on a full disk");
    assert_eq!(integrity(&dir), "ok", "the file is intact on the full disk");

    // Space returns: the same runtime accepts, claims and runs again.
    std::fs::remove_file(&filler).unwrap();
    let receipts = rt.enqueue_many((2000..2020).map(job).collect()).await.unwrap();
    let after: Vec<(u32, ExecutionId)> = (2000..2020).zip(receipts.iter().map(|r| r.execution_id)).collect();
    let accepted: Vec<(u32, ExecutionId)> =
        before.iter().chain(&running).chain(&squeezed).chain(&after).copied().collect();
    all_succeed(&rt, &accepted.iter().map(|(_, id)| *id).collect::<Vec<_>>()).await;
    let report = workers.stop().await;
    println!("  workers: {report:?}");

    // Every accepted job ran, the waiting ones exactly once; nothing else is in the store.
    let runs = runs();
    println!(
        "  runs of the jobs that were running when the disk filled: {:?}",
        running.iter().map(|(n, _)| (n, runs.get(n))).collect::<Vec<_>>()
    );
    let waited = before.iter().chain(&squeezed).chain(&after);
    let wrong: Vec<_> = waited.filter(|(n, _)| runs.get(n) != Some(&1)).collect();
    assert!(wrong.is_empty(), "every job that waited runs exactly once: {wrong:?} ran {runs:?}");
    let records = rt.store().list(&ExecutionFilter::default()).await.unwrap();
    let unfinished: Vec<_> = records.iter().filter(|r| r.status != ExecutionStatus::Succeeded).collect();
    assert!(unfinished.is_empty(), "refused enqueues leave no records behind: {unfinished:?}");
    assert_eq!(records.len(), accepted.len(), "one record per accepted enqueue");
    let s = rt.queue().stats().await.unwrap();
    assert_eq!((s.ready, s.leased, s.dead), (0, 0, 0), "{s:?}");
    drop(rt);
    assert_eq!(integrity(&dir), "ok", "the file is intact after recovery");
    println!(
        "  {} jobs accepted ({} waiting, {} running, {} squeezed in, {} after), all succeeded",
        accepted.len(),
        before.len(),
        running.len(),
        squeezed.len(),
        after.len()
    );
}

/// Case 2a: a runtime built on a read-only file system fails at startup, naming the path.
async fn read_only_at_startup() {
    let fs = Tmpfs::mount("4m").unwrap();
    // An existing store, and a directory with none yet.
    let existing = fs.path().join("existing");
    let empty = fs.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let id = {
        let rt = open(&existing).await.unwrap();
        rt.enqueue(job(3000)).await.unwrap().execution_id
    };
    fs.remount("ro").unwrap();
    for dir in [&existing, &empty, &fs.path().join("missing")] {
        let error = open(dir).await.err().unwrap_or_else(|| panic!("a runtime started on read-only {}", dir.display()));
        let text = error.to_string();
        println!("  read-only {}: {text}", dir.display());
        assert!(text.contains(&dir.display().to_string()), "the error names the path: {text}");
        assert!(text.contains("read-only"), "and says it is read-only: {text}");
        assert!(!text.contains("unable to open database file"), "not SQLite's raw message: {text}");
    }
    fs.remount("rw").unwrap();
    assert_eq!(integrity(&existing), "ok");
    let rt = open(&existing).await.unwrap();
    let workers = rt.spawn_workers();
    all_succeed(&rt, &[id]).await;
    workers.stop().await;
    assert_eq!(runs().get(&3000), Some(&1));
}

/// Case 2b: the directory of a running runtime is remounted read-only, then read-write.
///
/// Linux refuses `remount,ro` while any file of the mount is open for writing (`EBUSY`),
/// and the store keeps its file open for writing as long as it runs: a running store
/// cannot be switched read-only under it. The case shows that refusal, and that the store
/// goes on working; the read-only refusals of writes themselves are covered by case 2a
/// (same mapping of the same SQLite errors).
async fn read_only_while_running() {
    let fs = Tmpfs::mount("4m").unwrap();
    let dir = fs.path().join("data");
    let rt = open(&dir).await.unwrap();
    let workers = rt.spawn_workers();
    let first = rt.enqueue(job(4000)).await.unwrap().execution_id;
    all_succeed(&rt, &[first]).await;
    match fs.remount("ro") {
        Err(e) => {
            println!("  remount,ro of a running store's directory refused by the kernel: {e}");
            assert!(e.contains("busy"), "{e}");
        }
        Ok(()) => {
            // A kernel that allows it: writes fail with a clear error, then recover.
            let error = rt.enqueue(job(4001)).await.expect_err("an enqueue on a read-only store fails").to_string();
            println!("  enqueue on a store remounted read-only: {error}");
            assert!(error.contains("read-only"), "{error}");
            fs.remount("rw").unwrap();
        }
    }
    let second = rt.enqueue(job(4002)).await.unwrap().execution_id;
    all_succeed(&rt, &[second]).await;
    workers.stop().await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    drop(rt);
    assert_eq!(integrity(&dir), "ok");
}

/// An ext4 file system in a loop-mounted image, mounted `errors=remount-ro`: the way a
/// real disk turns read-only under a running process (the kernel's emergency read-only on
/// an error, which `remount,ro` cannot do while files are open for writing). Unmounted when
/// dropped.
struct Ext4 {
    dir: tempfile::TempDir,
}

impl Ext4 {
    fn image(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn create() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let fs = Self { dir };
        std::fs::create_dir(fs.mount_point()).map_err(|e| e.to_string())?;
        let image = fs.image().display().to_string();
        sh("truncate", &["-s", "16M", &image])?;
        // No journal: after the emergency read-only, a fsck and a fresh mount bring it back.
        sh("mkfs.ext4", &["-q", "-O", "^has_journal", &image])?;
        fs.mount()?;
        Ok(fs)
    }

    fn mount(&self) -> Result<(), String> {
        let (image, mount_point) = (self.image().display().to_string(), self.mount_point().display().to_string());
        sh("mount", &["-o", "loop,errors=remount-ro", &image, &mount_point])
    }

    /// Unmounts, waiting up to 10 s for the last handles on the store to close (tasks of a
    /// dropped runtime end on their own schedule).
    fn unmount(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match sh("umount", &[&self.mount_point().display().to_string()]) {
                Err(e) if e.contains("busy") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Makes the kernel record a file system error, which `errors=remount-ro` answers by
    /// switching the mount read-only at once, open files included.
    fn fail(&self) -> Result<(), String> {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(self.mount_point())
            .output()
            .map_err(|e| format!("findmnt: {e}"))?;
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let name = device.rsplit('/').next().unwrap_or_default().to_owned();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "netscript test: turn read-only\n")
            .map_err(|e| format!("trigger_fs_error on {device}: {e}"))
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.unmount().is_err() {
            let _ = sh("umount", &["-l", &self.mount_point().display().to_string()]);
        }
    }
}

/// Case 2c: the file system of a running store turns read-only (ext4's emergency
/// read-only): writes fail with an error that says so, the workers go on without panicking
/// or spinning; after a fsck and a read-write mount, a new runtime on the same file runs
/// every accepted job exactly once.
async fn read_only_while_running_ext4() {
    let fs = match Ext4::create() {
        Ok(fs) => fs,
        Err(e) => {
            println!("  NOT RUN: no loop-mounted ext4 here ({e})");
            return;
        }
    };
    let dir = fs.mount_point().join("data");
    let waiting: Vec<ExecutionId>;
    {
        let rt = open(&dir).await.unwrap();
        let workers = rt.spawn_workers();
        let receipts = rt.enqueue_many((5000..5010).map(job).collect()).await.unwrap();
        all_succeed(&rt, &receipts.iter().map(|r| r.execution_id).collect::<Vec<_>>()).await;
        workers.stop().await;
        // Accepted while no worker runs; they wait through the read-only spell.
        let receipts = rt.enqueue_many((5100..5110).map(job).collect()).await.unwrap();
        waiting = receipts.iter().map(|r| r.execution_id).collect();
        sh("sync", &[]).unwrap();

        fs.fail().unwrap();
        let error = rt.enqueue(job(5200)).await.expect_err("an enqueue on a read-only disk fails").to_string();
        println!("  enqueue after the file system turned read-only: {error}");
        assert!(error.contains("read-only"), "the error says read-only: {error}");
        assert!(error.contains(&dir.join(FILE_NAME).display().to_string()), "and names the file: {error}");

        let logged_before = LOGGED.load(Ordering::SeqCst);
        let workers = rt.spawn_workers();
        let window = Duration::from_secs(4);
        tokio::time::sleep(window).await;
        let logged = LOGGED.load(Ordering::SeqCst) - logged_before;
        println!("  {logged} warnings/errors logged in {window:?} on a read-only disk with workers running:");
        for line in &LOG_SAMPLE.lock().unwrap()[logged_before.min(200)..] {
            println!("    {line}");
        }
        assert!(logged <= 100, "no tight error loop: {logged} events: {:?}", LOG_SAMPLE.lock().unwrap());
        assert!(!workers.is_finished(), "the workers keep running on a read-only disk");
        workers.stop().await;
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "nothing panicked");
    }
    // The operator's way back: unmount, check, mount read-write.
    fs.unmount().unwrap();
    let fsck = Command::new("e2fsck").args(["-f", "-y"]).arg(fs.image()).output().unwrap();
    println!("  e2fsck exit status {:?}", fsck.status.code());
    fs.mount().unwrap();
    assert_eq!(integrity(&dir), "ok", "the file is intact after the read-only spell");
    let rt = open(&dir).await.unwrap();
    let workers = rt.spawn_workers();
    let after = rt.enqueue(job(5300)).await.unwrap().execution_id;
    all_succeed(&rt, &waiting).await;
    all_succeed(&rt, &[after]).await;
    workers.stop().await;
    let runs = runs();
    let wrong: Vec<_> = (5000..5010).chain(5100..5110).chain([5300]).filter(|n| runs.get(n) != Some(&1)).collect();
    assert!(wrong.is_empty(), "every accepted job ran exactly once: {wrong:?} in {runs:?}");
    assert_eq!(runs.get(&5200), None, "the refused enqueue never ran");
    let records = rt.store().list(&ExecutionFilter::default()).await.unwrap();
    let unfinished: Vec<_> = records.iter().filter(|r| r.status != ExecutionStatus::Succeeded).collect();
    assert!(unfinished.is_empty(), "refused enqueues leave no records behind: {unfinished:?}");
    assert_eq!(records.len(), 21, "one record per accepted enqueue");
    drop(rt);
}

/// The fallback child: enqueues under `RLIMIT_FSIZE` until refused, names the error, and
/// checks the file.
async fn rlimit_child_case(dir: PathBuf) {
    let rt = open(&dir).await.unwrap();
    let (accepted, error) = enqueue_until_refused(&rt, 0, 100_000).await;
    println!("  refused after {} enqueues: {error}", accepted.len());
    drop(rt);
    assert_eq!(integrity(&dir), "ok");
    // A write cut short by the limit reads as a full disk to SQLite; one refused outright
    // (`EFBIG`) as an I/O error, which the store names by the limit.
    assert!(error.contains("is full") || error.contains("file size limit"), "the error names the condition: {error}");
}

/// Case 1 without mounting: a child under a 1 MiB file size limit (with `SIGXFSZ` ignored,
/// so an oversized write fails instead of killing it).
fn disk_full_by_rlimit() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .args(["-c", "trap '' XFSZ; exec prlimit --fsize=1048576 \"$0\" --ignored --exact rlimit_child --nocapture"])
        .arg(&exe)
        .env(CHILD_DIR, dir.path().join("data"))
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out.status.success()
}

/// The three cases, one after another in one test (they count the process's log events and
/// job runs in statics); with no permission to mount, the `RLIMIT_FSIZE` fallback instead.
#[test]
fn embedded_store_survives_a_full_disk_and_a_read_only_directory() {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let subscriber = tracing_subscriber::registry().with(CountWarnings).with(
        tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into())),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let mountable = std::env::var_os(FORCE_RLIMIT).is_none() && Tmpfs::mount("1m").map(drop).is_ok();
    let mut failed = Vec::new();
    if mountable {
        type Case = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;
        let cases: [(&str, Case); 4] = [
            ("disk_full", || Box::pin(disk_full())),
            ("read_only_at_startup", || Box::pin(read_only_at_startup())),
            ("read_only_while_running", || Box::pin(read_only_while_running())),
            ("read_only_while_running_ext4", || Box::pin(read_only_while_running_ext4())),
        ];
        for (name, case) in cases {
            let started = Instant::now();
            println!("case {name}:");
            // Each case counts its own panics.
            PANICS.store(0, Ordering::SeqCst);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tokio.block_on(case()))).is_ok();
            println!("case {name} ... {} ({:.1?})", if ok { "ok" } else { "FAILED" }, started.elapsed());
            if !ok {
                failed.push(name);
            }
        }
    } else {
        println!("mounting a tmpfs is not permitted here (or {FORCE_RLIMIT} is set):");
        println!("  disk full is simulated with RLIMIT_FSIZE in a child process;");
        println!("  the read-only cases are NOT run (they need a read-only mount).");
        if !disk_full_by_rlimit() {
            failed.push("disk_full_by_rlimit");
        }
        println!("case read_only_at_startup ... NOT RUN (needs mount)");
        println!("case read_only_while_running ... NOT RUN (needs mount)");
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

/// The fallback's child process (see [`disk_full_by_rlimit`]); ignored, so it runs only when
/// started by name with `--ignored`.
#[test]
#[ignore = "the child process of the RLIMIT_FSIZE fallback, started by the main test"]
fn rlimit_child() {
    let dir = std::env::var_os(CHILD_DIR).expect("started by disk_full_by_rlimit with the data directory set");
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(rlimit_child_case(dir.into()));
}
