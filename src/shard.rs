//! `prefflow run --shard i/N` (or `SET prefflow.shard = 'i/N'`): each run keeps a
//! deterministic 1/N of the input rows, so a SLURM array splits one job and the union of the
//! shards' outputs is the unsharded output.
//!
//! A row's shard is a hash of its key column (`--shard-key`, `SET prefflow.shard_key`) or, with
//! no key, of the whole row as read from its source: the same row lands in the same shard on
//! any machine and in any order, and no shard needs to know the row count. Row sources are
//! files, tables registered from outside (the Python package's `register`), `VALUES` lists and
//! `generate_series` / `range`; tables built by earlier statements hold sharded rows already.
//! With a key, every table the statement reads that has the key column is filtered (rows of one
//! prompt stay together across joined tables, and tables built from earlier statements filter
//! to the same rows); without one, the statement may read only one row source. Shards are
//! numbered from 0.
//! Output files get the shard in their name (see [`shard_path`]).

use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Result, plan_err};
use datafusion::datasource::DefaultTableSource;
use datafusion::datasource::listing::ListingTable;
use datafusion::logical_expr::{
    ColumnarValue, Expr, Filter, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use prefflow_udfs::models::PrefflowOptions;
use prefflow_udfs::models::result_key::KeyPrefix;

/// Shard `index` of `count`, by `key` or by whole rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// From 0.
    pub index: u64,
    /// At least 1.
    pub count: u64,
    /// The column to hash; None hashes whole rows.
    pub key: Option<String>,
}

impl Shard {
    /// Parses `i/N`; an empty string is no sharding.
    pub fn parse(spec: &str, key: &str) -> Result<Option<Self>, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(None);
        }
        let bad =
            || format!("shard must be i/N with 0 <= i < N (shards count from 0), got '{spec}'");
        let (i, n) = spec.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<u64>().map_err(|_| bad())?,
            n.trim().parse::<u64>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        let key = Some(key.trim().to_string()).filter(|k| !k.is_empty());
        Ok(Some(Self { index, count, key }))
    }

    /// The shard the session's settings ask for.
    pub fn from_config(config: &ConfigOptions) -> Result<Option<Self>> {
        let o = PrefflowOptions::from_config(config);
        Self::parse(&o.shard, &o.shard_key).map_err(datafusion::error::DataFusionError::Plan)
    }

    /// `-shard-00001-of-00004`-style tag for file names.
    pub fn tag(&self) -> String {
        format!("shard-{:05}-of-{:05}", self.index, self.count)
    }
}

/// The output path of a shard: a file `out.parquet` becomes `out.shard-00001-of-00004.parquet`,
/// a folder `out/` gets a `shard-00001-of-00004` folder inside it.
pub fn shard_path(url: &str, shard: &Shard) -> String {
    let trailing = url.ends_with('/');
    let trimmed = url.trim_end_matches('/');
    let (dir, name) = match trimmed.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), trimmed),
    };
    match name.split_once('.') {
        Some((stem, ext)) if !trailing && !stem.is_empty() => {
            format!("{dir}{stem}.{}.{ext}", shard.tag())
        }
        _ => format!(
            "{trimmed}/{}{}",
            shard.tag(),
            if trailing { "/" } else { "" }
        ),
    }
}

/// The analyzer rule that filters the statement's input tables to the session's shard.
#[derive(Debug, Default)]
pub struct ShardRule;

