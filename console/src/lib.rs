//! The operator console `topiq run` serves at `/console` on the API's listener: every topic and
//! trigger with its counts and health, a trigger's charts and settings, runs, schedules and
//! dead letters, and the actions an operator takes on them (pause, redrive, purge, cancel,
//! replay, fire, enqueue).
//!
//! Server-rendered HTML (askama templates compiled into the binary), one stylesheet and one
//! small script of its own, charts drawn as SVG on the server: no asset from a network and no
//! Node.js to build. The console is a client of the module's call surface, the same calls as
//! the HTTP API, so what it shows and does holds on every adapter and every instance.
//!
//! ```no_run
//! # async fn serve(module: topiq::QueueModule) {
//! let console = topiq_console::Console::new(module.clone()).expect("a session key");
//! let router: axum::Router = console.router();
//! # }
//! ```

mod assets;
mod auth;
mod chart;
mod history;
mod jobs;
pub mod origin;
mod pages;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};
use topiq::QueueModule;

use auth::Auth;
pub use auth::ConsoleError;
use history::History;
use jobs::Jobs;

/// Where the console is served.
pub const CONSOLE_PATH: &str = "/console";

/// The console of one module: its router, and the sampler that keeps a trigger's last hour of
/// throughput and handler times (stopped when the last router clone is dropped).
#[derive(Clone)]
pub struct Console {
    state: ConsoleState,
}

/// What every console handler reads.
#[derive(Clone)]
pub(crate) struct ConsoleState {
    inner: Arc<Inner>,
}

struct Inner {
    module: QueueModule,
    read_only: bool,
    auth: Auth,
    history: Arc<History>,
    jobs: Jobs,
    /// The overview's last broker counts, shared by every open tab for a second.
    stats: pages::overview::StatsCache,
    _sampler: history::Sampler,
}

impl ConsoleState {
    pub(crate) fn module(&self) -> &QueueModule {
        &self.inner.module
    }

    pub(crate) fn read_only(&self) -> bool {
        self.inner.read_only
    }

    pub(crate) fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub(crate) fn history(&self) -> &History {
        &self.inner.history
    }

    pub(crate) fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    pub(crate) fn stats_cache(&self) -> &pages::overview::StatsCache {
        &self.inner.stats
    }
}

impl Console {
    /// The console of `module`, with its config's `console:` settings and the API's token
    /// (`api.token`: the console's login asks for it). Starts the history sampler, so it must
    /// be called inside a Tokio runtime.
    pub fn new(module: QueueModule) -> Result<Self, ConsoleError> {
        let settings = module.config().console;
        let auth = Auth::new(module.config().api.token.clone())?;
        let history = Arc::new(History::new());
        let sampler = history::Sampler::start(module.clone(), history.clone());
        Ok(Self {
            state: ConsoleState {
                inner: Arc::new(Inner {
                    module,
                    read_only: settings.read_only,
                    auth,
                    history,
                    jobs: Jobs::default(),
                    stats: pages::overview::StatsCache::default(),
                    _sampler: sampler,
                }),
            },
        })
    }

    /// The console's routes, all under [`CONSOLE_PATH`]: merge them into the API's router.
    pub fn router(&self) -> Router {
        let guarded = Router::new()
            .route("/console", get(pages::overview::page))
            .route("/console/", get(pages::overview::page))
            .route(
                "/console/fragments/overview",
                get(pages::overview::fragment),
            )
            .route("/console/triggers/{name}", get(pages::trigger::page))
            .route(
                "/console/triggers/{name}/charts",
                get(pages::trigger::charts_fragment),
            )
            .route(
                "/console/triggers/{name}/pause",
                post(pages::trigger::pause),
            )
            .route(
                "/console/triggers/{name}/resume",
                post(pages::trigger::resume),
            )
            .route("/console/dlq", get(pages::dlq::page))
            .route("/console/dlq/confirm", post(pages::dlq::confirm))
            .route("/console/dlq/apply", post(pages::dlq::apply))
            .route("/console/jobs/{id}", get(pages::dlq::job))
            .route(
                "/console/fragments/jobs/{id}",
                get(pages::dlq::job_fragment),
            )
            .route("/console/runs", get(pages::runs::list))
            .route("/console/runs/{id}", get(pages::runs::page))
            .route("/console/runs/{id}/cancel", post(pages::runs::cancel))
            .route("/console/runs/{id}/replay", post(pages::runs::replay))
            .route("/console/schedules", get(pages::schedules::page))
            .route(
                "/console/schedules/{name}/{action}",
                post(pages::schedules::act),
            )
            .route(
                "/console/enqueue",
                get(pages::enqueue::page).post(pages::enqueue::submit),
            )
            .route("/console/search", get(pages::search::page))
            .route("/console/logout", post(auth::logout))
            .route("/console/{*rest}", get(pages::not_found))
            .route_layer(middleware::from_fn_with_state(
                self.state.clone(),
                auth::guard,
            ));
        Router::new()
            .merge(guarded)
            .route("/console/login", get(auth::login_page).post(auth::login))
            .route("/console/assets/{file}", get(assets::serve))
            .layer(middleware::map_response(pages::security_headers))
            .with_state(self.state.clone())
    }
}
