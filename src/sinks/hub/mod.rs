//! The Hugging Face Hub as a sink: `COPY … TO 'hf://datasets/ORG/NAME[@BRANCH][/PATH]'`.
//!
//! Before a row is read (so before any model work), [`Push::open`] checks the token (present,
//! with write access), refuses a public repository when a private one was asked for, and reads
//! what an earlier run of the same statement pushed there. A missing repository (private
//! unless `private false`) or branch is created by the first commit, so a push that fails
//! before one leaves nothing behind.
//!
//! Rows go to part files (`PATH/data/train-00000.parquet`, `…-00001…`) in a staging folder;
//! every `checkpoint_rows` rows the open parts are closed and committed with the dataset card
//! and a manifest (`PATH/.prefflow/push.json`: the job, its parts, whether it finished), one
//! commit per checkpoint. A run of the same statement later (after a kill, or a failed push)
//! reads the manifest, skips the rows its parts already hold (by a hash of each written row,
//! so the order rows arrive in does not matter; model calls come from the result cache), and
//! pushes the rest; a finished job run again commits nothing. A different statement to the same
//! target replaces the files prefflow pushed there; files prefflow did not write are never
//! replaced.
//!
//! Nothing is committed that could mix two results: each run stages in a folder of its own,
//! every commit names the commit the run started from (or its own previous one) as its parent,
//! so a concurrent push to the branch is refused by the Hub instead of overwritten, a staged
//! part is checked to be a whole file before it is uploaded, and a run of the same statement
//! whose result no longer holds every row pushed before (its input changed) commits nothing:
//! its checkpoints wait until every earlier row has come again.
//!
//! The folder: `target` (the address and its options), `client` (the checked connection, the
//! preflight, what a first commit creates), `push` (the staging folder, part files, commits
//! and the manifest) and `resume` (reading back what an earlier run pushed).

mod client;
mod push;
mod resume;
mod target;

pub(crate) use client::preflight;
pub(crate) use push::{PartWriter, Push, StagedPart};
pub(crate) use resume::RowSet;
pub(crate) use target::{HUB_OPTIONS, HubTarget, take_checkpoint_rows};
