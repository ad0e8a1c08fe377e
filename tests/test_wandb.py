"""`uld train --wandb` in W&B's offline mode: the offline run files hold the config, the evaluations of
eval.csv and the training metrics; a resumed run continues the same W&B run; without the flag wandb is
never imported, and without the package the flag is one sentence naming the extra."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from uld.agents.uld.config import reduced_config
from uld.cli import main
from uld.train.logger import read_eval_csv
from uld.train.run import TrainConfig, train

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

TINY = reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=100,
                      target_update_period=20, buffer_capacity=5000)
BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of checksummed records


def wandb_records(path: Path):
    """The protobuf Records of an offline run's .wandb file (header ':W&B', magic, version: 7 bytes;
    then records of crc32 (4 bytes), length (2), type (1: full, 2: first, 3: middle, 4: last))."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    i, pending = 7, b""
    while i + 7 <= len(data):
        if BLOCK - i % BLOCK < 7:  # too little room left in the block for a header: zero padding
            i += BLOCK - i % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[i:i + 7])
        if kind == 0 or i + 7 + length > len(data):  # the end, or a record still being written
            break
        pending += data[i + 7:i + 7 + length]
        i += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_run(wandb_dir: Path, index: int, wait_seconds: float = 60.0) -> tuple[dict, list[dict]]:
    """The run record (id, project, config) and the history rows of the index-th offline run.

    W&B's service process writes the file; run.finish() can return before the last of it reaches the
    disk, so this waits for the run's exit record, and fails if it has not come after `wait_seconds`.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        [path] = (sorted((wandb_dir / "wandb").glob("offline-run-*"))[index]).glob("run-*.wandb")
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"{path} has no exit record {wait_seconds:.0f} s after run.finish() returned: W&B's service "
                        f"did not finish writing the run ({len(records)} records so far)")
        time.sleep(0.2)  # a poll of the file, not a wait for time to pass
    run, history = {}, []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = {"id": record.run.run_id, "project": record.run.project,
                   "config": {u.key: json.loads(u.value_json) for u in record.run.config.update}}
        elif kind == "history":
            # A key with a slash may be stored as its parts (nested_key).
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return run, history


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-files"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-files").mkdir()
    return tmp_path / "wandb-files"


def test_offline_run_holds_config_evaluations_and_metrics_and_resumes(tmp_path, offline):
    out = tmp_path / "run"
    train(TrainConfig(env="gym:Pendulum-v1", seed=5, steps=200, eval_every=100, eval_episodes=1, log_every=50,
                      progress=False, out=str(out), uld=TINY, wandb=True, wandb_project="uld-test"))
    run_id = (out / "wandb_id").read_text().strip()
    run, history = offline_run(offline, 0)
    assert run["id"] == run_id and run["project"] == "uld-test"
    assert run["config"]["env"] == "gym:Pendulum-v1" and run["config"]["seed"] == 5
    assert run["config"]["uld"]["hidden_dim"] == 32
    evaluations = [(row["agent_step"], row["eval/mean_return"]) for row in history if "eval/mean_return" in row]
    assert evaluations == [(row["step"], row["mean_return"]) for row in read_eval_csv(out / "eval.csv")]
    assert [step for step, _ in evaluations] == [0, 100, 200]
    episodes = [row["agent_step"] for row in history if "train/episode_return" in row]
    assert episodes == [200]  # Pendulum's episodes are 200 steps
    assert [row["agent_step"] for row in history if "train/reward_scale" in row] == [150, 200]  # updates from 101
    # Everything TensorBoard got, W&B got: the same tags, steps and values (TensorBoard stores float32).
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"eval/mean_return", "train/episode_return", "critic/loss", "train/buffer_transitions"} <= set(tags)
    for tag in tags:
        logged = [(row["agent_step"], row[tag]) for row in history if tag in row]
        expected = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in logged] == [step for step, _ in expected], tag
        assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6), tag

    # Resumed with --resume (no --wandb): the same W&B run goes on.
    train(TrainConfig(resume=str(out), steps=300, progress=False))
    resumed, history = offline_run(offline, 1)
    assert resumed["id"] == run_id and resumed["project"] == "uld-test"
    assert [row["agent_step"] for row in history if "eval/mean_return" in row] == [300]
    assert (out / "wandb_id").read_text().strip() == run_id


def test_several_seeds_in_one_process_log_one_wandb_run_each(tmp_path, offline):
    """uld train --seeds 1,4 --wandb: two W&B runs, each with its seed's config, its id kept in its seed's
    directory and the evaluations of that seed's eval.csv."""
    out = tmp_path / "runs"
    run_dirs = train(TrainConfig(env="gym:Pendulum-v1", seeds="1,4", steps=200, eval_every=100, eval_episodes=1,
                                 log_every=50, progress=False, out=str(out), uld=TINY, wandb=True,
                                 wandb_project="uld-test"))
    runs = [offline_run(offline, index) for index in range(2)]
    by_id = {run["id"]: (run, history) for run, history in runs}
    assert len(by_id) == 2
    for seed, run_dir in zip((1, 4), run_dirs):
        run, history = by_id[(run_dir / "wandb_id").read_text().strip()]
        assert run["project"] == "uld-test" and run["config"]["seed"] == seed
        assert run["config"]["out"] == str(run_dir) and run["config"]["seeds"] is None
        evaluations = [(row["agent_step"], row["eval/mean_return"]) for row in history if "eval/mean_return" in row]
        assert evaluations == [(row["step"], row["mean_return"]) for row in read_eval_csv(run_dir / "eval.csv")]
        assert [row["agent_step"] for row in history if "critic/loss" in row] == [150, 200]


def test_without_the_flag_wandb_is_not_imported(tmp_path):
    code = ("import sys; from uld.agents.uld.config import reduced_config; from uld.train.run import TrainConfig, train\n"
            f"train(TrainConfig(env='gym:Pendulum-v1', steps=120, eval_every=120, eval_episodes=1, progress=False, "
            f"out={str(tmp_path / 'run')!r}, uld=reduced_config(batch_size=8, hidden_dim=32, zs_dim=32, zsa_dim=32, "
            "random_steps=100, buffer_capacity=500)))\n"
            "print('wandb imported:', 'wandb' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("wandb imported: False")
    assert not (tmp_path / "run" / "wandb_id").exists()


def test_without_the_package_the_flag_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` does when it is not installed
    assert main(["train", "--env", "gym:Pendulum-v1", "--small", "--steps", "100", "--wandb", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == "uld: --wandb needs the wandb package: pip install 'uld[wandb]'"
