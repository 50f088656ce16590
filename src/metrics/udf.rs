//! Functions the metric SQL relies on beyond DataFusion's built-ins.
//!
//! `percentile_cont`: DataFusion 55's own truncates the interpolation weight
//! to six decimals (p95 of 1000, 3000, 10000 gives 9299.993 instead of 9300),
//! and the metric contract promises exact percentiles. This one interpolates
//! in full f64 precision and replaces the built-in in our sessions, keeping
//! its SQL form: `percentile_cont(0.95) WITHIN GROUP (ORDER BY x)`.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, ListArray};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::prelude::SessionContext;

/// Registers the functions of this module in `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(AggregateUDF::from(ExactPercentileCont::new()));
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ExactPercentileCont {
    signature: Signature,
}

impl ExactPercentileCont {
    fn new() -> Self {
        Self {
            signature: Signature::uniform(2, vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for ExactPercentileCont {
    fn name(&self) -> &str {
        "percentile_cont"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let item = Field::new_list_field(DataType::Float64, true);
        Ok(vec![Arc::new(Field::new(
            format!("{}[values]", args.name),
            DataType::List(Arc::new(item)),
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let Some(lit) = args.exprs.get(1).and_then(|e| e.downcast_ref::<Literal>()) else {
            return plan_err!("percentile_cont: the percentile must be a literal");
        };
        let p = match lit.value() {
            &ScalarValue::Float64(Some(p)) => p,
            v => return plan_err!("percentile_cont: the percentile must be a number, got {v}"),
        };
        if !(0.0..=1.0).contains(&p) {
            return plan_err!("percentile_cont: the percentile must be in [0, 1], got {p}");
        }
        let descending = args.order_bys.first().is_some_and(|s| s.options.descending);
        Ok(Box::new(PercentileAccumulator {
            percentile: if descending { 1.0 - p } else { p },
            values: vec![],
        }))
    }

    fn supports_within_group_clause(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct PercentileAccumulator {
    percentile: f64,
    values: Vec<f64>,
}

impl PercentileAccumulator {
    fn extend(&mut self, a: &Float64Array) {
        self.values.extend(a.iter().flatten());
    }
}

/// Continuous percentile of `values` (linear interpolation between ranks).
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let rank = p * (values.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(values[lo] + (values[hi] - values[lo]) * (rank - lo as f64))
}

impl Accumulator for PercentileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.extend(values[0].as_primitive::<Float64Type>());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists: &ListArray = states[0].as_list();
        for list in lists.iter().flatten() {
            self.extend(list.as_primitive::<Float64Type>());
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values = Float64Array::from(self.values.clone());
        Ok(vec![ScalarValue::List(Arc::new(ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            arrow::buffer::OffsetBuffer::from_lengths([values.len()]),
            Arc::new(values),
            None,
        )))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(percentile(
            &mut self.values,
            self.percentile,
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    #[test]
    fn interpolates_between_ranks_exactly() {
        assert_eq!(percentile(&mut [], 0.5), None);
        assert_eq!(percentile(&mut [7.0], 0.95), Some(7.0));
        let p95 = percentile(&mut [10_000.0, 1_000.0, 3_000.0], 0.95).unwrap();
        assert!((p95 - 9_300.0).abs() < 1e-9, "{p95}");
        assert_eq!(percentile(&mut [1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
        assert_eq!(percentile(&mut [1.0, 2.0, 3.0, 4.0], 1.0), Some(4.0));
    }

    #[tokio::test]
    async fn replaces_the_builtin_in_sql_with_groups_nulls_and_order() {
        let ctx = SessionContext::new();
        register(&ctx);
        let sql = "SELECT g, percentile_cont(0.95) WITHIN GROUP (ORDER BY x) AS p,
                          percentile_cont(0.05) WITHIN GROUP (ORDER BY x DESC) AS q
                   FROM (VALUES (1, 1000), (1, 3000), (1, 10000), (1, NULL), (2, NULL)) t(g, x)
                   GROUP BY g ORDER BY g";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let p = batches[0].column(1).as_primitive::<Float64Type>();
        let q = batches[0].column(2).as_primitive::<Float64Type>();
        assert!((p.value(0) - 9_300.0).abs() < 1e-9, "{}", p.value(0));
        assert!((q.value(0) - 9_300.0).abs() < 1e-9, "{}", q.value(0));
        assert!(p.is_null(1));
    }
}
