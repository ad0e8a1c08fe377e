"""Every refusal a user can reach is triggered here when no other test triggers it (issue 26).

Each case starts uld as users do (`uld.cli.main([...])` in this process, or `uld.train`), and asserts the
refusal's contract: exit status 2 (or a UldError from the Python API), one line of one sentence that names
the problem and the way out, no traceback, and nothing written or changed. Every refusal comes before any
training, so a case costs a parse, an import or one load of the two-step run made once for the module.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

import uld
from uld.cli import main
from uld.train.config import TrainConfig


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (symlinks as their target, folders as empty), by relative path."""
    entries = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = b"-> " + str(path.readlink()).encode()
        elif path.is_file():
            entries[key] = path.read_bytes()
        else:
            entries[key] = b""
    return entries


def _one_sentence(capsys) -> str:
    """The refusal's text: one line after `uld: `, no traceback, no second sentence (". " then a capital)."""
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("uld: ") and err.count("\n") == 1 and "Traceback" not in err + captured.out, err
    assert not re.search(r"[.!?] [A-Z]", err[len("uld: "):]), err
    return err


def _refused(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = _one_sentence(capsys)
    assert all(fragment in err for fragment in fragments), err
    return err


# ---- user env factories, found as python:test_refusals:<name> -----------------------------------

class _SpacesOnly(gymnasium.Env):
    """An env that declares its spaces and is refused for them before it is ever reset."""

    def __init__(self, action_space: gymnasium.Space, observation_space: gymnasium.Space) -> None:
        self.action_space, self.observation_space = action_space, observation_space


def returns_a_dict(seed, evaluation):  # noqa: ARG001
    return {}


def exits(seed, evaluation):  # noqa: ARG001
    sys.exit(3)


def multibinary_actions(seed, evaluation):  # noqa: ARG001
    return _SpacesOnly(gymnasium.spaces.MultiBinary(3), gymnasium.spaces.Box(-1, 1, (3,), np.float32))


def image_observations(seed, evaluation):  # noqa: ARG001
    return _SpacesOnly(gymnasium.spaces.Box(-1, 1, (2,), np.float32),
                       gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8))


class _NoDisplay(gymnasium.Wrapper):
    """Pendulum on a machine where its renderer cannot start (as pygame or OpenGL fail there)."""

    def render(self):
        raise RuntimeError("no display")


def unrenderable(seed, evaluation):  # noqa: ARG001
    return _NoDisplay(gymnasium.make("Pendulum-v1"))


# ---- refusals of the options alone ---------------------------------------------------------------

@pytest.mark.parametrize("argv, fragments", [
    (["sweep", "--design-study", "--agent", "alm", "--envs", "gym:Pendulum-v1"],
     ["the alm agent has no design study; use --agent uld or drq"]),
    (["sweep", "--design-study", "--variants", "nope", "--envs", "gym:Pendulum-v1"],
     ["unknown design-study variant 'nope'; the variants are default, linear-value,"]),
    (["sweep"], ["uld sweep needs --suite (uld suites lists them) or --envs"]),
    (["sweep", "--suite", "gym-v5", "--envs", "gym:Pendulum-v1"],
     ["gym:Pendulum-v1 not in suite gym-v5; uld suites gym-v5 lists its envs"]),
    (["sweep", "--suite", "nosuch"], ["unknown suite 'nosuch'; the suites are gym, gym-v5, dmc, dmc-pixels, atari"]),
    (["suites", "dmcc"], ["unknown suite 'dmcc'; did you mean dmc? the suites are gym"]),
    (["report", "{tmp}/no-sweep"], ["no-sweep is not a directory; pass the sweep directory that uld sweep wrote"]),
    (["eval", "{tmp}/no-run", "--episodes", "0"], ["--episodes must be a positive integer, got 0"]),
    (["train", "--seeds", "0-256"],
     ["--seeds '0-256' names more than 256 seeds; one process trains at most 256 (uld sweep --seeds-per-process"]),
    (["train", "--env", "python:test_refusals:returns_a_dict"],
     ["the env factory python:test_refusals:returns_a_dict returned a dict; it must return a gymnasium.Env"]),
    (["train", "--env", "python:test_refusals:exits"],
     ["the env factory python:test_refusals:exits called sys.exit(3); it must return an env"]),
    (["train", "--env", "python:test_refusals:multibinary_actions"],
     ["has a MultiBinary action space; uld supports flat continuous (Box) and Discrete action spaces"]),
    (["train", "--env", "python:test_refusals:image_observations"],
     ["has image observations of shape (64, 64, 3); uld takes pixels from the atari: and dmc-pixels: envs"]),
    (["bogus"], ["unknown command 'bogus'; the commands are train, eval, theory, suites, sweep, report, export"]),
], ids=["no-design-study", "unknown-variant", "no-suite", "env-not-in-suite", "unknown-suite", "suites-unknown",
        "report-no-dir", "eval-episodes", "too-many-seeds", "factory-returns-dict", "factory-exits",
        "unsupported-actions", "image-observations", "unknown-command"])
