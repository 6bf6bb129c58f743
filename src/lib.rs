//! prefflow: build LLM training data (preference pairs, SFT sets, selected subsets) with SQL
//! on Apache DataFusion.
//!
//! Embed the engine in a Rust program:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> prefflow::Result<()> {
//! use prefflow::Engine;
//!
//! let engine = Engine::new()?;
//! engine
//!     .sql("CREATE TABLE answers AS VALUES ('p1', '<think>hm</think> 4', 0.9), ('p1', '5', 0.2)")
//!     .await?;
//! let batches = engine
//!     .query(
//!         "SELECT column1 AS prompt,
//!                 strip_think(arg_max(column2, column3)) AS chosen,
//!                 arg_min(column2, column3) AS rejected
//!          FROM answers GROUP BY column1",
//!     )
//!     .await?;
//! let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
//! assert!(table.contains("| p1     | 4      | 5        |"));
//! # Ok(())
//! # }
//! ```
//!
//! For large results, [`Engine::stream`] yields record batches as they are computed, and
//! [`Engine::run_script`] runs a whole query file.

pub mod async_args;
pub mod bom;
pub mod cache;
pub mod cli;
#[cfg(feature = "cluster")]
pub mod cluster_client;
#[cfg(feature = "cluster")]
pub mod cluster_server;
pub mod datasets;
pub mod engine;
pub mod error;
pub mod hf;
pub mod model_calls;
pub mod model_statements;
pub mod output;
pub mod progress;
pub mod routine_docs;
pub mod script;
pub mod session;
pub mod shard;
pub mod shell;
pub mod sinks;
pub mod target;
pub mod threads;

pub use engine::{Engine, FinalQuery};
pub use error::{PrefflowError, Result};
pub use script::Script;
pub use session::{CacheMode, SessionOptions, build_session};
