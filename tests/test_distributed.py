"""Data-parallel fine-tuning under torchrun: two CPU processes (gloo) in the suite, GPUs marked.

The launch runs tests/ddp_digits.py once per device; each rank writes what
its fits ended with, and the tests compare the ranks with each other and
with the same fit in one process.
"""

import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import sktransfer
from sktransfer import FineTunedClassifier
from sktransfer._utils.launch import LAUNCHED_PID
from sktransfer.distributed import Launch, launch_environment
from sktransfer.training.distributed import from_sync_batchnorm, to_sync_batchnorm

sys.path.insert(0, os.path.dirname(__file__))
from ddp_digits import PARAMS, digits, small_cnn  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_digits.py")


def launch(out, n_processes, device):
    """Run the script under torchrun with ``n_processes`` ranks; the ranks' reports."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", LAUNCHED_PID):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n_processes}", SCRIPT, str(out), "--device", device]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    reports = []
    for rank in range(n_processes):
        with open(out / f"rank{rank}.json") as f:
            report = json.load(f)
        report["weights"] = dict(np.load(out / f"rank{rank}.npz"))
        report["stdout"] = done.stdout  # every rank's, together
        reports.append(report)
    return reports


@pytest.fixture(scope="module")
def cpu_launch(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_cpu")
    return out, launch(out, 2, "cpu")


@pytest.fixture(scope="module")
def single_process():
    """The main fit of the script, in this process alone."""
    X, y, X_test, y_test = digits()
    clf = FineTunedClassifier(small_cnn(), device="cpu", **PARAMS).fit(X, y)
    return clf, clf.score(X_test, y_test)


def test_each_rank_trains_and_validates_on_its_half_of_every_epoch(cpu_launch, single_process):
    _, (first, second) = cpu_launch
    clf, _ = single_process
    n_train = 400 - 40  # early stopping holds out validation_fraction=0.1
    batch = PARAMS["batch_size"]
    assert [sum("train_loss" in b for b in epoch["batches"]) for epoch in clf.history_][0] \
        == math.ceil(n_train / batch)
    for report in (first, second):
        assert set(report["train_batches_per_epoch"]) == {math.ceil(n_train / 2 / batch)}
        # Validation is sharded too: 20 of the 40 held-out samples each.
        assert set(report["valid_batches_per_epoch"]) == {math.ceil(40 / 2 / batch)}


def test_ranks_end_with_identical_weights_and_predictions(cpu_launch):
    _, (first, second) = cpu_launch
    assert first["weights"].keys() == second["weights"].keys()
    for name, value in first["weights"].items():
        # BatchNorm running statistics included: they are rank 0's on every rank.
        np.testing.assert_array_equal(value, second["weights"][name], err_msg=name)
    assert first["proba"] == second["proba"]
    # partial_fit and the contrastive objective train data-parallel too.
    assert first["partial_fit_head"] == second["partial_fit_head"]
    assert first["contrastive_transform"] == second["contrastive_transform"]
    # ... and domain adaptation (DANN), each rank on its share of the target samples.
    assert first["dann_proba"] == second["dann_proba"]
    assert len(first["dann_adaptation_losses"]) == math.ceil(400 / 2 / 16) * 2
    assert first["dann_adaptation_losses"] != second["dann_adaptation_losses"]


def test_only_rank_zero_prints_the_epoch_table(cpu_launch):
    _, (first, _) = cpu_launch
    # Both ranks fit with verbose=1; the main fit's table has a valid_acc column.
    headers = [line for line in first["stdout"].splitlines() if "valid_acc" in line]
    assert len(headers) == 1, first["stdout"][-2000:]


def test_accuracy_matches_the_single_process_fit(cpu_launch, single_process):
    _, (first, _) = cpu_launch
    _, accuracy = single_process
    # The effective batch is twice as large (16 per process), so the runs
    # differ; the single-process fit reached 0.9425-0.9675 over seeds 0-2
    # and 1 or 2 threads.
    assert abs(first["accuracy"] - accuracy) <= 0.04, (first["accuracy"], accuracy)


def test_early_stopping_stops_on_the_same_epoch_on_every_rank(cpu_launch):
    _, (first, second) = cpu_launch
    assert first["epochs"] == second["epochs"] < PARAMS["max_epochs"]
    # The validation loss is the mean over both ranks' shards, the same everywhere.
    assert first["valid_loss"] == second["valid_loss"]


def test_the_model_saved_or_pickled_on_rank_zero_loads_in_a_plain_process(cpu_launch):
    out, (first, _) = cpu_launch
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    with open(out / "model.pkl", "rb") as f:
        pickled = pickle.load(f)
    for model in (sktransfer.load(out / "model.skt"), pickled):
        np.testing.assert_allclose(model.predict_proba(digits()[2]), first["proba"], atol=1e-6)


def test_a_search_gives_every_rank_the_same_best_parameters(cpu_launch):
    _, (first, second) = cpu_launch
    assert first["best_params"] == second["best_params"]
    assert first["cv_scores"] == second["cv_scores"]


def test_a_weighted_fit_agrees_on_every_rank(cpu_launch):
    _, (first, second) = cpu_launch
    np.testing.assert_allclose(first["weighted_proba"], second["weighted_proba"], atol=1e-6)
    # the weighted validation scores are summed over both ranks' shards
    assert first["weighted_valid_loss"] == second["weighted_valid_loss"]
    assert first["weighted_valid_acc"] == second["weighted_valid_acc"]
    for report in (first, second):
        assert "targets or sample_weight" in report["different_weights_error"]


def test_an_adapter_trains_data_parallel_with_its_base_untouched(cpu_launch):
    _, (first, second) = cpu_launch
    if "lora_proba" not in first:
        pytest.skip("peft is not installed")
    np.testing.assert_allclose(first["lora_proba"], second["lora_proba"], atol=1e-6)
    assert first["lora_base_changed"] is False and second["lora_base_changed"] is False


def test_gradient_accumulation_keeps_the_ranks_identical(cpu_launch):
    _, (first, second) = cpu_launch
    np.testing.assert_allclose(first["accumulated_proba"], second["accumulated_proba"],
                               atol=1e-6)
    assert first["accumulated_loss"] == second["accumulated_loss"]
    assert np.isfinite(first["accumulated_loss"]).all()


def test_bad_setups_get_clear_errors_on_every_rank(cpu_launch):
    _, reports = cpu_launch
    for report in reports:
        assert "different data" in report["different_data_error"]
        assert "rank 1: 399" in report["different_data_error"]
        assert "different parameters: ['lr']" in report["different_params_error"]
        assert "SyncBatchNorm" in report["sync_batchnorm_error"]
        assert "1 training samples cannot be shared among the 2 processes" \
            in report["too_few_samples_error"]
        assert "n_jobs=1" in report["n_jobs_error"]


@pytest.mark.gpu
def test_data_parallel_on_gpus(tmp_path, single_process):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 or more CUDA devices")
    first, second = launch(tmp_path, 2, "cuda")
    for name, value in first["weights"].items():
        np.testing.assert_array_equal(value, second["weights"][name], err_msg=name)
    assert first["epochs"] == second["epochs"]
    assert first["best_params"] == second["best_params"]
    # SyncBatchNorm trains, and the fitted model keeps plain BatchNorm.
    assert first["sync_batchnorm_layers"] == ["BatchNorm2d"]
    assert first["sync_batchnorm_proba"] == second["sync_batchnorm_proba"]
    # bf16 autocast on the GPUs: a wider band than on the CPU.
    assert abs(first["accuracy"] - single_process[1]) <= 0.08


# -- without torchrun -------------------------------------------------------

def test_the_launch_is_read_from_torchrun_and_slurm_variables():
    assert launch_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) \
        == Launch(3, 8, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8",
             "SLURM_LOCALID": "1", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    assert launch_environment(slurm) == Launch(5, 8, 1)
    # A job step without a rendezvous address is not a launch, and neither is
    # the batch script itself (no srun step), even with MASTER_ADDR exported.
    assert launch_environment({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"}) is None
    batch_script = {k: v for k, v in slurm.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert launch_environment({**batch_script, "SLURM_PROCID": "0"}) is None
    with pytest.raises(ValueError, match="malformed"):
        launch_environment({"RANK": "one", "WORLD_SIZE": "2"})


def tiny():
    X = np.random.RandomState(0).rand(40, 6).astype(np.float32)
    return X, (X[:, 0] > 0.5).astype(int)


def make(**params):
    torch.manual_seed(0)
    return FineTunedClassifier(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU()),
                               lr=0.05, max_epochs=2, random_state=0, **params)


def test_outside_a_launch_auto_trains_alone_exactly_as_before():
    X, y = tiny()
    auto, alone = make().fit(X, y), make(distributed=False).fit(X, y)
    np.testing.assert_array_equal(auto.predict_proba(X), alone.predict_proba(X))
    with pytest.raises(ValueError, match="distributed=True trains across the processes"):
        make(distributed=True).fit(X, y)
    with pytest.raises(ValueError, match="distributed must be 'auto', True or False"):
        make(distributed="yes").fit(X, y)
    with pytest.raises(ValueError, match="sync_batchnorm must be True or False"):
        make(sync_batchnorm="no").fit(X, y)


WORKER_BEFORE_ANY_FIT = """
import json, multiprocessing, os
import sktransfer
from sktransfer._utils.launch import LAUNCHED_PID, is_worker_of_launch

