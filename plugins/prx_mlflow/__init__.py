"""MLflow tracking: plain functions that turn a run's records into MLflow params, tags and metrics
and read the steps an MLflow run holds, and the "mlflow" tracker (``prx_mlflow.plugin``)."""
from prx_mlflow.records import fact_tags, held_steps, new_metrics, recipe_params, row_metrics

__all__ = ["fact_tags", "held_steps", "new_metrics", "recipe_params", "row_metrics"]
