//! JSON files that start with a UTF-8 byte-order mark (as Windows tools and some exports write
//! them) read as pandas and `datasets` read them. Arrow's JSON reader stops at the mark, so
//! the local filesystem store hands those three bytes over as spaces, which JSON skips. Sizes
//! and byte ranges stay exactly those of the file.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use futures::StreamExt;
use futures::stream::BoxStream;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// A store that reads a leading byte-order mark of JSON files as three spaces.
#[derive(Debug)]
pub struct BomAsSpaces {
    inner: Arc<dyn ObjectStore>,
}

impl BomAsSpaces {
    /// Wraps `inner` (the local filesystem).
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

impl fmt::Display for BomAsSpaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BomAsSpaces({})", self.inner)
    }
}

fn is_json(location: &Path) -> bool {
    let name = location.as_ref().to_ascii_lowercase();
    [".json", ".jsonl", ".ndjson"]
        .iter()
        .any(|e| name.ends_with(e))
}

#[async_trait]
impl ObjectStore for BomAsSpaces {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let result = self.inner.get_opts(location, options).await?;
        if !is_json(location) || result.range.start != 0 || result.range.is_empty() {
            return Ok(result);
        }
        let meta = result.meta.clone();
        let range: Range<u64> = result.range.clone();
        let attributes = result.attributes.clone();
        let mut first = true;
        let stream = result.into_stream().map(move |chunk| {
            let chunk = chunk?;
            if std::mem::take(&mut first) && chunk.starts_with(&BOM) {
                let mut patched = chunk.to_vec();
                patched[..3].copy_from_slice(b"   ");
                return Ok(patched.into());
            }
            Ok(chunk)
        });
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream.boxed()),
            meta,
            range,
            attributes,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
