//! The `prefflow` command line. `main.rs` only calls [`main`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::engine::Engine;
use crate::error::{PrefflowError, Result, one_line};
use crate::output::{Format, write_result};
use crate::progress::{Progress, ProgressMode};
use crate::script::Script;
use crate::session::{CacheMode, SessionOptions};
use crate::shard::{Shard, shard_path};
use std::sync::Arc;

const EXAMPLES: &str = "\
Examples:
  prefflow run queries/conversation_pairs.sql
  prefflow run queries/conversation_pairs.sql --param out=out/pairs.parquet
  prefflow sql \"SELECT strip_think('<think>hm</think> 42') AS answer\"
  prefflow sql \"SELECT * FROM 'data/oasst_trees.jsonl' LIMIT 5\" --format csv
  prefflow sql \"SELECT count(*) FROM 'hf://datasets/ORG/NAME/train.jsonl'\" --output counts.json

Statements run in order; the last one's rows are written (a table on a terminal, JSON lines
in a pipe). ${name} in a statement takes the value of --param name=VALUE, or
${name:-default} its default.";

#[derive(Debug, Parser)]
#[command(name = "prefflow", version, about = "Build LLM training data with SQL", after_help = EXAMPLES)]
struct Cli {
    /// Without a command: the interactive shell.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run query files, in order, in one session.
    #[command(after_help = EXAMPLES)]
    Run {
        /// Query files (.sql).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Run SQL statements given as a string.
    #[command(after_help = EXAMPLES)]
    Sql {
        /// One or more statements separated by ';'.
        statements: String,
        #[command(flatten)]
        common: Common,
    },
    /// An interactive SQL shell (also what `prefflow` alone opens; reads a pipe too:
    /// `prefflow shell < job.sql`).
    Shell {
        #[command(flatten)]
        common: Common,
    },
    /// Run a Ballista scheduler that plans jobs with prefflow's functions (needs a build
    /// with the `cluster` feature).
    Scheduler {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
    },
    /// Run a Ballista executor with every prefflow function (needs the `cluster` feature).
    Executor(ExecutorArgs),
}

/// `prefflow executor`'s options.
#[derive(Debug, Args)]
struct ExecutorArgs {
    /// The scheduler to join, df://HOST:PORT.
    #[arg(long, value_name = "df://HOST:PORT")]
    scheduler: String,
    /// Host to listen on (and advertise to the scheduler).
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// Port for shuffle data (Arrow Flight).
    #[arg(long, default_value_t = 50051)]
    port: u16,
    /// Port for the scheduler's task calls.
    #[arg(long, default_value_t = 50052)]
    grpc_port: u16,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    concurrent_tasks: usize,
    /// Folder for shuffle files (default: a temporary folder).
    #[arg(long)]
    work_dir: Option<String>,
    /// The result cache folder (default: as for `run`; one folder may serve several
    /// executors).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Default)]
struct Common {
    /// Fill ${NAME} in the statements (repeatable).
    #[arg(short, long = "param", value_name = "NAME=VALUE")]
    param: Vec<String>,
    /// How to write the final query's result [default: table on a terminal, else ndjson;
    /// with --output, from the file name].
    #[arg(short, long, value_enum)]
    format: Option<Format>,
    /// Write the final query's result to this file (atomically) instead of standard output.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Partitions to run queries in [default: CPU cores].
    #[arg(long, value_name = "N")]
    partitions: Option<usize>,
    /// Print nothing but the result and errors (no progress, no summaries).
    #[arg(short, long)]
    quiet: bool,
    /// Folder of the result cache [default: $PREFFLOW_CACHE_DIR, else ~/.cache/prefflow].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Reuse model results from earlier runs and store new ones (readwrite), only reuse
    /// (read), or neither (off); `SET prefflow.cache` changes it inside a query file.
    #[arg(long, value_name = "MODE", default_value = "readwrite")]
    cache: String,
    /// Process only shard I of N (0 <= I < N) of the input rows, e.g. --shard
    /// $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; outputs are named after the shard.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Pick each row's shard by this column (rows with the same key stay together, across
    /// tables) instead of by the whole row.
    #[arg(long, value_name = "COLUMN", requires = "shard")]
    shard_key: Option<String>,
    /// Run on a Ballista cluster: the scheduler's df://HOST:PORT.
    #[arg(long, value_name = "df://HOST:PORT")]
    cluster: Option<String>,
}

/// Parses `NAME=VALUE` parameters.
/// The session options the common flags ask for (the shell's `Common::default()` has no
/// cache mode: readwrite).
fn session_options(common: &Common) -> Result<SessionOptions> {
    let cache = if common.cache.is_empty() {
        CacheMode::ReadWrite
    } else {
        CacheMode::parse(&common.cache).map_err(PrefflowError::Usage)?
    };
    Ok(SessionOptions {
        target_partitions: common.partitions,
        cache_dir: common.cache_dir.clone(),
        cache: Some(cache),
        cluster: common.cluster.clone(),
        ..Default::default()
    })
}

fn parse_params(raw: &[String]) -> Result<HashMap<String, String>> {
    raw.iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(PrefflowError::Usage(format!(
                "--param expects NAME=VALUE, got '{p}'"
            ))),
        })
        .collect()
}