def test_a_bad_option_is_refused_in_one_sentence_and_writes_nothing(tmp_path, capsys, argv, fragments):
    out = ["--out", str(tmp_path / "out")] if argv[0] in ("train", "sweep") else []
    _refused(capsys, [arg.format(tmp=tmp_path) for arg in argv] + out, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_link_to_nowhere_is_refused_and_left_as_it_is(tmp_path, capsys):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "unmounted" / "run")
    _refused(capsys, ["train", "--out", str(link)], "is a symlink to nowhere; fix the link or pass another --out")
    assert _snapshot(tmp_path) == {"run": b"-> " + str(tmp_path / "unmounted" / "run").encode()}


@pytest.mark.parametrize("options, message", [
    (dict(precision="fp16"), "--precision must be one of fp32, bf16, got 'fp16'"),
    (dict(progress="yes"), "--progress must be true or false, got 'yes'"),
], ids=["choice", "bool"])
def test_train_from_python_refuses_a_value_the_command_line_could_not_give(tmp_path, options, message):
    """The CLI's parser rejects these before uld sees them; from Python they reach uld's own checks."""
    with pytest.raises(uld.UldError) as error:
        uld.train(TrainConfig(env="gym:Pendulum-v1", steps=2, out=str(tmp_path / "run"), **options))
    assert str(error.value) == message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, module, fragments", [
    (["train", "--env", "atari:Pong"], "ale_py",
     ["Atari envs need ale-py and OpenCV, which are not installed", 'pip install "uld[atari]"']),
    (["sweep", "--envs", "gym:Pendulum-v1", "--ray", "local"], "ray",
     ['--ray needs Ray, which is not installed; pip install "uld[sweep]"']),
], ids=["atari", "ray"])
def test_a_missing_optional_package_is_named_with_its_extra_and_nothing_is_written(tmp_path, capsys, monkeypatch,
                                                                                   argv, module, fragments):
    monkeypatch.setitem(sys.modules, module, None)  # what `import` does when the package is not installed
    _refused(capsys, [*argv, "--out", str(tmp_path / "out")], *fragments)
    assert list(tmp_path.iterdir()) == []


# ---- refusals about a run directory --------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The smallest finished run: two steps of Pendulum, evaluated once, checkpointed at step 2."""
    return uld.train(TrainConfig(env="gym:Pendulum-v1", small=True, steps=2, eval_every=2, eval_episodes=1,
                                 progress=False, out=str(tmp_path_factory.mktemp("finished") / "run")))