impl AnalyzerRule for ShardRule {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let Some(shard) = Shard::from_config(config)? else {
            return Ok(plan);
        };
        if let Some(key) = &shard.key {
            // A key no file the statement reads has would filter nothing: every shard would
            // process every row.
            let (mut files, mut keyed) = (Vec::new(), 0);
            plan.apply_with_subqueries(|node| {
                if let LogicalPlan::TableScan(scan) = node
                    && is_source_table(scan)
                {
                    files.push(scan.table_name.to_string());
                    if scan.source.schema().field_with_name(key).is_ok() {
                        keyed += 1;
                    }
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })?;
            if !files.is_empty() && keyed == 0 {
                return plan_err!(
                    "--shard-key {key}: no table this statement reads has a column '{key}' (it reads {}); every shard would process every row",
                    files.join(", ")
                );
            }
        }
        if shard.key.is_none() {
            let mut sources = Vec::new();
            plan.apply_with_subqueries(|node| {
                match node {
                    LogicalPlan::TableScan(scan) if is_source_table(scan) => {
                        sources.push(scan.table_name.to_string())
                    }
                    LogicalPlan::Values(_) => sources.push("a VALUES list".to_string()),
                    _ => {}
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })?;
            if sources.len() > 1 {
                return plan_err!(
                    "--shard: this statement reads {} row sources ({}); name a key column they share with --shard-key (SET prefflow.shard_key) so their rows shard alike",
                    sources.len(),
                    sources.join(", ")
                );
            }
        }
        plan.transform_up_with_subqueries(|node| {
            let (schema, source) = match &node {
                LogicalPlan::TableScan(scan) => (&scan.projected_schema, is_source_table(scan)),
                LogicalPlan::Values(values) => (&values.schema, true),
                _ => return Ok(Transformed::no(node)),
            };
            let columns: Vec<Expr> = match &shard.key {
                Some(key) => match schema.columns().into_iter().find(|c| c.name == *key) {
                    Some(c) => vec![Expr::Column(c)],
                    None => return Ok(Transformed::no(node)),
                },
                None if source => schema.columns().into_iter().map(Expr::Column).collect(),
                None => return Ok(Transformed::no(node)),
            };
            let keep = ScalarUDF::from(InShard::new(&shard)).call(columns);
            Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
                keep,
                Arc::new(node),
            )?)))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "prefflow_shard"
    }
}

/// A row source: a file, a table registered from outside, or a table function's rows.
fn is_source_table(scan: &datafusion::logical_expr::TableScan) -> bool {
    use datafusion::functions_table::generate_series::GenerateSeriesTable;
    provider(scan).is_some_and(|p| {
        p.downcast_ref::<ListingTable>().is_some()
            || p.downcast_ref::<GenerateSeriesTable>().is_some()
            || p.downcast_ref::<Registered>().is_some()
    })
}

fn provider(
    scan: &datafusion::logical_expr::TableScan,
) -> Option<&dyn datafusion::catalog::TableProvider> {
    scan.source
        .as_ref()
        .downcast_ref::<DefaultTableSource>()
        .map(|s| s.table_provider.as_ref())
}

/// A table registered from outside the session (the Python package's `register`): its rows
/// are a source, sharded like a file's.
#[derive(Debug)]
pub struct Registered(pub Arc<dyn datafusion::catalog::TableProvider>);

#[async_trait::async_trait]
impl datafusion::catalog::TableProvider for Registered {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::logical_expr::TableType {
        self.0.table_type()
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }
}

/// `shard_i_of_n(columns...)`: whether a row belongs to shard i.
#[derive(Debug, PartialEq, Eq, Hash)]
struct InShard {
    name: String,
    index: u64,
    count: u64,
    signature: Signature,
}

impl InShard {
    fn new(shard: &Shard) -> Self {
        Self {
            name: format!("shard_{}_of_{}", shard.index, shard.count),
            index: shard.index,
            count: shard.count,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for InShard {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let columns = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        // The result cache's row hash: stable across machines, orders and Arrow text types.
        let keys =
            KeyPrefix::new("shard", &[0; 32], &DataType::Boolean, &[])?.keys(&columns, rows)?;
        let keep: BooleanArray = keys
            .iter()
            .map(|k| {
                let h = u64::from_le_bytes(k[..8].try_into().expect("32-byte key"));
                Some(h % self.count == self.index)
            })
            .collect();
        debug_assert_eq!(keep.len(), rows);
        Ok(ColumnarValue::Array(Arc::new(keep)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_shards() {
        let s = Shard::parse("1/4", "").unwrap().unwrap();
        assert_eq!((s.index, s.count, s.key.clone()), (1, 4, None));
        assert_eq!(Shard::parse("", "x").unwrap(), None);
        for bad in ["4/4", "1", "a/4", "1/0", "-1/3"] {
            assert!(Shard::parse(bad, "").is_err(), "{bad}");
        }
        assert_eq!(
            shard_path("out/pairs.parquet", &s),
            "out/pairs.shard-00001-of-00004.parquet"
        );
        assert_eq!(shard_path("out/dpo", &s), "out/dpo/shard-00001-of-00004");
        assert_eq!(
            shard_path("out/parts/", &s),
            "out/parts/shard-00001-of-00004/"
        );
        assert_eq!(shard_path("x.jsonl", &s), "x.shard-00001-of-00004.jsonl");
    }
}
