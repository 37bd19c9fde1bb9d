"""The ``[mlflow]`` recipe table."""
from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class MlflowConfig:
    """``tracking_uri``: an MLflow server (``http://host:5000``) or a local database
    (``sqlite:///runs/mlflow.db``); "" leaves it to MLflow (``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the working directory). ``experiment``: created when missing,
    with its artifacts under ``artifact_location`` when given (else MLflow's default).
    ``run_name``: default "" is the run folder relative to ``[train] runs_dir``. ``tags`` are
    set on the run. ``images``: also upload each sample grid and its prompts as artifacts."""

    tracking_uri: str = ""
    experiment: str = "prx"
    run_name: str = ""
    artifact_location: str = ""
    tags: dict[str, str] = attrs.Factory(dict)
    images: bool = True