def _rewrite_checkpoint(run: Path, edit, name: str = "step-0000000002.pt") -> None:
    """Edit a checkpoint of the run and give it a checksum that verifies, as a crafted file would have."""
    path = run / "checkpoints" / name
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    path.with_suffix(".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def _edit_config(run: Path, **values) -> None:
    """config.json with `values` in place of the run's own (a dict value updates that section)."""
    data = json.loads((run / "config.json").read_text())
    for key, value in values.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    (run / "config.json").write_text(json.dumps(data))


def _replace_checkpoints(run: Path, make) -> None:
    shutil.rmtree(run / "checkpoints")
    make(run / "checkpoints")


def _junk_checkpoint(run: Path) -> None:
    (run / "checkpoints" / "step-0000000009.pt").write_bytes(b"junk")


RESUME = ["train", "--resume", "{run}", "--steps", "4", "--no-progress"]


def _unfit_with_a_later_row(run: Path) -> None:
    """A checkpoint that does not fit the run's config, and eval.csv with a row written after that checkpoint (as
    a run killed between an evaluation and its checkpoint leaves it): the refusal must not drop the row."""
    _edit_config(run, uld={"hidden_dim": 64})
    with open(run / "eval.csv", "ab") as f:
        f.write(b"4,-1.5,-1.5,0.1\r\n")


@pytest.mark.parametrize("damage, argv, fragments", [
    (None, ["eval", "{run}", "--episodes", "1", "--video", "{tmp}"],
     ["is a directory; pass a file name ending in .mp4"]),
    (None, [*RESUME, "--trust-checkpoint", "{run}/checkpoints/step-0000000007.pt"],
     ["step-0000000007.pt is not a file; pass one of the run's checkpoints/step-*.pt"]),
    (_junk_checkpoint, [*RESUME, "--trust-checkpoint", "{run}/checkpoints/step-0000000009.pt"],
     ["step-0000000009.pt cannot be read as a uld checkpoint (", "; pass another checkpoint, or --restart"]),
    (lambda run: _replace_checkpoints(run, lambda path: path.symlink_to(run.parent / "unmounted")), ["eval", "{run}"],
     ["checkpoints is a symlink to ", "unmounted, which does not exist; mount or restore its target, or replace"]),
    (lambda run: _replace_checkpoints(run, lambda path: path.write_text("x")), ["eval", "{run}"],
     ["checkpoints is a file, not a directory of checkpoints; move it away and run again"]),
    (lambda run: (run / "config.json").write_text("[]"), ["eval", "{run}"],
     ["config.json holds a list, not a run's options; restore the file uld train wrote"]),
    (lambda run: _edit_config(run, agent="nosuch"), ["eval", "{run}"],
     ["config.json names the agent 'nosuch', which this uld does not have (its agents: ", "); restore"]),
    (lambda run: _edit_config(run, uld={"hidden_dim": 64}), ["eval", "{run}", "--episodes", "1"],
     ["does not fit the agent its config.json describes (", "the two belong to different runs"]),
    (_unfit_with_a_later_row, RESUME,
     ["does not fit this run (size mismatch for ", "; pass another with --trust-checkpoint, or --restart"]),
    (lambda run: _rewrite_checkpoint(run, lambda state: state["buffer"].pop("generator")), RESUME,
     ["uld: this checkpoint was written by a uld whose replay lived in numpy on the host", "finish it with the uld version that started it, or start a new run"]),
    (lambda run: _rewrite_checkpoint(run, lambda state: state["logger"].update(eval_csv_bytes=3)), RESUME,
     ["the checkpoint's eval.csv offset 3 is not past eval.csv's header; pass another checkpoint with "
      "--trust-checkpoint, or --restart to start the run over"]),
], ids=["video-is-a-folder", "trust-missing", "trust-junk", "checkpoints-dangling", "checkpoints-a-file", "config-a-list", "unknown-agent", "config-not-the-checkpoint", "resume-not-the-checkpoint", "numpy-replay", "offset-in-header"])
def test_a_run_that_cannot_be_used_is_refused_in_one_sentence_and_left_as_it_was(finished, tmp_path, capsys,
                                                                                 damage, argv, fragments):
    """Byte for byte as it was, the resumes refused while their checkpoint is loaded included: those come
    before the resumed run writes config.json (its new --steps), opens a TensorBoard file or cuts eval.csv."""
    run = Path(shutil.copytree(finished, tmp_path / "run", symlinks=True))
    if damage is not None:
        damage(run)
    before = _snapshot(tmp_path)
    err = _refused(capsys, [arg.format(run=run, tmp=tmp_path) for arg in argv], *fragments)
    # A refusal met while loading the checkpoint is the refusal itself: no second way out appended to it.
    assert err.count("--restart") <= 1, err
    assert _snapshot(tmp_path) == before


def test_a_video_without_its_packages_names_the_extra_and_writes_nothing(finished, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)
    _refused(capsys, ["eval", str(finished), "--episodes", "1", "--video", str(tmp_path / "videos" / "episode.mp4")],
             "writing a video needs imageio and imageio-ffmpeg: pip install 'uld[video]'")
    assert list(tmp_path.iterdir()) == []


def test_an_export_refused_after_its_folder_was_made_leaves_no_folder(finished, tmp_path, capsys, monkeypatch):
    """The model is written into folders export makes; a refusal met while exporting (here: no onnx) removes them."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    _refused(capsys, ["export", str(finished), "--out", str(tmp_path / "models" / "new" / "policy.onnx")],
             "exporting to ONNX needs onnx and onnxscript: pip install 'uld[export]'")
    assert list(tmp_path.iterdir()) == []


def test_a_video_of_an_env_that_cannot_render_leaves_no_folder(tmp_path, capsys):
    """The video's folders are made before filming; the env's render refusal, met while filming, removes them."""
    run = uld.train(TrainConfig(env="python:test_refusals:unrenderable", small=True, steps=1, eval_every=1,
                                eval_episodes=1, progress=False, out=str(tmp_path / "run")))
    before = _snapshot(tmp_path)
    _refused(capsys, ["eval", str(run), "--episodes", "1", "--video", str(tmp_path / "videos" / "new" / "ep.mp4")],
             "could not render (no display); ")
    assert _snapshot(tmp_path) == before


def test_report_with_a_reference_folder_of_no_curves_is_refused_before_writing(finished, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    shutil.copytree(finished, sweep / "run", symlinks=True)
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "notes.txt").write_text("not a curve\n")
    before = _snapshot(tmp_path)
    _refused(capsys, ["report", str(sweep), "--reference", str(tmp_path / "reference"), "--reps", "10"],
             "reference holds no curves in the env,step,seed,return format; pass e.g. shared/reference/mrq")
    assert _snapshot(tmp_path) == before


def test_report_of_two_agents_refused_for_the_second_writes_nothing(finished, tmp_path, capsys):
    """The first agent's report is not written when the second agent's runs are refused (a non-finite return)."""
    sweep = tmp_path / "sweep"
    shutil.copytree(finished, sweep / "uld" / "seed0", symlinks=True)
    drq = Path(shutil.copytree(finished, sweep / "drq" / "seed0", symlinks=True))
    _edit_config(drq, agent="drq")
    (drq / "eval.csv").write_bytes(b"step,mean_return,returns,wall_seconds\r\n2,nan,nan,0.1\r\n")
    before = _snapshot(tmp_path)
    _refused(capsys, ["report", str(sweep), "--reps", "10"], "eval.csv holds a non-finite return (nan) at step 2; "
             "rerun that run or move it out of the sweep directory, then report again")
    assert _snapshot(tmp_path) == before


def test_an_env_factory_that_cannot_be_sent_to_a_worker_is_refused_before_writing(tmp_path):
    """A lambda cannot be pickled for an env worker: the sentence says to name the env or train in process."""
    with pytest.raises(uld.UldError) as error:
        uld.train(TrainConfig(env=lambda seed, evaluation: gymnasium.make("Pendulum-v1"), env_workers=1,
                              steps=2, small=True, progress=False, out=str(tmp_path / "run")))
    message = str(error.value)
    assert "(seed 0) cannot be sent to an env worker (" in message, message
    assert message.endswith("; name the env (e.g. python:<module>:<function>), or pass --env-workers 0"), message
    assert "\n" not in message and list(tmp_path.iterdir()) == []


# ---- refusals about the seeds of a many-seed run -------------------------------------------------

@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> Path:
    """The smallest finished run of seeds 0 and 1 in one process, each checkpointed at step 2."""
    out = tmp_path_factory.mktemp("two_seeds") / "run"
    uld.train(TrainConfig(env="gym:Pendulum-v1", seeds="0,1", small=True, steps=2, eval_every=2, eval_episodes=1,
                          progress=False, out=str(out)))
    return out


def _seed1_checksum_lost(run: Path) -> None:
    (run / "seed1" / "checkpoints" / "step-0000000002.sha256").write_text("")


def _seed1_went_on_to_step_4(run: Path) -> None:
    """Seed 1 holds only a checkpoint of step 4 (as after a run of its own): no step common to both seeds."""
    old = run / "seed1" / "checkpoints" / "step-0000000002.pt"
    new = old.with_name("step-0000000004.pt")
    old.rename(new)
    old.with_suffix(".sha256").unlink()
    _rewrite_checkpoint(run / "seed1", lambda state: state["trainer"].update(step=4), new.name)


SEEDS = ["train", "--env", "gym:Pendulum-v1", "--seeds", "0,1", "--small", "--steps", "4", "--eval-every", "2",
         "--eval-episodes", "1", "--no-progress", "--out", "{run}"]
TRUST_SEED0 = ["--trust-checkpoint", "{run}/seed0/checkpoints/step-0000000002.pt"]


@pytest.mark.parametrize("damage, argv, fragments", [
    (_seed1_checksum_lost, [*SEEDS, *TRUST_SEED0],
     ["seed 1's run ", "has no checkpoint of step 2 that verifies, so it cannot continue with seed 0 from step 2; "
      "nothing was changed: pass that seed's own with --trust-checkpoint, or --restart"]),
    (lambda run: _rewrite_checkpoint(run / "seed1", lambda state: state["logger"].update(eval_csv_bytes=-5)),
     [*SEEDS, *TRUST_SEED0],
     ["seed1/checkpoints is not a run's state (its eval.csv offset is -5", "; pass another with --trust-checkpoint"]),
    (_seed1_went_on_to_step_4, SEEDS,
     ["the seeds have no verifying checkpoint at one common step (seed 0: 2, seed 1: 4), so they cannot continue "
      "together; finish each seed on its own with --seed K"]),
], ids=["other-seed-unverified", "other-seed-not-a-state", "no-common-step"])
def test_seeds_that_cannot_continue_together_are_refused_and_left_as_they_were(two_seeds, tmp_path, capsys, damage,
                                                                               argv, fragments):
    run = Path(shutil.copytree(two_seeds, tmp_path / "run", symlinks=True))
    damage(run)
    before = _snapshot(tmp_path)
    _refused(capsys, [arg.format(run=run) for arg in argv], *fragments)
    assert _snapshot(tmp_path) == before


@pytest.fixture
def finished_sweep(finished, tmp_path, capsys) -> list[str]:
    """A sweep of one finished run (seed 0, recorded by running the sweep: nothing trains); its command."""
    sweep = tmp_path / "sweep"
    shutil.copytree(finished, sweep / "gym_Pendulum-v1" / "seed0", symlinks=True)
    argv = ["sweep", "--envs", "gym:Pendulum-v1", "--seeds", "0", "--steps", "2", "--eval-every", "2",
            "--eval-episodes", "1", "--out", str(sweep), "--small"]
    assert main(argv) == 0
    assert "1 runs, 1 finished already" in capsys.readouterr().out
    return argv


def test_a_sweep_continued_with_other_options_is_refused_naming_them(finished_sweep, tmp_path, capsys):
    """The second command, with another hyperparameter for uld train, is refused before anything runs."""
    before = _snapshot(tmp_path)
    _refused(capsys, [*finished_sweep, "--uld.discount", "0.5"],
             "sweep holds a sweep made with other options: train_args (sweep: ['--small'], this command: ['--small', "
             "'--uld.discount', '0.5']); use another --out, or the sweep's own options to continue it")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("manifest", [b"{\"runs\": [", b"[]", b"\xff"], ids=["torn", "a-list", "not-utf8"])
def test_a_sweep_whose_manifest_is_damaged_is_refused_and_left_as_it_was(finished_sweep, tmp_path, capsys, manifest):
    (tmp_path / "sweep" / "sweep.json").write_bytes(manifest)
    before = _snapshot(tmp_path)
    _refused(capsys, finished_sweep, "sweep.json is not the manifest uld sweep writes (",
             "); restore it, or use another --out")
    assert _snapshot(tmp_path) == before


@pytest.fixture
def no_ray_cluster(monkeypatch):
    """This machine as Ray sees it when no cluster runs on it: no GCS process and no address of a last cluster
    (other tests and users may run one here, which --ray auto would join)."""
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    services = ray._private.services
    monkeypatch.setattr(services, "_find_address_from_flag", lambda flag: set())  # noqa: ARG005 - the processes' flags
    services.find_gcs_addresses.cache_clear()  # a cluster found earlier in this process is cached
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)  # noqa: ARG005


def test_a_sweep_that_finds_no_ray_cluster_writes_nothing(no_ray_cluster, tmp_path, capsys):
    _refused(capsys, ["sweep", "--envs", "gym:Pendulum-v1", "--seeds", "0", "--ray", "auto", "--out",
                      str(tmp_path / "sweep")],
             "cannot reach the Ray cluster at 'auto' (Could not find any running Ray instance); start one with ray "
             "start --head, or pass --ray local to start one here")
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_extended_where_no_ray_cluster_answers_changes_nothing(no_ray_cluster, finished_sweep, tmp_path,
                                                                       capsys):
    """A second seed added to the sweep on a cluster that is not there: sweep.json does not gain it."""
    before = _snapshot(tmp_path)
    argv = [*finished_sweep, "--ray", "auto"]
    argv[argv.index("--seeds") + 1] = "0,1"
    _refused(capsys, argv, "cannot reach the Ray cluster at 'auto' (")
    assert _snapshot(tmp_path) == before


def test_help_passed_on_by_a_sweep_is_uld_train_s_and_writes_nothing(tmp_path, capsys):
    """`uld sweep ... -- --help` asks for the options it passes on: uld train's help, exit status 0."""
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--envs", "gym:Pendulum-v1", "--out", str(tmp_path / "sweep"), "--", "--help"])
    captured = capsys.readouterr()
    assert exit_.value.code == 0 and captured.out.startswith("usage: uld train ") and captured.err == "", captured
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("resumed", [False, True], ids=["new-run", "resumed-run"])
def test_wandb_online_without_a_login_is_one_sentence_and_writes_nothing(finished, tmp_path, resumed):
    """W&B's own error goes on with a second sentence; the refusal keeps its first. W&B starts before the run
    writes anything: a new run leaves no run directory (the lock's folder, made by this command, goes with
    its lock), a resumed one is left byte for byte as it was. In a fresh interpreter with its own HOME, so that no
    login of this machine's user is found and W&B's state stays out of the tests' process."""
    import os
    import subprocess

    environ = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    environ.update(HOME=str(tmp_path / "home"), WANDB_MODE="online", OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(Path(uld.__file__).parents[1]), environ.get("PYTHONPATH", "")]))
    run = tmp_path / "run"
    if resumed:
        shutil.copytree(finished, run, symlinks=True)
        argv = ["--resume", str(run), "--steps", "4"]
    else:
        argv = ["--env", "gym:Pendulum-v1", "--small", "--steps", "2", "--out", str(run)]
    before = _snapshot(run) if resumed else None
    result = subprocess.run([sys.executable, "-m", "uld.cli", "train", *argv, "--wandb", "--no-progress"],
                            capture_output=True, text=True, env=environ, timeout=120)
    err = result.stderr
    assert result.returncode == 2 and err.startswith("uld: W&B could not start (") and err.count("\n") == 1, err
    assert "Traceback" not in err and not re.search(r"[.!?] [A-Z]", err), err
    assert err.endswith("; run `wandb login`, or set WANDB_MODE=offline to keep the W&B run on this machine\n"), err
    if resumed:
        assert _snapshot(run) == before
    else:
        assert not os.path.lexists(run)