async fn run(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Shell {
        common: Common::default(),
    });
    let (scripts, common) = match command {
        Command::Shell { common } => {
            let engine = Engine::with_options(&session_options(&common)?)?;
            return crate::shell::run(engine).await;
        }
        Command::Run { files, common } => (
            files
                .iter()
                .map(Script::from_file)
                .collect::<Result<Vec<_>>>()?,
            common,
        ),
        Command::Sql { statements, common } => (vec![Script::parse("<sql>", &statements)?], common),
        Command::Scheduler { bind } => return serve_scheduler(bind).await,
        Command::Executor(args) => return serve_executor(args).await,
    };
    let params = parse_params(&common.param)?;
    let format = Format::choose(common.format, common.output.as_deref())?;
    let mut options = session_options(&common)?;
    let mut output = common.output.clone();
    if let Some(spec) = &common.shard {
        let key = common.shard_key.clone().unwrap_or_default();
        let shard = Shard::parse(spec, &key)
            .map_err(|e| PrefflowError::Usage(format!("--{e}")))?
            .expect("--shard has a value");
        options
            .settings
            .push(("prefflow.shard".to_string(), spec.clone()));
        options
            .settings
            .push(("prefflow.shard_key".to_string(), key));
        output = output.map(|o| PathBuf::from(shard_path(&o.display().to_string(), &shard)));
    }
    // Refused before any statement runs, not after a long pipeline.
    if output.is_none() && format == Format::Parquet && std::io::stdout().is_terminal() {
        return Err(PrefflowError::Usage(
            "Parquet is binary: pass --output FILE or pipe standard output".to_string(),
        ));
    }
    if let Some(path) = &output {
        crate::target::check(path, &crate::target::Output::File, &[])?;
    }
    let engine = Engine::with_options(&options)?;
    let progress = Progress::start(
        Arc::clone(engine.models().activity()),
        ProgressMode::for_stderr(common.quiet),
    );
    let result = async {
        let mut last = None;
        for script in &scripts {
            if let Some(q) = engine.run_script(script, &params).await? {
                last = Some(q);
            }
        }
        let Some(query) = last else {
            return Err(PrefflowError::Usage("no statements to run".to_string()));
        };
        write_result(query.dataframe, format, output.as_deref())
            .await
            .map_err(|e| e.at(query.location))
    }
    .await;
    progress.finish();
    let rows = result?;
    if let Some(path) = &output
        && !common.quiet
    {
        eprintln!("prefflow: wrote {rows} rows to {}", path.display());
    }
    Ok(())
}

#[cfg(feature = "cluster")]
async fn serve_scheduler(bind: std::net::SocketAddr) -> Result<()> {
    crate::cluster_server::run_scheduler(bind).await
}

#[cfg(feature = "cluster")]
async fn serve_executor(args: ExecutorArgs) -> Result<()> {
    crate::cluster_server::run_executor(crate::cluster_server::ExecutorOptions {
        scheduler: crate::cluster_client::parse_address(&args.scheduler)?,
        bind_host: args.bind_host,
        port: args.port,
        grpc_port: args.grpc_port,
        concurrent_tasks: args.concurrent_tasks,
        work_dir: args.work_dir,
        cache_dir: args.cache_dir.unwrap_or_else(crate::cache::default_dir),
    })
    .await
}

#[cfg(not(feature = "cluster"))]
async fn serve_scheduler(_bind: std::net::SocketAddr) -> Result<()> {
    Err(crate::session::no_cluster())
}

#[cfg(not(feature = "cluster"))]
async fn serve_executor(_args: ExecutorArgs) -> Result<()> {
    Err(crate::session::no_cluster())
}

/// Runs the CLI with these arguments; returns the process exit code (1 on any error, 2 on a
/// usage error), having printed a one-line error.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prefflow: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prefflow: error: {}", one_line(&e.to_string()));
            ExitCode::from(if matches!(e, PrefflowError::Usage(_)) {
                2
            } else {
                1
            })
        }
    }
}