def child(queue):
    queue.put(is_worker_of_launch())

if __name__ == "__main__":
    marked_at_import = LAUNCHED_PID in os.environ
    results = {}
    for method in ("spawn", "fork"):
        context = multiprocessing.get_context(method)
        queue = context.Queue()
        process = context.Process(target=child, args=(queue,))
        process.start()
        results[method] = queue.get(timeout=120)
        process.join()
    print(json.dumps({"rank_is_worker": is_worker_of_launch(), "children": results,
                      "marked_at_import": marked_at_import}))
"""


def test_a_worker_started_by_a_rank_before_any_fit_knows_it_is_not_a_rank(tmp_path):
    # A rank that starts a search's workers before its first fit has not
    # marked itself yet (importing sktransfer writes no environment): the
    # workers tell from their parent's environment that they inherited the
    # launch, while the rank itself, started by torchrun, is a rank.
    script = tmp_path / "rank.py"
    script.write_text(WORKER_BEFORE_ANY_FIT)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    env.pop(LAUNCHED_PID, None)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rank_is_worker": False, "children": {"spawn": True, "fork": True},
                      "marked_at_import": False}


def test_a_worker_process_of_a_launch_refuses_to_join_it(monkeypatch):
    # What a GridSearchCV(n_jobs=2) worker of a torchrun rank sees: the
    # launch's variables, and the rank's own pid as the launched process.
    X, y = tiny()
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999",
                        LAUNCHED_PID: str(os.getpid() + 1)}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="worker process .* n_jobs > 1"):
        make().fit(X, y)
    # distributed=False trains each fit alone in its worker.
    assert make(distributed=False).fit(X, y).score(X, y) > 0.5


def test_sync_batchnorm_layers_share_the_weights_and_are_put_back():
    model = small_cnn()
    norm = model[2]
    weight, mean = norm.weight, norm.running_mean
    replaced = to_sync_batchnorm(model)
    assert isinstance(model[2], torch.nn.SyncBatchNorm) and len(replaced) == 2
    assert model[2].weight is weight and model[2].running_mean is mean
    model[2].running_mean = mean + 1  # as moving the module to a device would
    from_sync_batchnorm(replaced)
    assert model[2] is norm and type(norm) is torch.nn.BatchNorm2d
    torch.testing.assert_close(norm.running_mean, mean + 1)


def test_a_process_forked_from_a_rank_refuses_its_inherited_group(monkeypatch):
    # joblib's multiprocessing backend forks after a first distributed fit:
    # the child inherits an initialized group whose ranks it is not.
    import sktransfer.training.distributed as distributed

    X, y = tiny()
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setenv(LAUNCHED_PID, str(os.getpid() + 1))
    with pytest.raises(ValueError, match="worker process"):
        make().fit(X, y)
