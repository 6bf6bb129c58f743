//! Wrappers of DataFusion's own aggregates (`first_value`, `max`, `min`) change only their
//! accumulators; every other method of `AggregateUDFImpl` goes to the built-in, written once
//! here.

/// The `AggregateUDFImpl` methods a wrapper with `fn builtin(&self) -> &dyn AggregateUDFImpl`
/// passes on unchanged (inside its `impl AggregateUDFImpl` block).
macro_rules! builtin_aggregate_methods {
    () => {
        fn name(&self) -> &str {
            self.builtin().name()
        }

        fn aliases(&self) -> &[String] {
            self.builtin().aliases()
        }

        fn schema_name(
            &self,
            params: &datafusion::logical_expr::expr::AggregateFunctionParams,
        ) -> datafusion::error::Result<String> {
            self.builtin().schema_name(params)
        }

        fn human_display(
            &self,
            params: &datafusion::logical_expr::expr::AggregateFunctionParams,
        ) -> datafusion::error::Result<String> {
            self.builtin().human_display(params)
        }

        fn display_name(
            &self,
            params: &datafusion::logical_expr::expr::AggregateFunctionParams,
        ) -> datafusion::error::Result<String> {
            self.builtin().display_name(params)
        }

        fn signature(&self) -> &datafusion::logical_expr::Signature {
            self.builtin().signature()
        }

        fn return_type(
            &self,
            arg_types: &[datafusion::arrow::datatypes::DataType],
        ) -> datafusion::error::Result<datafusion::arrow::datatypes::DataType> {
            self.builtin().return_type(arg_types)
        }

        fn return_field(
            &self,
            arg_fields: &[datafusion::arrow::datatypes::FieldRef],
        ) -> datafusion::error::Result<datafusion::arrow::datatypes::FieldRef> {
            self.builtin().return_field(arg_fields)
        }

        fn is_nullable(&self) -> bool {
            self.builtin().is_nullable()
        }

        fn state_fields(
            &self,
            args: datafusion::logical_expr::function::StateFieldsArgs,
        ) -> datafusion::error::Result<Vec<datafusion::arrow::datatypes::FieldRef>> {
            self.builtin().state_fields(args)
        }

        fn order_sensitivity(&self) -> datafusion::logical_expr::utils::AggregateOrderSensitivity {
            self.builtin().order_sensitivity()
        }

        fn reverse_expr(&self) -> datafusion::logical_expr::ReversedUDAF {
            self.builtin().reverse_expr()
        }

        fn coerce_types(
            &self,
            arg_types: &[datafusion::arrow::datatypes::DataType],
        ) -> datafusion::error::Result<Vec<datafusion::arrow::datatypes::DataType>> {
            self.builtin().coerce_types(arg_types)
        }

        fn is_descending(&self) -> Option<bool> {
            self.builtin().is_descending()
        }

        fn default_value(
            &self,
            data_type: &datafusion::arrow::datatypes::DataType,
        ) -> datafusion::error::Result<datafusion::scalar::ScalarValue> {
            self.builtin().default_value(data_type)
        }

        fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
            self.builtin().documentation()
        }

        fn set_monotonicity(
            &self,
            data_type: &datafusion::arrow::datatypes::DataType,
        ) -> datafusion::logical_expr::SetMonotonicity {
            self.builtin().set_monotonicity(data_type)
        }
    };
}

pub(crate) use builtin_aggregate_methods;
