//! Worker processes for the multi-process tests and benchmarks: the binary starts itself again
//! with a [`WorkerSetup`] in its environment (an app binary is its own worker), and the child
//! runs its workers until it is killed or its parent is gone.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use netscript::prelude::*;
use netscript::{CancellationToken, QueueProvider};

/// Set in a worker process: its encoded [`WorkerSetup`].
const CHILD: &str = "NETSCRIPT_TEST_WORKER_SETUP";
/// Set in a worker process: the id of the process that started it.
const PARENT: &str = "NETSCRIPT_TEST_WORKER_PARENT";

/// What a worker process needs: the backend, the namespace, the data directory, the tuning.
#[derive(Clone, Debug)]
pub struct WorkerSetup {
    pub provider: QueueProvider,
    pub namespace: String,
    pub dir: std::path::PathBuf,
    pub concurrency: usize,
    pub lease: Duration,
}

impl WorkerSetup {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.provider.as_str(),
            self.namespace,
            self.concurrency,
            self.lease.as_millis(),
            self.dir.display()
        )
    }

    fn decode(s: &str) -> Self {
        let mut parts = s.splitn(5, '|');
        let mut next = || parts.next().expect("a worker's setup has five parts");
        let provider = next().parse().expect("provider");
        let namespace = next().to_owned();
        let concurrency = next().parse().expect("concurrency");
        let lease = Duration::from_millis(next().parse().expect("lease"));
        let dir = next().into();
        Self { provider, namespace, dir, concurrency, lease }
    }

    /// A runtime of this setup (heartbeats every third of the lease, polls every 20 ms).
    pub async fn runtime(&self) -> Runtime {
        let setup = self.clone();
        Runtime::builder()
            .ignore_env()
            .provider(self.provider)
            .data_dir(&self.dir)
            .configure(move |c| {
                super::configure(c, setup.provider, &setup.namespace);
                c.concurrency = setup.concurrency;
                c.lease = setup.lease;
                c.poll_interval = Duration::from_millis(20);
            })
            .build()
            .await
            .unwrap_or_else(|e| panic!("{} runtime: {e}", self.provider.as_str()))
    }

    /// Starts this binary again as a worker process of this setup, its output discarded.
    pub fn spawn(&self) -> Child {
        Command::new(std::env::current_exe().expect("own path"))
            .env(CHILD, self.encode())
            .env(PARENT, std::process::id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a worker process")
    }
}

/// In a process started by [`WorkerSetup::spawn`]: runs its workers until the process is
/// killed, or exits once its parent is gone, and never returns. Elsewhere: returns at once.
pub fn run_if_worker(tokio: &tokio::runtime::Runtime) {
    let Ok(setup) = std::env::var(CHILD) else { return };
    let setup = WorkerSetup::decode(&setup);
    let parent: u32 = std::env::var(PARENT).ok().and_then(|p| p.parse().ok()).unwrap_or(0);
    tokio.block_on(async move {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if std::os::unix::process::parent_id() != parent {
                    std::process::exit(3);
                }
            }
        });
        setup.runtime().await.run_workers(CancellationToken::new()).await;
    });
    std::process::exit(0);
}
